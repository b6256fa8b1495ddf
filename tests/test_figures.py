"""figures and pages: pixel sizes of the grids, the loss curve's labels, the self-contained 3-D page."""

from __future__ import annotations

import base64
import collections
import io
import json
import os
import re
import shutil
import subprocess

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from jaxae import figures, pages


def test_image_grid_has_the_size_grid_size_promises(tmp_path):
    rng = np.random.default_rng(0)
    for rows, cols, h, w, c in ((2, 5, 16, 16, 3), (3, 1, 28, 20, 1)):
        images = rng.integers(0, 256, (rows, cols, h, w, c), dtype=np.uint8)
        out = tmp_path / f"grid{c}.png"
        figures.image_grid(images, str(out), "a title that is long " * 5, [f"c{j}" for j in range(cols)],
                           [f"row {i}" for i in range(rows)])
        im = Image.open(out)
        assert im.size == figures.grid_size(rows, cols, h, w) and im.mode == "RGB"
        # the first tile sits at its computed place, enlarged tile_scale times with nearest neighbour
        x0, y0 = figures.LABEL_W + figures.PAD, figures.TITLE_H + figures.HEADER_H + figures.PAD
        k = figures.tile_scale(h, w)
        tile = np.asarray(im)[y0:y0 + h * k:k, x0:x0 + w * k:k]
        np.testing.assert_array_equal(tile, np.broadcast_to(images[0, 0], (h, w, 3)))


def _write_run(workdir, noise, **more):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as fh:
        json.dump({"loss": "l1", "noise": noise, "corruption": "mask", **more}, fh)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as fh:
        for e in (1, 2):
            fh.write(json.dumps({"epoch": e, "step": 10 * e, "train_loss": 0.1 / e, "test_mse": 0.05 / e}) + "\n")


def test_loss_curve_labels_the_train_input_from_the_config(tmp_path):
    _write_run(tmp_path / "plain", 0.0)
    _write_run(tmp_path / "denoising", 0.3)
    assert figures._train_label(str(tmp_path / "plain")) == "train L1 (clean input)"
    # a config.json without noise_levels is a run from before the option: every example at --noise
    assert figures._train_label(str(tmp_path / "denoising")) == "train L1 (input corrupted: mask 0.3)"
    _write_run(tmp_path / "uniform", 0.3, noise_levels="uniform")
    assert figures._train_label(str(tmp_path / "uniform")) == "train L1 (input corrupted: mask 0-0.3)"
    out = figures.loss_curve(str(tmp_path / "plain"), pca_mse=0.03)
    assert Image.open(out).size == (840, 504)
    with_mean = figures.loss_curve(str(tmp_path / "plain"), str(tmp_path / "m.png"), pca_mse=0.03, mean_mse=0.06)
    assert not np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(with_mean)))  # its line drawn
    assert figures.loss_curve(str(tmp_path / "empty")) is None


@pytest.mark.parametrize("uniform", [True, False])
def test_noise_curve_draws_every_positive_point_and_the_trained_strengths(tmp_path, monkeypatch, uniform):
    calls = []

    def recorder(name):
        real = getattr(plt.Axes, name)

        def record(ax, *args, **kw):  # the positional arguments (arrays as lists) and the label
            calls.append((name, *[np.asarray(a).tolist() for a in args if not isinstance(a, str)], kw["label"]))
            return real(ax, *args, **kw)
        return record
    for name in ("plot", "axvspan", "axvline"):
        monkeypatch.setattr(plt.Axes, name, recorder(name))
    curves = {"autoencoder": [0.03, 0.031, 0.035], "PCA-3": [0.032, 0.033, 0.036], "input": [0.0, 0.03, 0.1]}
    out = figures.noise_curve([0.0, 0.2, 0.4], curves, 0.2, uniform, "gaussian", str(tmp_path / "n.png"))
    assert Image.open(out).size == (840, 504)
    # the clean input's error (0) has no place on the log axis: its curve starts at the first noisy point
    mark = ("axvspan", 0, 0.2, "trained on strengths 0-0.2") if uniform else ("axvline", 0.2, "trained on strength 0.2")
    assert calls == [mark, ("plot", [0.0, 0.2, 0.4], curves["autoencoder"], "autoencoder"),
                     ("plot", [0.0, 0.2, 0.4], curves["PCA-3"], "PCA-3"), ("plot", [0.2, 0.4], [0.03, 0.1], "input")]


