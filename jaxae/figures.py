"""Matplotlib figures of a run. Never trains; reads what train and evaluate wrote."""

from __future__ import annotations

import json
import os
import textwrap

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from jaxae.config import BEFORE, strength_text  # noqa: E402
from jaxae.monitor import metric_records  # noqa: E402


def read_metrics(workdir: str) -> list[dict]:
    return [record for _, record in metric_records(os.path.join(workdir, "metrics.jsonl"))]


def per_epoch(records: list[dict]) -> list[dict]:
    """One row per epoch, in epoch order: the last one written of those with the largest step.

    A run stopped mid-epoch by --max-steps writes a row for that epoch, and the run that resumes it writes the
    finished epoch's row again with a larger step; drawn as they come, the two rows made a vertical spike. The
    finished row is the one that describes the epoch. (Against steps instead, a resumed run would draw the
    partial epoch's loss as a point of its own, which the epoch axis of every other curve does not have.)"""
    last = {}
    for r in records:
        if r["epoch"] not in last or r.get("step", 0) >= last[r["epoch"]].get("step", 0):
            last[r["epoch"]] = r
    return [last[e] for e in sorted(last)]


def epoch_positions(records: list[dict]) -> tuple[list[float], float]:
    """Where per_epoch's rows go on an epoch axis, and the steps per epoch (0 when unknown): a row's epoch, or
    step / steps per epoch for an epoch cut short. Steps per epoch: the rows' own, else the fullest row's (a
    cut epoch e has fewer than e x steps per epoch)."""
    if not records or any(r["epoch"] < 1 or "step" not in r for r in records):
        return [r["epoch"] for r in records], 0.0
    # written in every row since the seventeenth session; a run before it: a lone cut epoch reads as whole
    spe = records[-1].get("steps_per_epoch") or max(r["step"] / r["epoch"] for r in records)
    return [min(r["epoch"], r["step"] / spe) for r in records], spe


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis from lo to hi, written plainly: every 1, 1.5, 2, ... 9.5 x 10^k when that is at most
    7 of them (a run's curves between 0.031 and 0.039 get 0.035, not no label at all), else every 1-9 x 10^k,
    else 1, 2, 5 x 10^k, else the powers of ten. Matplotlib's own labels a narrow range's minor ticks as
    '6x10^-2' and crowds them."""
    ks = range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
    for mantissas in (np.arange(2, 20) / 2, (1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 5), (1,)):
        ticks = [m * 10.0 ** k for k in ks for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(ticks) <= 7:
            return ticks
    return ticks


def loss_curve(workdir: str, out: str | None = None, pca_mse: float | None = None,
               mean_mse: float | None = None, step: int | None = None) -> str | None:
    """Train loss and test MSE per epoch -> WORKDIR/loss_curve.png, with the PCA baseline's and the mean
    training image's test MSE as lines when given, and `step` (an evaluated checkpoint) marked when the run
    went on past it. An epoch cut short by --max-steps is drawn where it stopped (epoch 1.2, not 2)."""
    records = per_epoch(read_metrics(workdir))
    train_label = _train_label(workdir)
    if not records:
        return None
    out = out or os.path.join(workdir, "loss_curve.png")
    epochs, spe = epoch_positions(records)
    ms = 3 if len(records) > 1 else 7  # a lone point has no line to show it
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.plot(epochs, [r["train_loss"] for r in records], "o-", ms=ms, label=train_label)
    ax.plot(epochs, [r["test_mse"] for r in records], "s-", ms=ms, label="test MSE (clean input)")
    if pca_mse is not None:
        ax.axhline(pca_mse, color="gray", ls="--", lw=1, label=f"PCA baseline MSE {pca_mse:.4f}")
    if mean_mse is not None:
        ax.axhline(mean_mse, color="black", ls=":", lw=1,
                   label=f"mean training image MSE {mean_mse:.4f} (no learning)")
    if step is not None and spe and step < max(r.get("step", 0) for r in records):
        ax.axvline(step / spe, color="tab:red", ls="-.", lw=1, label=f"evaluated checkpoint (step {step})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss per pixel")
    ax.set_yscale("log")
    if len(epochs) == 1:  # else matplotlib spans the one epoch +-4%, ticked 0.96 .. 1.04
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ticks = _log_ticks(*ax.get_ylim())
    if ticks:  # a range inside one 1-9 step (0.061 .. 0.064) has none: matplotlib's labels are all there is
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"Training curve: {os.path.basename(os.path.abspath(workdir))}")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def noise_curve(strengths, curves: dict[str, list], trained: float, uniform: bool, kind: str, out: str) -> str:
    """Test MSE against the clean images of reconstructions of inputs corrupted at each strength -> out: one line
    per entry of `curves` (the autoencoder, PCA, the corrupted input itself), with the strengths the model was
    trained at shaded (uniform levels: 0 to `trained`) or marked (fixed: `trained`)."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if uniform:
        ax.axvspan(0, trained, color="tab:green", alpha=0.12, label=f"trained on strengths 0-{trained:g}")
    else:
        ax.axvline(trained, color="tab:green", ls="-.", lw=1, label=f"trained on strength {trained:g}")
    for (name, values), style in zip(curves.items(), ("o-", "s--", "^:")):
        keep = np.asarray(values) > 0  # a log axis has no 0: the clean input's own error
        ax.plot(np.asarray(strengths)[keep], np.asarray(values)[keep], style, ms=5, label=name)
    ax.set_xlabel(f"{kind} corruption strength of the test inputs")
    ax.set_ylabel("test MSE to the clean images")
    ax.set_yscale("log")
    ticks = _log_ticks(*ax.get_ylim())
    if ticks:
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Reconstruction error against input corruption")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _train_label(workdir: str) -> str:
    """What the train curve measured: the loss, and whether the inputs were corrupted (from config.json)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return "train loss"
    with open(path) as fh:
        cfg = json.load(fh)
    loss = cfg.get("loss", "l2").upper()
    if cfg.get("noise", 0) > 0:
        strength = strength_text(cfg["noise"], cfg.get("noise_levels", BEFORE["noise_levels"]))
        return f"train {loss} (input corrupted: {cfg.get('corruption', 'gaussian')} {strength})"
    return f"train {loss} (clean input)"


# ------------------------------------------------------------------------------ latent space

VIEWS = ((20, -60), (20, 30), (60, -45), (5, 120))  # (elevation, azimuth) of the 3-D scatter panels


def class_colours(n: int):
    """n distinct colours: tab10, tab20, then tab20 + tab20b + tab20c (60; tab20 alone repeated from the 21st
    class on, so class 0 and class 20 shared a blue), then evenly spread hues of turbo for more classes."""
    if n > 60:
        turbo = plt.get_cmap("turbo")
        return [turbo(0.05 + 0.9 * ((i * 0.618034) % 1)) for i in range(n)]
    names = ["tab10"] if n <= 10 else ["tab20"] if n <= 20 else ["tab20", "tab20b", "tab20c"]
    return [c for name in names for c in plt.get_cmap(name).colors][:n]


def _scatter(ax, points, labels, class_names, size: float, colours=None):
    colours = class_colours(len(class_names)) if colours is None else colours
    order = np.random.default_rng(0).permutation(len(points))  # no class is always drawn on top
    p, y = points[order], labels[order]
    ax.scatter(*p.T, c=[colours[i] for i in y], s=size, alpha=0.6, linewidths=0)


def _legend(fig, class_names, colours=None, title: str = "class") -> float:
    """The class legend at the figure's right edge, in columns of at most 25 (40 classes ran off a 5-inch figure);
    returns the `right` the panels may reach beside it."""
    colours = class_colours(len(class_names)) if colours is None else colours
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=n) for c, n in zip(colours, class_names)]
    ncol = -(-len(class_names) // 25)
    fig.legend(handles=handles, loc="center right", title=title, frameon=False, ncol=ncol,
               fontsize="medium" if len(class_names) <= 20 else "small")
    longest = max((len(n) for n in class_names), default=5)
    return 1 - min(0.45, ncol * (0.35 + 0.08 * longest) / fig.get_figwidth())


def _central(points, labels, title: str):
    """The points inside the 0.5-99.5th percentile box of every axis (a few far outliers would otherwise
    squeeze the cloud into a corner), their labels, and the title saying how many were left out."""
    lo, hi = np.percentile(points, 0.5, axis=0), np.percentile(points, 99.5, axis=0)
    margin = 0.05 * (hi - lo)
    keep = np.all((points >= lo - margin) & (points <= hi + margin), axis=1)
    if keep.all():
        return points, labels, title
    n = int((~keep).sum())
    return (points[keep], labels[keep], f"{title}\n{n:,} outlying point{'s' * (n != 1)} (beyond the 0.5-99.5th "
            f"percentile of an axis) not drawn")


def _suptitle(fig, title: str) -> float:
    """title over the figure, each line wrapped to the figure's width (a long one was cut at both edges); returns
    the `top` that panels may reach below it."""
    chars = int(fig.get_figwidth() * fig.dpi / 8.5)  # about the width of a 12-point character, in pixels
    text = "\n".join(textwrap.fill(line, chars) for line in title.split("\n"))
    fig.suptitle(text)
    return 1 - (0.35 + 0.2 * (text.count("\n") + 1)) / fig.get_figheight()  # 12-point lines, and a margin


# The scatters draw every code axis to one scale, so that distances on the page are the Euclidean distances that
# the 10-NN accuracy, the neighbours figure and the interpolations use (of a code of more than 3 dimensions, their
# part in its 3-D PCA projection). Fitting each axis to its own range (the matplotlib default) stretched a narrow
# axis to look as wide as the others.
SAME_SCALE = "every axis drawn to the same scale"


def latent_views(points, labels, class_names, out: str, title: str, axis_names) -> str:
    """3-D scatter of the codes coloured by class, seen from len(VIEWS) angles -> out (PNG). A code of fewer
    than 3 dimensions has no 3-D view: each coordinate's distribution per class instead (latent_marginals)."""
    points = np.asarray(points)
    if points.shape[1] < 3:
        return latent_marginals(points, labels, class_names, out, title, axis_names)
    points, labels, title = _central(points, np.asarray(labels), title)
    fig = plt.figure(figsize=(11, 9), dpi=100)
    size = 2.0 if len(points) > 2000 else 8.0
    for i, (elev, azim) in enumerate(VIEWS):
        ax = fig.add_subplot(2, 2, i + 1, projection="3d")
        _scatter(ax, points, labels, class_names, size)
        ax.view_init(elev=elev, azim=azim)
        ax.set_aspect("equal", adjustable="datalim")  # one unit is one length on every axis (see SAME_SCALE)
        ax.set_xlabel(axis_names[0])
        ax.set_ylabel(axis_names[1])
        ax.set_zlabel(axis_names[2])
        # An axis seen nearly end-on (latent 2 at elevation 5, azimuth 120; latent 3 from above) is a few
        # dozen pixels long: matplotlib's 6-8 ticks on it overlapped into one unreadable smear.
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
            axis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 5, 10]))
        ax.set_title(f"view: elevation {elev}, azimuth {azim}", fontsize=9)
        ax.tick_params(labelsize=7)
    right = _legend(fig, class_names)
    top = _suptitle(fig, f"{title}\n{SAME_SCALE}")
    fig.subplots_adjust(left=0.02, right=min(0.86, right), bottom=0.03, top=min(0.89, top), wspace=0.05, hspace=0.14)
    fig.savefig(out)
    plt.close(fig)
    return os.path.basename(out)