def test_latent_scatter_figures_have_fixed_sizes(tmp_path):
    rng = np.random.default_rng(0)
    pts, labels = rng.normal(size=(60, 3)), np.repeat(np.arange(3), 20)
    names = ["a", "b", "c"]
    axes = ["latent 1", "latent 2", "latent 3"]
    figures.latent_views(pts, labels, names, str(tmp_path / "v.png"), "title", axes)
    figures.latent_pairs(pts, labels, names, str(tmp_path / "p.png"), "title", axes)
    assert Image.open(tmp_path / "v.png").size == (1100, 900)
    assert Image.open(tmp_path / "p.png").size == (1500, 500)


def test_3d_page_is_self_contained_and_carries_points_and_thumbnails(tmp_path):
    rng = np.random.default_rng(0)
    pts, labels = rng.normal(size=(50, 3)), np.repeat(np.arange(2), 25)
    keep = np.arange(0, 50, 5)
    thumbs = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    out = tmp_path / "page.html"
    pages.scatter3d(str(out), pts, labels, ["cat</script>", "dog"], keep, thumbs, "My title", ["x", "y", "z"])
    page = out.read_text()
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", page)  # nothing fetched from the network
    assert page.count("</script>") == 1  # a class name cannot end the script early
    data = json.loads(re.search(r"const D = (\{.*?\});\n", page).group(1))
    assert len(data["p"]) == 50 and data["y"] == labels.tolist()
    assert [data["t"][i] for i in keep] == list(range(10)) and data["t"].count(-1) == 40
    assert data["names"][0] == "cat</script>" and "<title>My title</title>" in page
    sprite = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    sheet = np.asarray(Image.open(io.BytesIO(base64.b64decode(sprite))))
    assert sheet.shape == (3 * 8, 4 * 8, 3) and data["cols"] == 4  # ceil(sqrt(10)) = 4 columns, 3 rows
    np.testing.assert_array_equal(sheet[8:16, 0:8], thumbs[4])  # thumbnail 4: row 1, column 0


# ------------------------------------------------------------------------------ what a user reads off the figures

@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figures the figures module draws, kept open for inspection (it closes them when saved)."""
    figs, close = [], plt.close
    monkeypatch.setattr(figures.plt, "close", figs.append)
    yield figs
    for fig in figs:
        close(fig)


def _rows(workdir, rows):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    return str(workdir)


def test_loss_curve_of_a_resumed_partial_epoch_draws_each_epoch_once(tmp_path, drawn):
    # --max-steps 20 stopped epoch 1 part-way and wrote its row; the resumed run finished epoch 1 (step 390)
    rows = [{"epoch": 1, "step": 20, "train_loss": 0.09, "test_mse": 0.064},
            {"epoch": 1, "step": 390, "train_loss": 0.03, "test_mse": 0.012},
            {"epoch": 2, "step": 780, "train_loss": 0.02, "test_mse": 0.010}]
    figures.loss_curve(_rows(tmp_path / "run", rows))
    train, test = drawn[0].axes[0].lines[:2]
    assert list(train.get_xdata()) == [1, 2] and list(train.get_ydata()) == [0.03, 0.02]
    assert list(test.get_ydata()) == [0.012, 0.010]
    assert [r["step"] for r in figures.per_epoch(rows[::-1])] == [390, 780]  # order in the file does not matter


def test_a_cut_epoch_is_drawn_where_it_stopped_and_the_evaluated_step_is_marked(tmp_path, drawn):
    # 10 steps per epoch; --max-steps 24 stopped epoch 3 after 4 of its steps; evaluate.py --step 10
    rows = [{"epoch": e, "step": s, "train_loss": 0.05, "test_mse": 0.04} for e, s in ((1, 10), (2, 20), (3, 24))]
    figures.loss_curve(_rows(tmp_path / "run", rows), step=10)
    ax = drawn[0].axes[0]
    assert list(ax.lines[0].get_xdata()) == [1, 2, 2.4]
    marker = [l for l in ax.lines if "evaluated checkpoint (step 10)" in l.get_label()]
    assert len(marker) == 1 and list(marker[0].get_xdata()) == [1, 1]
    figures.loss_curve(_rows(tmp_path / "run", rows), step=24)  # the last step: nothing to mark
    assert not [l for l in drawn[1].axes[0].lines if "evaluated" in l.get_label()]


def test_a_one_point_loss_curve_has_whole_epochs_and_plain_tick_labels(tmp_path, drawn):
    figures.loss_curve(_rows(tmp_path / "run", [{"epoch": 1, "step": 20, "train_loss": 0.09, "test_mse": 0.064}]),
                       pca_mse=0.03, mean_mse=0.061)
    ax = drawn[0].axes[0]
    assert ax.get_xlim() == (0, 2)  # matplotlib's own: 0.96 .. 1.04
    assert all(float(t).is_integer() for t in ax.get_xticks())
    drawn[0].canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True) if t.get_text()]
    assert labels and all(re.fullmatch(r"[0-9.]+", t) for t in labels), labels  # no '6x10^-2'
    assert "0.03" in labels and "0.09" in labels
    assert ax.lines[0].get_markersize() > 3


def _codes(d, n=90):
    """Codes of d < 3 dimensions as evaluate.py hands them to the figures (as they are), labels, axis names."""
    from jaxae.evaluate import project_to_3d

    pts, axes, _ = project_to_3d(np.random.default_rng(0).normal(size=(n, d)), None)
    return pts, np.arange(n) % 3, axes


def _texts(fig):
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text)]


def test_a_2d_code_is_drawn_in_its_own_plane_without_a_dummy_axis(tmp_path, drawn):
    pts, labels, axes = _codes(2)
    title = "Autoencoder latent space"
    figures.latent_pairs(pts, labels, ["a", "b", "c"], str(tmp_path / "p.png"), title, axes)
    figures.latent_views(pts, labels, ["a", "b", "c"], str(tmp_path / "v.png"), title, axes)
    pairs, views = drawn
    assert [ax.get_title() for ax in pairs.axes] == ["latent 1 vs latent 2"]  # one panel, not three
    np.testing.assert_allclose(pairs.axes[0].collections[0].get_offsets()[:, 1].std(), pts[:, 1].std(), rtol=0.2)
    assert not any(ax.name == "3d" for ax in views.axes)  # no 3-D view of a flat code
    assert [ax.get_xlabel() for ax in views.axes] == ["latent 1", "latent 2"]
    for fig in drawn:
        assert not any("(none)" in t or "missing axes" in t for t in _texts(fig))


def test_a_1d_code_is_drawn_as_one_row_per_class(tmp_path, drawn):
    pts, labels, axes = _codes(1)
    figures.latent_pairs(pts, labels, ["a", "b", "c"], str(tmp_path / "p.png"), "t", axes)
    figures.latent_views(pts, labels, ["a", "b", "c"], str(tmp_path / "v.png"), "t", axes)
    for fig in drawn:
        (ax,) = fig.axes
        assert ax.get_xlabel() == "latent 1" and [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
        assert not any("(none)" in t for t in _texts(fig))
    dots = drawn[0].axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(np.sort(dots[:, 0]), np.sort(pts[:, 0]))  # every code, at its value


def test_3d_views_carry_few_enough_ticks_to_read(tmp_path, drawn):
    pts = np.random.default_rng(0).normal(size=(300, 3)) * [3, 4, 3]
    figures.latent_views(pts, np.arange(300) % 3, ["a", "b", "c"], str(tmp_path / "v.png"), "t",
                         ["latent 1", "latent 2", "latent 3"])
    for ax in drawn[0].axes[:4]:
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim()), (ax.zaxis, ax.get_zlim())):
            shown = [t for t in axis.get_majorticklocs() if lo <= t <= hi]
            assert 2 <= len(shown) <= 5, (ax.get_title(), shown)  # matplotlib's own: 8 on latent 2


@pytest.mark.parametrize("shape,scale", [((32, 32), 2), ((16, 16), 3), ((8, 8), 6), ((64, 64), 1),
                                         ((7, 64), 4), ((28, 20), 3), ((300, 300), 1)])
def test_small_images_are_enlarged_to_a_legible_tile(shape, scale):
    # a fixed 2x made 8x8 images 16 px tiles, under column labels that then collided
    assert figures.tile_scale(*shape) == scale


def test_a_long_title_on_a_narrow_grid_is_not_cut(tmp_path):
    # the decoder map of 8x8 images lost "PC 1 across, PC 2 down" to a '...'
    from PIL import ImageDraw, ImageFont
    load = lambda size: ImageFont.load_default(size=size)  # noqa: E731
    width, _ = figures.grid_size(2, 2, 8, 8)
    title = ("The decoder over the plane of the test codes' two main directions, through their mean: PC 1 across, "
             "PC 2 down, each from the codes' 1st to 99th percentile")
    lines, font = figures._title_lines(ImageDraw.Draw(Image.new("RGB", (1, 1))), title, width - 2 * figures.PAD,
                                       load)
    assert " ".join(lines) == title and len(lines) * (font.size + 4) <= figures.TITLE_H


def test_grid_titles_and_column_labels_fit_a_16px_grid():
    from PIL import ImageDraw, ImageFont

    load = lambda size: ImageFont.load_default(size=size)  # noqa: E731
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width, _ = figures.grid_size(8, 9, 16, 16)  # nearest neighbours of 16x16 images: query + 8
    title = "Test queries and their 8 nearest training images in the autoencoder's latent space"
    lines, font = figures._title_lines(draw, title, width - 2 * figures.PAD, load)
    assert " ".join(lines) == title and len(lines) * (font.size + 4) <= figures.TITLE_H  # not cut off
    assert all(draw.textlength(line, font=font) <= width - 2 * figures.PAD for line in lines)
    tw = 16 * figures.tile_scale(16, 16)
    labels = ["A"] + [f"t={v:.2f}" for v in np.linspace(0, 1, 10)] + ["B"]
    width, _ = figures.grid_size(8, 12, 16, 16)  # the interpolation figure's: where image_grid puts the centres
    centres = [figures.LABEL_W + figures.PAD + j * (tw + figures.PAD) + tw / 2 for j in range(12)]
    font, placed = figures._place_headers(draw, labels, centres, width - figures.PAD, load)
    assert [t for t, _, _ in placed] == labels  # none shortened
    for line in (0, 1):
        spans = [(x - draw.textlength(t, font=font) / 2, x + draw.textlength(t, font=font) / 2)
                 for t, x, ln in placed if ln == line]
        assert all(b[0] - a[1] >= figures.LABEL_GAP for a, b in zip(spans, spans[1:]))  # they used to touch


def _scatter_page(tmp_path, pts, labels, axes) -> tuple[str, dict]:
    """pages.scatter3d of these codes: the page and the data it embeds."""
    out = tmp_path / "page.html"
    pages.scatter3d(str(out), pts, labels, ["a", "b", "c"], np.arange(4), np.zeros((4, 8, 8, 3), np.uint8),
                    "t", axes)
    page = out.read_text()
    return page, json.loads(re.search(r"const D = (\{.*?\});\n", page).group(1))


def test_the_3d_page_of_a_2d_code_has_two_axes_and_says_so(tmp_path):
    page, data = _scatter_page(tmp_path, *_codes(2, 20))
    assert data["axes"] == ["latent 1", "latent 2"] and {len(p) for p in data["p"]} == {2}
    assert "face-on" in page and "(none)" not in page and "missing axes" not in page


def test_the_3d_page_of_a_1d_code_puts_each_class_on_a_row_of_its_own(tmp_path):
    # on one line the points of every class hid each other
    pts, labels, axes = _codes(1, 30)
    page, data = _scatter_page(tmp_path, pts, labels, axes)
    assert data["axes"] == ["latent 1", "class (a row each)"] and data["code_axes"] == 1
    p = np.array(data["p"])
    np.testing.assert_allclose(p[:, 0], np.round(pts[:, 0], 4))
    assert np.all(np.abs(-p[:, 1] - np.asarray(labels)) <= 0.3)  # class k's row around -k: the first on top
    assert "one row per class" in page


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_the_heads_figure_colours_each_code_by_its_head_and_stacks_each_class_by_head(tmp_path, drawn, dim):
    """latent_heads: every drawn code in its head's colour (heads 2 and 3 swapped in the data, so a figure coloured
    by class or by position would fail), and per class a bar per head whose heights are the shares of the class's
    images that head gave the code of; the legend gives each head's share of all images."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    heads = np.where(labels == 0, 1, rng.integers(0, 3, 120))  # class "a": all head 2
    pts = rng.normal(size=(120, dim))
    name = figures.latent_heads(pts, heads, 3, labels, ["a", "b", "c"], str(tmp_path / "h.png"), "t",
                                [f"latent {i + 1}" for i in range(dim)])
    assert name == "h.png" and Image.open(tmp_path / "h.png").size == (1500, 950)
    fig, = drawn
    colours = np.array(figures.head_colours(3))
    *top, bars = fig.axes
    assert len(top) == (3 if dim == 3 else 1)
    if dim > 1:  # the scatter draws the dots shuffled: each is matched to its code by its first coordinate
        dots = top[0].collections[0]
        head_of = {float(v): h for v, h in zip(pts[:, 0], heads)}
        np.testing.assert_allclose(dots.get_facecolors()[:, :3],
                                   colours[[head_of[float(v)] for v in dots.get_offsets()[:, 0]]], atol=1e-6)
    else:  # a 1-D code: each head's histogram, stacked
        assert [len(c) for c in top[0].containers] == [60] * 3
        assert [sum(r.get_height() for r in c) for c in top[0].containers] == np.bincount(heads).tolist()
        np.testing.assert_allclose([c[0].get_facecolor()[:3] for c in top[0].containers], colours)
    heights = np.array([[r.get_height() for r in c] for c in bars.containers])  # [head, class]
    want = np.array([[np.mean(heads[labels == c] == h) for c in range(3)] for h in range(3)])
    np.testing.assert_allclose(heights, want)
    assert heights[:, 0].tolist() == [0, 1, 0]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == [f"head {h + 1} ({100 * np.mean(heads == h):.1f} %)" for h in range(3)]