def latent_marginals(points, labels, class_names, out: str, title: str, axis_names) -> str:
    """One panel per coordinate of a 1-D or 2-D code: a violin of its values for each class -> out (PNG)."""
    points, labels, title = _central(np.asarray(points), np.asarray(labels), title)
    d, n_classes = points.shape[1], len(class_names)
    fig, axs = plt.subplots(1, d, figsize=(5.5 * d + 2.5, 2 + 0.45 * n_classes), dpi=100, squeeze=False)
    colours = class_colours(n_classes)
    present = [k for k in range(n_classes) if np.any(labels == k)]
    for a, ax in enumerate(axs[0]):
        parts = ax.violinplot([points[labels == k, a] for k in present], positions=present, orientation="horizontal",
                              showmedians=True, showextrema=False, widths=0.8)
        for k, body in zip(present, parts["bodies"]):
            body.set_facecolor(colours[k])
            body.set_alpha(0.7)
        parts["cmedians"].set_color("black")
        ax.set_yticks(range(n_classes), class_names)
        ax.set_ylim(n_classes - 0.5, -0.5)  # first class on top, as in the legend of the other figures
        ax.set_xlabel(axis_names[a])
        ax.set_title(f"{axis_names[a]} by class (black: median)", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    _suptitle(fig, f"{title}\nno 3-D view: the code has {d} dimension{'s' * (d > 1)}")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return os.path.basename(out)


def _plane_pairs(d: int) -> tuple[tuple[int, int], ...]:
    """The coordinate pairs a d-D code (d >= 2) is drawn in: 1-2, 1-3 and 2-3 of 3 or more, its one plane of 2."""
    return ((0, 1), (0, 2), (1, 2)) if d >= 3 else ((0, 1),)


def _plane_panel(ax, points, a: int, b: int, labels, names, size: float, axis_names, colours=None):
    """Coordinates a and b of the codes on ax, coloured by labels, both axes to one scale (SAME_SCALE)."""
    _scatter(ax, points[:, [a, b]], labels, names, size, colours)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(axis_names[a])
    ax.set_ylabel(axis_names[b])
    ax.set_title(f"{axis_names[a]} vs {axis_names[b]}", fontsize=10)
    ax.grid(True, alpha=0.3)
    for axis in (ax.xaxis, ax.yaxis):  # long tick labels ("-0.0125") ran together at matplotlib's default
        axis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))