def test_latent_scatters_draw_every_axis_to_one_scale(tmp_path, drawn):
    # latent 2 ten times narrower than the others: fitted to its own range it looked as wide as they do
    pts = np.random.default_rng(0).normal(size=(400, 3)) * [2.0, 0.2, 1.0]
    names = ["latent 1", "latent 2", "latent 3"]
    figures.latent_pairs(pts, np.arange(400) % 3, ["a", "b", "c"], str(tmp_path / "p.png"), "t", names)
    figures.latent_views(pts, np.arange(400) % 3, ["a", "b", "c"], str(tmp_path / "v.png"), "t", names)
    pairs, views = drawn
    for ax in pairs.axes[:3]:  # the savefig drew them: limits are final
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        box = ax.get_position().transformed(pairs.transFigure)
        assert (y1 - y0) / (x1 - x0) == pytest.approx(box.height / box.width, rel=0.02), ax.get_title()
    for ax in views.axes[:4]:
        spans = [hi - lo for lo, hi in (ax.get_xlim(), ax.get_ylim(), ax.get_zlim())]
        np.testing.assert_allclose(np.array(spans) / np.array(ax.get_box_aspect()), spans[0] / ax.get_box_aspect()[0],
                                   rtol=0.02)
    for fig in drawn:
        assert any(figures.SAME_SCALE in t for t in _texts(fig))
    one_far = np.vstack([np.random.default_rng(1).uniform(size=(400, 3)), [[100.0, 0.5, 0.5]]])
    assert "\n1 outlying point (beyond" in figures._central(one_far, np.zeros(401, int), "t")[2]  # not "points"


def _node() -> str | None:
    """node, if it is 14 or later: the page's script uses optional chaining (`?.`), which older ones cannot parse."""
    path = shutil.which("node")
    if path is None:
        return None
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    major = version.lstrip("v").split(".")[0]
    return path if major.isdigit() and int(major) >= 14 else None


NODE = _node()
# the page's script run in node against stand-ins for the few browser objects it touches. `drawn` holds the colour
# of each point the last draw() drew, `created` the elements the script made (the legend's entries), `handlers` its
# event handlers by "element id:event", `nodes` its elements by id
_HARNESS_SETUP = r"""
const vm = require("vm"), fs = require("fs");
const script = fs.readFileSync(process.argv[2], "utf8").split("<script>")[1].split("</script>")[0];
const noop = () => {}, handlers = {}, created = [];
let drawn = [];
const ctx = new Proxy({fillRect: () => drawn.push(ctx.fillStyle), clearRect: () => { drawn = []; }},
  {get: (t, k) => (k in t ? t[k] : noop), set: (t, k, v) => { t[k] = v; return true; }});
const node = id => ({id, style: {}, width: 900, height: 700, innerHTML: "", complete: true, classList: {toggle: noop},
  getContext: () => ctx, appendChild: noop, getBoundingClientRect: () => ({left: 0, top: 0}),
  addEventListener: (kind, f) => { handlers[id + ":" + kind] = f; }});
const nodes = {};
const sandbox = {document: {getElementById: id => (nodes[id] = nodes[id] || node(id)),
                            createElement: () => { const n = node(""); created.push(n); return n; }},
                 window: {addEventListener: noop, scrollX: 0, scrollY: 0}, location: {hash: ""}, console};
vm.createContext(sandbox);
vm.runInContext(script, sandbox);
"""
# prints the points in the unit cube (P) as placed at load, then with "stretch each axis" ticked
_PAGE_HARNESS = _HARNESS_SETUP + r"""
const placed = () => JSON.parse(vm.runInContext("JSON.stringify(P)", sandbox));
const before = placed();
handlers["fit:change"]({target: {checked: true}});
console.log(JSON.stringify({before, fit: placed()}));
"""