def latent_pairs(points, labels, class_names, out: str, title: str, axis_names) -> str:
    """The codes' 2-D projections -> out (PNG): three (1-2, 1-3, 2-3) for a 3-D code, its one plane for a 2-D
    code, and for a 1-D code its values in one row per class."""
    points, labels, title = _central(np.asarray(points), np.asarray(labels), title)
    d = points.shape[1]
    if d == 1:
        return _latent_strip(points[:, 0], labels, class_names, out, title, axis_names[0])
    pairs = _plane_pairs(d)
    fig, axs = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 5) if d >= 3 else (8, 6.5), dpi=100,
                            squeeze=False)
    size = 1.5 if len(points) > 2000 else 8.0
    for ax, (a, b) in zip(axs[0], pairs):
        _plane_panel(ax, points, a, b, labels, class_names, size, axis_names)
    right = _legend(fig, class_names)
    top = _suptitle(fig, f"{title}\n{SAME_SCALE}")
    if d >= 3:  # left: room for the y label and its tick labels (they were cut at the edge)
        fig.subplots_adjust(left=0.07, right=min(0.88, right), bottom=0.1, top=min(0.84, top), wspace=0.3)
    else:
        fig.subplots_adjust(left=0.1, right=min(0.78, right), bottom=0.09, top=min(0.86, top))
    fig.savefig(out)
    plt.close(fig)
    return os.path.basename(out)