def _place_on_page(tmp_path, pts) -> tuple[np.ndarray, np.ndarray]:
    """Where the 3-D page puts each code in its unit cube, at load and with "stretch each axis" ticked."""
    page, _ = _scatter_page(tmp_path, pts, np.arange(len(pts)) % 3, [f"latent {i + 1}" for i in range(pts.shape[1])])
    assert "same scale" in page and 'id="fit"' in page
    (tmp_path / "harness.js").write_text(_PAGE_HARNESS)
    placed = json.loads(subprocess.run([NODE, str(tmp_path / "harness.js"), str(tmp_path / "page.html")],
                                       capture_output=True, text=True, check=True).stdout)
    slots = [0, 2] if pts.shape[1] == 2 else [0, 1, 2]  # a 2-D code's latent 2 goes up the screen
    return tuple(np.array(placed[k])[:, slots] for k in ("before", "fit"))


@pytest.mark.skipif(NODE is None, reason="needs node 14 or later to run the page's script")
def test_an_axis_of_no_spread_does_not_shrink_the_3d_page(tmp_path):
    # a dead code unit: its spread of 0 became 1 and set the common scale, and a code at scale 0.01 filled 4 % of it
    pts = np.random.default_rng(0).normal(size=(300, 3)) * [0.01, 0.02, 0.0]
    before, fit = _place_on_page(tmp_path, pts)
    assert 0.9 < np.abs(before).max() < 2 and 0.9 < np.abs(fit).max() < 2  # 98 % of the points inside the cube
    np.testing.assert_allclose(before[:, 2], 0, atol=1e-9)  # the dead axis stays flat, either way
    np.testing.assert_allclose(before[:, 1].std() / before[:, 0].std(), 2, rtol=0.2)  # one scale