def _latent_strip(values, labels, class_names, out: str, title: str, axis_name: str) -> str:
    """A 1-D code: each test image a dot at its value, one row per class, jittered up and down within it."""
    n_classes = len(class_names)
    fig, ax = plt.subplots(figsize=(10, 1.5 + 0.45 * n_classes), dpi=100)
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(values))
    rows = np.stack([values, labels + jitter], 1)
    _scatter(ax, rows, labels, class_names, 1.5 if len(values) > 2000 else 8.0)
    ax.set_yticks(range(n_classes), class_names)
    ax.set_ylim(n_classes - 0.5, -0.5)
    ax.set_xlabel(axis_name)
    ax.set_title(f"{axis_name}, one row per class (the vertical spread within a row only separates the dots)",
                 fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    _suptitle(fig, title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return os.path.basename(out)


def head_colours(n: int):
    """n colours for encoder heads, unlike the classes' (tab10): Dark2's 8, then class_colours' many."""
    return list(plt.get_cmap("Dark2").colors[:n]) if n <= 8 else class_colours(n)


def head_shares(heads, n_heads: int) -> np.ndarray:
    """[n_heads]: the fraction of `heads` (each image's encoder head) that each head gave; zeros for no images."""
    heads = np.asarray(heads)
    return np.bincount(heads, minlength=n_heads) / max(1, len(heads))


def latent_heads(points, heads, n_heads: int, labels, class_names, out: str, title: str, axis_names) -> str:
    """A model with encoder heads (--encoder-heads): the codes' 2-D projections coloured by the head that gave each
    (a 1-D code: each head's histogram), over a bar per class of the share of its test images each head gave the
    code of -> out (PNG). Does each head take a region of the space, or a kind of image?"""
    heads, labels = np.asarray(heads), np.asarray(labels)
    wins = head_shares(heads, n_heads)
    names = [f"head {h + 1} ({100 * w:.1f} %)" for h, w in enumerate(wins)]
    colours = head_colours(n_heads)
    shares = np.array([head_shares(heads[labels == c], n_heads)
                       for c in range(len(class_names))])  # [class, head], every test image
    points, heads_kept, title = _central(np.asarray(points), heads, title)
    d = points.shape[1]
    pairs = _plane_pairs(d) if d >= 2 else ()
    fig = plt.figure(figsize=(15, 9.5), dpi=100)
    grid = fig.add_gridspec(2, max(1, len(pairs)), height_ratios=(5, 3.2), hspace=0.45, wspace=0.3)
    size = 1.5 if len(points) > 2000 else 8.0
    for i, (a, b) in enumerate(pairs):
        _plane_panel(fig.add_subplot(grid[0, i]), points, a, b, heads_kept, names, size, axis_names, colours)
    if not pairs:  # a 1-D code
        ax = fig.add_subplot(grid[0, 0])
        ax.hist([points[heads_kept == h, 0] for h in range(n_heads)], bins=60, stacked=True, color=colours)
        ax.set_xlabel(axis_names[0])
        ax.set_ylabel("test images")
        ax.set_title(f"{axis_names[0]}, stacked by head", fontsize=10)
        ax.grid(True, alpha=0.3)
    ax = fig.add_subplot(grid[1, :])
    x = np.arange(len(class_names))
    bottom = np.zeros(len(class_names))
    for h in range(n_heads):
        ax.bar(x, shares[:, h], bottom=bottom, color=colours[h], width=0.8)
        bottom += shares[:, h]
    ax.set_xticks(x, class_names, rotation=0 if len(class_names) <= 10 else 90, fontsize=9)
    ax.set_xlim(-0.6, len(class_names) - 0.4)
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:.0f} %"))
    ax.set_ylabel("share of the class")
    ax.set_title("which head gave the codes of each class's test images", fontsize=10)
    right = _legend(fig, names, colours, "encoder head (share of the test images)")
    top = _suptitle(fig, f"{title}\ncoloured by the encoder head whose proposal was drawn nearest each image"
                    + (f"; {SAME_SCALE}" if d >= 2 else ""))
    fig.subplots_adjust(left=0.06, right=min(0.82, right), bottom=0.06 if len(class_names) <= 10 else 0.16,
                        top=min(0.86, top))
    fig.savefig(out)
    plt.close(fig)
    return os.path.basename(out)


# ------------------------------------------------------------------------------ image grids

# Layout of image_grid in pixels, so a grid's size is known in advance (grid_size). The title band holds three
# lines and the header band two, whatever the content: a small grid (a few columns of small images) is too
# narrow for its title on one line and its column labels side by side.
TILE_SIDE = 48      # images are enlarged (nearest neighbour) until their shorter side is at least this: 32x32 x2
TILE_LONG = 256     # ... unless that makes the longer side more than this (a 7x64 strip: x4, not x7)
PAD = 2             # between tiles and around the grid
TITLE_H = 62        # the title band: three lines of 14 px type
HEADER_H = 30       # the column labels: two lines of 11 px type
LABEL_W = 150       # the row labels
MIN_W = 480         # the least width of a grid, so its title fits in three lines (the tiles leave the rest white)
LABEL_GAP = 5       # the least space between two column labels on one line
SIZES = (11, 10, 9)  # label type sizes, tried largest first; 9 px is the smallest that stays legible


def tile_scale(height: int, width: int) -> int:
    """How many times image_grid enlarges an image of this size: 2 for CIFAR's 32x32, 6 for 8x8, 1 for 64x64."""
    return max(1, min(-(-TILE_SIDE // min(height, width)), TILE_LONG // max(height, width)))


def grid_size(rows: int, cols: int, height: int, width: int) -> tuple[int, int]:
    """(width, height) in pixels of image_grid's output for rows x cols tiles of height x width images."""
    th, tw = height * tile_scale(height, width), width * tile_scale(height, width)
    return max(MIN_W, LABEL_W + cols * (tw + PAD) + PAD), TITLE_H + HEADER_H + rows * (th + PAD) + PAD


def _fit(draw, text: str, font, width: float) -> str:
    """text, shortened with '...' until it fits in `width` pixels; "" when not even a letter and '...' do."""
    while len(text) > 1 and draw.textlength(text, font=font) > width:
        body = text.removesuffix("...")[:-1]
        if not body:  # '...' alone did not fit either (it loops for ever on '...')
            return ""
        text = body + "..."
    return text


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """text broken at spaces into lines of at most `width` pixels (a longer word gets a line of its own)."""
    lines = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def _title_lines(draw, title: str, width: int, load) -> tuple[list[str], object]:
    """The title in at most three lines of `width` pixels, at the largest size from 14 px down to 11 px that
    holds it; what still does not fit ends in '...'."""
    for size in (14, 13, 12, 11):
        font = load(size)
        lines = _wrap(draw, title, font, width)
        if len(lines) <= 3 and all(draw.textlength(line, font=font) <= width for line in lines):
            return lines, font
    return [*(_fit(draw, line, font, width) for line in lines[:2]), _fit(draw, " ".join(lines[2:]), font, width)], font


def _place_headers(draw, labels: list[str], centres: list[float], right: float, load):
    """Column labels -> (font, [(text, x centre, line)]), line 1 being the one next to the tiles. All on one
    line at the largest size in SIZES where none comes within LABEL_GAP of the next; else at the largest size
    on two lines, each label on the lower line unless it would crowd the one before it there."""
    for size in SIZES + (None,):
        font = load(size or SIZES[0])
        placed, ends = [], [-LABEL_GAP, -LABEL_GAP]  # right edge of the last label on each line
        for text, c in zip(labels, centres):
            w = draw.textlength(text, font=font)
            c = min(c, right - w / 2)  # the last column's label stays on the canvas
            line = 1 if c - w / 2 >= ends[1] + LABEL_GAP else 0 if size is None else None
            if line is None:
                break
            if size is None and c - w / 2 < ends[0] + LABEL_GAP:  # both lines crowded: shorten it
                line = int(ends[1] < ends[0])
                text = _fit(draw, text, font, max(0.0, 2 * (c - ends[line] - LABEL_GAP)))
                w = draw.textlength(text, font=font)
            placed.append((text, c, line))
            ends[line] = c + w / 2
        else:
            return font, placed


def image_grid(images, out: str, title: str, col_labels, row_labels) -> str:
    """A labelled grid of uint8 images [rows, cols, H, W, C] -> out (PNG, size grid_size(...))."""
    from PIL import Image, ImageDraw, ImageFont

    load = lambda size: ImageFont.load_default(size=size)  # noqa: E731
    images = np.asarray(images)
    rows, cols, h, w = images.shape[:4]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, -1)
    th, tw = h * tile_scale(h, w), w * tile_scale(h, w)
    canvas = Image.new("RGB", grid_size(rows, cols, h, w), "white")
    draw = ImageDraw.Draw(canvas)
    lines, font = _title_lines(draw, title, canvas.width - 2 * PAD, load)
    line_h = font.size + 4
    for i, line in enumerate(lines):
        draw.text((PAD, (TITLE_H - len(lines) * line_h) / 2 + i * line_h), line, fill="black", font=font)
    centres = [LABEL_W + PAD + j * (tw + PAD) + tw / 2 for j in range(cols)]
    small, headers = _place_headers(draw, [str(v) for v in col_labels], centres, canvas.width - PAD, load)
    for text, x, line in headers:
        draw.text((x, TITLE_H + HEADER_H * (0.3 + 0.45 * line)), text, fill="black", font=small, anchor="mm")
    row_labels = [str(v) for v in row_labels[:rows]]
    row_font = next((f for f in map(load, SIZES) if all(draw.textlength(t, font=f) <= LABEL_W - 2 * PAD
                                                         for t in row_labels)), load(SIZES[-1]))
    for i in range(rows):
        y = TITLE_H + HEADER_H + PAD + i * (th + PAD)
        draw.text((PAD, y + th / 2), _fit(draw, row_labels[i], row_font, LABEL_W - 2 * PAD), fill="black",
                  font=row_font, anchor="lm")
        for j in range(cols):
            tile = Image.fromarray(images[i, j]).resize((tw, th), Image.NEAREST)
            canvas.paste(tile, (LABEL_W + PAD + j * (tw + PAD), y))
    canvas.save(out)
    return os.path.basename(out)