@pytest.mark.skipif(NODE is None, reason="needs node 14 or later to run the page's script")
@pytest.mark.parametrize("dim", [3, 2])
def test_the_3d_page_draws_code_axes_to_one_scale_unless_asked(tmp_path, dim):
    pts = np.random.default_rng(0).normal(size=(300, dim)) * [2.0, 0.2, 1.0][:dim]
    before, fit = _place_on_page(tmp_path, pts)
    np.testing.assert_allclose(before.std(0) / before.std(0)[0], pts.std(0) / pts.std(0)[0], rtol=1e-3)
    assert np.abs(before).max() > 0.9  # the widest axis still fills the cube
    np.testing.assert_allclose(fit.std(0) / fit.std(0)[0], 1, rtol=0.2)  # each fitted to its own range


# prints the colours drawn by class, by head, by head with head 2 hidden, and point 0's tooltip
_HEADS_HARNESS = _HARNESS_SETUP + r"""
const out = {byClass: drawn};
handlers["byhead:change"]({target: {checked: true}});
out.byHead = drawn;
created.find(n => n.innerHTML.endsWith("head 2")).onclick();  // the legend hides head 2
out.head2Hidden = drawn;
vm.runInContext("showTip(0, 0, 0)", sandbox);
out.tip = nodes["tip"].innerHTML;
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(NODE is None, reason="needs node 14 or later to run the page's script")
def test_the_3d_page_of_a_model_with_heads_colours_by_head_on_request_and_names_each_points_head(tmp_path):
    labels = np.repeat(np.arange(3), 10)
    heads = np.array([0] * 5 + [1] * 10 + [2] * 15)  # not the classes' 10 / 10 / 10
    pts = np.random.default_rng(0).normal(size=(30, 3))
    out = tmp_path / "page.html"
    pages.scatter3d(str(out), pts, labels, ["a", "b", "c"], np.arange(30), np.zeros((30, 8, 8, 3), np.uint8), "t",
                    ["latent 1", "latent 2", "latent 3"], heads, 3)
    page = out.read_text()
    assert 'id="byhead"' in page and "colour by encoder head" in page
    (tmp_path / "harness.js").write_text(_HEADS_HARNESS)
    got = json.loads(subprocess.run([NODE, str(tmp_path / "harness.js"), str(out)], capture_output=True, text=True,
                                    check=True).stdout)
    count = lambda colours: sorted(collections.Counter(colours).items())  # noqa: E731
    classes = [pages._hex(c) for c in figures.class_colours(3)]
    by_head = [pages._hex(c) for c in figures.head_colours(3)]
    assert count(got["byClass"]) == count([classes[y] for y in labels])
    assert count(got["byHead"]) == count([by_head[h] for h in heads])
    assert count(got["head2Hidden"]) == count([by_head[h] for h in heads if h != 1])
    assert got["tip"].startswith("<b>a</b> (test image 0, head 1)")


def test_the_3d_page_of_a_plain_model_has_no_head_box(tmp_path):
    page, data = _scatter_page(tmp_path, *_codes(3, 20))
    assert "byhead" not in page.split("<script>")[0] and "h" not in data


@pytest.mark.parametrize("dim, shown, not_shown", [
    (2, "2-D plane", "three 2-D projections"), (1, "one row per class", "three 2-D projections"),
    (3, "three 2-D projections", "no 3-D view"), (8, "projected to 3-D with PCA", "no 3-D view")])
def test_index_says_what_the_latent_figures_show(tmp_path, tiny_config, dim, shown, not_shown):
    cfg = tiny_config(tmp_path, latent_dim=dim)
    metrics = {"step": 4, "n_train": 16, "n_test": 8, "seconds": {"encode_test": 0.1, "total": 2.0},
               "workdir": "run"}
    files = {"latent_3d_html": "latent_3d.html", "latent_3d": "latent_3d.png", "latent_pairs": "latent_pairs.png"}
    page = open(os.path.join(tmp_path, pages.index(str(tmp_path / "index.html"), cfg, metrics, "table", files))
                ).read()
    assert shown in page and not_shown not in page
    assert ("rotatable 3-D view" in page) == (dim >= 3)


@pytest.mark.parametrize("levels, strength, noisy", [
    ("uniform", "strength 0-0.2 (drawn uniformly for each example; denoising autoencoder)",
     "corrupted at the top of the training's range (strength 0.2) (fixed seed)"),
    ("fixed", "strength 0.2 (denoising autoencoder)", "corrupted as in training (fixed seed)")])
def test_index_says_how_the_inputs_were_corrupted(tmp_path, tiny_config, levels, strength, noisy):
    cfg = tiny_config(tmp_path, noise=0.2, noise_levels=levels)
    metrics = {"step": 4, "n_train": 16, "n_test": 8, "seconds": {"encode_test": 0.1, "total": 2.0},
               "workdir": "run"}
    files = {"latent_3d_html": "latent_3d.html"}
    page = open(os.path.join(tmp_path, pages.index(str(tmp_path / "index.html"), cfg, metrics, "table", files))).read()
    assert f"gaussian corruption, {strength}" in page and f"Noisy input: the test images {noisy}" in page


def test_crowded_long_column_labels_are_shortened_and_the_grid_is_drawn(tmp_path):
    """Twelve long labels over 16x16 tiles crowd both header lines: shortening one to nothing looped for ever
    (the reconstructions figure of an image folder with long class names hung evaluate.py)."""
    from PIL import ImageDraw, ImageFont
    labels = [f"class_{i:02d}_longname" for i in range(12)]
    out = figures.image_grid(np.zeros((2, 12, 16, 16, 3), np.uint8), str(tmp_path / "g.png"), "t", labels, ["a", "b"])
    assert Image.open(tmp_path / out).size == figures.grid_size(2, 12, 16, 16)
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = ImageFont.load_default(size=10)
    assert figures._fit(draw, "...", font, 0) == "" and figures._fit(draw, "abcdef", font, -5) == ""
    assert figures._fit(draw, "abcdef", font, 1000) == "abcdef"


def test_log_ticks_label_the_band_where_the_curves_lie():
    """Curves between 0.031 and 0.039 under a mean-image line at 0.061 had no labelled tick below 0.04."""
    ticks = figures._log_ticks(0.031, 0.065)
    assert min(ticks) < 0.04 and len(ticks) <= 7
    assert [f"{t:g}" for t in ticks] == ["0.035", "0.04", "0.045", "0.05", "0.055", "0.06", "0.065"]
    assert [f"{t:g}" for t in figures._log_ticks(0.02, 0.5)] == ["0.02", "0.05", "0.1", "0.2", "0.5"]


def test_a_lone_cut_epoch_is_placed_by_the_rows_steps_per_epoch():
    """--max-steps 300 of 390: the only row says epoch 1, step 300; it sits at 0.77, not at 1."""
    rows = [{"epoch": 1, "step": 300, "train_loss": 0.04, "test_mse": 0.033, "steps_per_epoch": 390}]
    positions, spe = figures.epoch_positions(rows)
    assert spe == 390 and positions == [300 / 390]
    assert figures.epoch_positions([{k: v for k, v in rows[0].items() if k != "steps_per_epoch"}]) == ([1.0], 300)


@pytest.mark.parametrize("n", [3, 10, 20, 25, 40, 60, 100])
def test_every_class_has_a_colour_of_its_own(n):
    # past 20 classes tab20 repeated: class 0 and class 20 were the same blue
    assert len({tuple(np.round(c, 6)) for c in figures.class_colours(n)}) == n
