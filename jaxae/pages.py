"""HTML pages of an evaluation: the rotatable 3-D latent view and the index that gathers everything.

Both are self-contained: data, thumbnails and script are inline, so they open offline (no CDN).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os

import numpy as np

from jaxae.config import strength_text
from jaxae.figures import class_colours, head_colours
from jaxae.metrics import ssim_window


def _hex(rgba) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgba[:3])


def _sprite(images: np.ndarray) -> tuple[str, int]:
    """uint8 images [n, H, W, C] -> a base64 PNG sprite sheet of ceil(sqrt(n)) columns, and that count."""
    from PIL import Image

    n, h, w = images.shape[:3]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, -1)
    cols = max(1, math.ceil(math.sqrt(n)))
    sheet = np.zeros((math.ceil(n / cols) * h, cols * w, 3), np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = im
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode(), cols


def _script_json(obj) -> str:
    return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")  # never closes the <script>


def scatter3d(out: str, points: np.ndarray, labels: np.ndarray, class_names, thumb_index: np.ndarray,
              thumbs: np.ndarray, title: str, axis_names, heads: np.ndarray | None = None,
              n_heads: int = 1) -> str:
    """A rotatable 3-D scatter of `points` [N, <= 3] coloured by class -> out (HTML). Points whose index is in
    `thumb_index` carry the matching image of `thumbs`, shown on hover or click. A 1-D or 2-D code is drawn
    face-on, flat, without a dummy axis. `heads` (a model with `n_heads` encoder heads): the head of each point's
    code, which its tooltip names; a box colours the points by head, and the legend hides heads as it does classes."""
    thumb_of = np.full(len(points), -1, np.int64)
    thumb_of[np.asarray(thumb_index)] = np.arange(len(thumb_index))
    sprite, cols = _sprite(np.asarray(thumbs))
    points, code_axes = np.asarray(points, np.float64), len(axis_names)
    if code_axes == 1:  # one row per class, jittered up and down as in latent_pairs.png: on one line they hid
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(points))  # each other
        points = np.stack([points[:, 0], -(np.asarray(labels) + jitter)], 1)  # the first class on top
        axis_names = [axis_names[0], "class (a row each)"]
    data = {"p": np.round(points, 4).tolist(), "y": np.asarray(labels).tolist(),
            "t": thumb_of.tolist(), "names": list(class_names),
            "colours": [_hex(c) for c in class_colours(len(class_names))], "axes": list(axis_names),
            "code_axes": code_axes, "cols": cols, "th": int(thumbs.shape[1]), "tw": int(thumbs.shape[2])}
    if heads is not None:
        data.update(h=np.asarray(heads).tolist(), head_colours=[_hex(c) for c in head_colours(n_heads)],
                    head_names=[f"head {k + 1}" for k in range(n_heads)])
    showing = (f"Showing a random {len(thumb_index):,} of the {len(points):,} points, each with its image; "
               f'<label><input type="checkbox" id="all"> show all {len(points):,}</label> (the others have no '
               f"image)." if len(thumb_index) < len(points) else f"All {len(points):,} points carry their image.")
    if code_axes >= 2:
        showing += (' Every axis is drawn to the same scale, as distances between codes are measured; <label><input '
                    'type="checkbox" id="fit"> stretch each axis to its own range</label>.')
    if code_axes < 3:
        showing += (f" The code has {code_axes} dimension{'s' * (code_axes > 1)}: the view starts face-on, and "
                    f"turning it only shows the same flat plane" + (" (up and down: one row per class, the spread "
                    "within a row only separates the dots)." if code_axes == 1 else "."))
    if heads is not None:
        showing += (' <label><input type="checkbox" id="byhead"> colour by encoder head</label> (the head whose '
                    'proposal the decoder drew nearest the image).')
    page = (_PAGE.replace("%TITLE%", html.escape(title)).replace("%DATA%", _script_json(data))
            .replace("%SPRITE%", sprite).replace("%SHOWING%", showing))
    with open(out, "w") as fh:
        fh.write(page)
    return os.path.basename(out)


_PAGE = r"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>%TITLE%</title>
<style>
body{font-family:sans-serif;margin:0;background:#fafafa;color:#222}
header{padding:8px 14px}h1{font-size:18px;margin:0 0 4px}
#help{font-size:13px;color:#555}#wrap{display:flex}
canvas{background:#fff;border:1px solid #ccc;cursor:grab;margin-left:14px}
#legend{font-size:14px;padding:0 14px}#legend div{cursor:pointer;margin:3px 0;user-select:none}
#legend span{display:inline-block;width:12px;height:12px;border-radius:6px;margin-right:6px}
#legend .off{opacity:.3}#tip{position:absolute;display:none;background:#fff;border:1px solid #888;
padding:6px;font-size:13px;pointer-events:none;box-shadow:2px 2px 6px #0003}
#tip canvas{border:0;margin:4px 0 0;display:block;cursor:default}
</style></head><body>
<header><h1>%TITLE%</h1><div id="help">Drag to rotate, wheel to zoom, hover a point for its class and image,
click to pin it. %SHOWING%
Click a class (or a head) in the legend to hide or show it.</div></header>
<div id="wrap"><canvas id="c" width="900" height="700"></canvas><div id="legend"><b>class</b></div></div>
<div id="tip"></div>
<img id="sprite" style="display:none" src="data:image/png;base64,%SPRITE%">
<script>
const D = %DATA%;
const cv = document.getElementById("c"), ctx = cv.getContext("2d"), tip = document.getElementById("tip");
const sprite = document.getElementById("sprite"), N = D.p.length, dims = D.axes.length;
// the 3-D slot of each coordinate: a 2-D code's latent 2 goes up the screen (slot 2), seen face-on at yaw 0
const slot = [[0], [0, 2], [0, 1, 2]][dims - 1], axes = [...Array(dims).keys()];
// centre on the median and scale so 98% of the points fall inside the unit cube: every code axis by the one
// scale of the widest (distances as the 10-NN measures them), or each by its own when "fit" is ticked
const centre = axes.map(a => { const v = D.p.map(p => p[a]).sort((x, y) => x - y); return v[N >> 1]; });
const spread = axes.map(a => { const v = D.p.map(p => Math.abs(p[a] - centre[a])).sort((x, y) => x - y);
  return v[Math.floor(0.98 * (N - 1))]; });
const common = Math.max(...spread.slice(0, D.code_axes)) || 1;  // an axis of no spread must not set the scale
let P = [];
function place(fitEach) {  // a 1-D code's class rows: their own scale
  const s = axes.map(a => fitEach || a >= D.code_axes ? spread[a] || 1 : common);
  P = D.p.map(p => { const q = [0, 0, 0]; axes.forEach(a => { q[slot[a]] = (p[a] - centre[a]) / s[a]; });
    return q; });
}
place(false);
let yaw = dims < 3 ? 0 : 0.6, pitch = dims < 3 ? 0 : 0.35, zoom = 1, showAll = false, pinned = -1, hover = -1;
const hidden = new Set();
function project(p) {
  const cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
  const x = cy * p[0] + sy * p[1], y0 = -sy * p[0] + cy * p[1];
  const y = cp * p[2] - sp * y0, z = sp * p[2] + cp * y0;       // z: depth, larger = nearer
  const s = zoom * 250 / (1 - 0.15 * z);                         // mild perspective
  return [cv.width / 2 + s * x, cv.height / 2 - s * y, z];
}
let screen = [];
let byHead = false;
const hiddenHeads = new Set();
function visible(i) { return (showAll || D.t[i] >= 0) && !hidden.has(D.y[i]) && !(D.h && hiddenHeads.has(D.h[i])); }
function colour(i) { return byHead ? D.head_colours[D.h[i]] : D.colours[D.y[i]]; }
function draw() {
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.strokeStyle = "#999"; ctx.fillStyle = "#333"; ctx.font = "13px sans-serif";
  for (let a = 0; a < dims; a++) {                                 // axes through the median code
    const e = [0, 0, 0], f = [0, 0, 0]; e[slot[a]] = -1.2; f[slot[a]] = 1.2;
    const A = project(e), B = project(f);
    ctx.beginPath(); ctx.moveTo(A[0], A[1]); ctx.lineTo(B[0], B[1]); ctx.stroke();
    ctx.fillText(D.axes[a] + " +", B[0] + 4, B[1]);
  }
  screen = P.map(project);
  const order = [];
  for (let i = 0; i < N; i++) if (visible(i)) order.push(i);
  order.sort((i, j) => screen[i][2] - screen[j][2]);              // far first: near points stay on top
  const r = showAll ? 2 : 3;
  for (const i of order) {
    ctx.fillStyle = colour(i);
    ctx.fillRect(screen[i][0] - r, screen[i][1] - r, 2 * r, 2 * r);
  }
  const sel = pinned >= 0 ? pinned : hover;
  if (sel >= 0) { ctx.strokeStyle = "#000"; ctx.lineWidth = 2;
    ctx.strokeRect(screen[sel][0] - 6, screen[sel][1] - 6, 12, 12); ctx.lineWidth = 1; }
}
function nearest(mx, my) {
  let best = -1, bd = 64;                                          // within 8 px
  for (let i = 0; i < N; i++) if (visible(i)) {
    const dx = screen[i][0] - mx, dy = screen[i][1] - my, d = dx * dx + dy * dy;
    if (d < bd || (d === bd && screen[i][2] > screen[best][2])) { bd = d; best = i; }
  }
  return best;
}
function showTip(i, px, py) {
  if (i < 0) { tip.style.display = "none"; return; }
  const p = D.p[i];
  tip.innerHTML = "<b>" + D.names[D.y[i]] + "</b> (test image " + i + (D.h ? ", " + D.head_names[D.h[i]] : "") +
    ")<br>" +
    D.axes.slice(0, D.code_axes).map((a, k) => a + ": " + p[k].toFixed(3)).join("<br>");
  if (D.t[i] >= 0) {
    const c = document.createElement("canvas"), s = Math.max(1, Math.round(96 / D.tw));
    c.width = D.tw * s; c.height = D.th * s;
    const g = c.getContext("2d"); g.imageSmoothingEnabled = false;
    g.drawImage(sprite, (D.t[i] % D.cols) * D.tw, Math.floor(D.t[i] / D.cols) * D.th, D.tw, D.th,
                0, 0, c.width, c.height);
    tip.appendChild(c);
  } else tip.innerHTML += "<br><i>no image embedded for this point</i>";
  tip.style.left = (px + 14) + "px"; tip.style.top = (py + 14) + "px"; tip.style.display = "block";
}
let drag = null, moved = false;
cv.addEventListener("mousedown", e => { drag = [e.clientX, e.clientY]; moved = false; cv.style.cursor = "grabbing"; });
window.addEventListener("mouseup", e => {
  if (drag && !moved) { const rc = cv.getBoundingClientRect();
    pinned = nearest(e.clientX - rc.left, e.clientY - rc.top); showTip(pinned, e.pageX, e.pageY); draw(); }
  drag = null; cv.style.cursor = "grab"; });
cv.addEventListener("mousemove", e => {
  const rc = cv.getBoundingClientRect();
  if (drag) {
    const dx = e.clientX - drag[0], dy = e.clientY - drag[1];
    if (Math.abs(dx) + Math.abs(dy) > 2) moved = true;
    yaw += dx * 0.01; pitch = Math.max(-1.55, Math.min(1.55, pitch + dy * 0.01));
    drag = [e.clientX, e.clientY]; draw(); return;
  }
  if (pinned >= 0) return;
  hover = nearest(e.clientX - rc.left, e.clientY - rc.top); showTip(hover, e.pageX, e.pageY); draw();
});
cv.addEventListener("mouseleave", () => { if (pinned < 0) { hover = -1; tip.style.display = "none"; draw(); } });
cv.addEventListener("wheel", e => { e.preventDefault(); zoom *= Math.exp(-e.deltaY * 0.001); draw(); },
                    {passive: false});
document.getElementById("all")?.addEventListener("change", e => { showAll = e.target.checked; draw(); });
document.getElementById("fit")?.addEventListener("change", e => { place(e.target.checked); draw(); });
document.getElementById("byhead")?.addEventListener("change", e => { byHead = e.target.checked; draw(); });
const legend = document.getElementById("legend");
function entries(names, colours, off) {  // one clickable line per name: hides or shows its points
  names.forEach((n, k) => {
    const d = document.createElement("div");
    d.innerHTML = '<span style="background:' + colours[k] + '"></span>' + n;
    d.onclick = () => { off.has(k) ? off.delete(k) : off.add(k); d.classList.toggle("off"); draw(); };
    legend.appendChild(d);
  });
}
entries(D.names, D.colours, hidden);
if (D.h) {
  const b = document.createElement("div");
  b.innerHTML = "<br><b>encoder head</b>";
  b.style.cursor = "default";  // a caption, not an entry to click
  legend.appendChild(b);
  entries(D.head_names, D.head_colours, hiddenHeads);
}
draw();
// #pin=I in the address pins point I at load (used by tools/screenshot.py to check the tooltip renders)
const pin = /^#pin=(\d+)$/.exec(location.hash);
if (pin && +pin[1] < N) {
  pinned = +pin[1];
  if (!visible(pinned)) { showAll = true; document.getElementById("all").checked = true; }
  const rc = cv.getBoundingClientRect();
  const show = () => { showTip(pinned, rc.left + window.scrollX + screen[pinned][0],
                               rc.top + window.scrollY + screen[pinned][1]); draw(); };
  show();
  if (!sprite.complete) sprite.addEventListener("load", show); }
</script></body></html>
"""


def latent_captions(latent_dim: int) -> dict[str, tuple[str, str]]:
    """(heading, caption) of latent_3d.png and latent_pairs.png, saying what figures.latent_views and
    figures.latent_pairs draw for a code of this many dimensions."""
    if latent_dim == 1:
        return {"latent_3d": ("latent code by class", "The code has 1 dimension, so there is no 3-D view: the "
                              "distribution of the test images' code for each class (black: median)."),
                "latent_pairs": ("latent code, every test image", "Each test image's code as a dot, one row "
                                 "per class; the spread up and down within a row only separates the dots.")}
    if latent_dim == 2:
        return {"latent_3d": ("latent coordinates by class", "The code has 2 dimensions, so there is no 3-D "
                              "view: the distribution of each coordinate of the test images' codes for each "
                              "class (black: median)."),
                "latent_pairs": ("latent plane", "The test images' codes in their 2-D plane, coloured by class, "
                                 "both axes to one scale.")}
    if latent_dim == 3:
        return {"latent_3d": ("latent 3d", "The test images' codes in 3-D, coloured by class, from four angles."),
                "latent_pairs": ("latent pairs", "The same codes as three 2-D projections (latent 1 vs 2, "
                                 "1 vs 3, 2 vs 3). Every axis is drawn to one scale, so that distances on the page "
                                 "are the distances between codes that the 10-NN accuracy and the neighbours "
                                 "use.")}
    return {"latent_3d": ("latent 3d", f"The test images' {latent_dim}-D codes projected to 3-D with PCA "
                          "(their first three principal components, fit on the training codes), coloured by class, "
                          "from four angles."),
            "latent_pairs": ("latent pairs", "The same projected codes as three 2-D projections (PC 1 vs 2, "
                             "1 vs 3, 2 vs 3), every axis to one scale.")}


def untrained(metrics: dict) -> bool:
    """Whether the autoencoder's clean test MSE is no better than the mean training image's, the output of a
    network that ignores its input (a run evaluated after a few steps: its figures are grey)."""
    ae, baseline = metrics.get("models", {}).get("autoencoder", {}).get("test_mse"), metrics.get("mean_image_test_mse")
    return ae is not None and baseline is not None and ae >= baseline


def knn_key(model_metrics: dict) -> str | None:
    """The class-accuracy entry of a model's metrics: knn10_accuracy, or knnK_ with fewer training images."""
    return next((k for k in model_metrics if k.startswith("knn")), None)


def knn_neighbours(key: str) -> str:
    return key[3:].split("_")[0]


def chance_text(chance: float, n_classes: int) -> str:
    """What a class accuracy is to be read against: a guess that ignores the code (10 % on CIFAR-10)."""
    if n_classes == 1:
        return "one class, so every vote is right and the class accuracy says nothing"
    return f"always guessing the commonest training class is right for {100 * chance:.1f} % of the test images"


def heads_text(wins) -> str:
    """The share of the test images whose code each encoder head gave (--encoder-heads), in one line, and which
    heads won under a quarter of an even share: such a head learns from few images (training teaches a head only
    those it wins) and may never win more, while it costs a decoder pass per image like the others. Of eight heads
    on the quick model, one won 0.6 % (docs/quality.md, thirty-first session); of four, the fewest 17.6 %."""
    shares = [f"{w:.1%}".replace("%", " %") for w in wins]
    text = f"head 1 gave the codes of {shares[0]} of the test images, " + ", ".join(
        f"head {i + 2} {s}" for i, s in enumerate(shares[1:]))
    starved = [i + 1 for i, w in enumerate(wins) if w < 0.25 / len(wins)]
    if not starved:
        return text
    which = f"head {starved[0]}" if len(starved) == 1 else \
        f"heads {', '.join(map(str, starved[:-1]))} and {starved[-1]}"
    return (f"{text}; {which} gave almost none: a head learns only from the images whose code it gives, so one that "
            f"falls behind may never catch up, and it still costs a decoder pass per image (fewer --encoder-heads "
            f"cost less)")


def best_codes_text(best: dict, encoder_mse: float) -> str:
    """One line on --best-codes' result, for the terminal and the page."""
    return (f"the best codes found (the encoder's or the nearest of {best['candidates']:,} decoded training codes, "
            f"then {best['steps']} Adam steps per image; {best['seconds']:.0f} s): test MSE {best['test_mse']:.4f}, "
            f"{100 * (best['test_mse'] / encoder_mse - 1):+.1f} % against the encoder's codes; the median test "
            f"image's error is {100 * best['median_gain']:.1f} % lower, and {100 * best['improved']:.0f} % of them "
            f"gain more than 1 %")


def noise_curve_text(curve: dict, kind: str, ae: str, pca: str) -> str:
    """One line on evaluate.py's noise curve (a denoising run), for the terminal."""
    def values(name):
        return ", ".join(f"{v:.4f}" for v in curve[name])
    return (f"noise curve, test MSE to the clean images of inputs corrupted ({kind}) at strength "
            f"{', '.join(f'{s:g}' for s in curve['strengths'])}: {ae} {values(ae)}; {pca} {values(pca)}; the "
            f"corrupted input itself {values('input')}")


def index(out: str, cfg, metrics: dict, table: str, files: dict[str, str]) -> str:
    """WORKDIR/eval/index.html: the run's settings, the metrics table and every figure, with captions."""
    esc = html.escape
    done = metrics.get("epochs_done")  # from the run's metrics.jsonl: a run stopped early, or --step
    noise = (f"{cfg.corruption} corruption, strength {strength_text(cfg.noise, cfg.noise_levels)} ("
             + ("drawn uniformly for each example; " if cfg.noise_levels == "uniform" else "")
             + "denoising autoencoder)" if cfg.noise > 0 else "none (plain autoencoder)")
    settings = [("latent dimension", cfg.latent_dim), ("loss", cfg.loss.upper()), ("input noise", noise),
                ("model", f"width {cfg.width}, {cfg.stages} stages, {cfg.blocks} res-block(s)/stage, "
                          f"MLP {cfg.mlp_layers} x {cfg.hidden}, norm {cfg.norm}, {cfg.activation}, {cfg.upsample}, "
                          f"{cfg.head} head"
                          + (f"; the encoder proposes {cfg.encoder_heads} codes per image, and the one the decoder "
                             f"draws nearest the image is its code ({heads_text(metrics['encoder_heads']['wins'])})"
                             if "encoder_heads" in metrics else "")),
                ("training", f"{cfg.epochs} epochs, batch {cfg.batch_size}, {cfg.optimizer} lr "
                             f"{cfg.learning_rate:g}, seed {cfg.seed}; checkpoint step {metrics['step']}"
                             + (f", epoch {math.floor(done * 100) / 100:g} of {cfg.epochs}"
                                if done is not None and done < cfg.epochs else "")),
                ("data", f"{cfg.data} ({metrics['n_train']:,} train / {metrics['n_test']:,} test images)")]
    s = metrics["seconds"]
    models = metrics.get("models", {})
    pca_k = next((int(n[4:]) for n in models if n.startswith("PCA-")), cfg.latent_dim)  # fewer with few images
    knn = knn_key(models.get("autoencoder", {}))
    knn_k = knn_neighbours(knn) if knn else "k"
    shape = metrics.get("image_shape")  # not in an evaluation written before the eighteenth session
    win = ssim_window(*shape[:2]) if shape else 11
    small = f"; the standard 11x11 does not fit {shape[0]}x{shape[1]} images" if win < 11 else ""
    as_trained = ("as in training" if cfg.noise_levels == "fixed" else
                  f"at the top of the training's range (strength {cfg.noise:g})")
    captions = {
        **latent_captions(cfg.latent_dim),
        "latent_heads": ("latent space by encoder head",
                         f"The same codes, coloured by the encoder head whose proposal the decoder drew nearest "
                         f"each image (of {cfg.encoder_heads}), and below, for each class, the share of its test "
                         f"images each head gave the code of. Heads that hold regions of the space apart show as "
                         f"patches of one colour; heads that split the images by kind show as unequal bars."),
        "interpolation": "Each row: test image A, decodings of points on the straight line from A's code to "
                         "B's code (t = 0 is A's reconstruction, t = 1 is B's), test image B.",
        "reconstructions": "Test images (top row) and their reconstructions by the autoencoder "
                           + ("(then the decoder's drawing of each image's best code, --best-codes) "
                              if metrics.get("best_codes") else "") + "and by PCA "
                           + (f"(second row: the same images corrupted {as_trained}; last two rows: both "
                              "reconstructions of those) " if cfg.noise > 0 else "")
                           + ("with as many components as the code has dimensions." if pca_k == cfg.latent_dim else
                              f"with {pca_k} components, all that {metrics['n_train']:,} training images give "
                              f"(the code has {cfg.latent_dim})."),
        "traversal": "Each row sweeps one latent coordinate in even steps across its observed range, from the "
                     "1st (t=0) to the 99th percentile (t=1) of the test codes, with the other coordinates at their "
                     "median; the row label gives the two ends.",
        "decoder_map": ("decoder map", "The decoder's output over a regular grid of a plane of the latent space "
                        "(for a code of more than 2 dimensions, the plane of the training codes' two main directions "
                        "through their mean: the PC 1 and PC 2 of the latent plots of a code of more than 3; for a "
                        "3-D code the title gives them in latent coordinates; the column headers are the first "
                        "coordinate). Where the grid leaves "
                        "the cloud of codes (compare the latent plots), the decoder draws what no image was "
                        "encoded to."),
        "class_means": ("class means", "Per class: the decoder's image of the mean of the class's test codes (a "
                        "point in the latent space), the mean of the class's test images (pixels averaged), and "
                        "the test image whose code is nearest the mean code. Where the decoded mean is sharper "
                        "than the pixel mean, the code space averages something other than pixels."),
        "neighbours": "Each row: a test image and its nearest training images by distance between codes.",
        "noise_curve": ("reconstruction error against input corruption",
                        f"Test MSE, against the clean images, of the reconstructions of the test images corrupted "
                        f"({cfg.corruption}, evaluate.py's fixed seed) at each strength, by the autoencoder and by "
                        f"PCA; and of the corrupted images themselves: where a reconstruction lies below that line, "
                        f"it is nearer the clean image than its input was (at weak noise a {cfg.latent_dim}-number "
                        f"code loses more detail than the noise does). The shaded band or line: the strengths the "
                        f"model was trained on; past them it meets noise it never saw."),
        "loss_curve": "Training loss and test MSE per epoch; the dashed line is the PCA baseline, the dotted line "
                      "the mean training image's test MSE (what a model that learned nothing reaches).",
    }
    body = [f"<h1>Evaluation of {esc(metrics['workdir'])} at step {metrics['step']}</h1>",
            "<h2>Run</h2><table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>"
                                            for k, v in settings) + "</table>",
            "<h2>Metrics on the test split</h2>",
            *([f"<p><b>The autoencoder reconstructs no better than the mean training image (test MSE "
               f"{metrics['models']['autoencoder']['test_mse']:.4f} against "
               f"{metrics['mean_image_test_mse']:.4f}): it has not learned yet at step {metrics['step']}, so the "
               f"figures below show little. Train it longer.</b></p>"]
              if untrained(metrics) else []),
            f"<pre>{esc(table)}</pre>",
            "<p>MSE, MAE: per pixel and channel, pixels in [0, 1]. PSNR: 10 log10(1 / MSE) over the whole split. "
            f"SSIM: {win}x{win} Gaussian window (sigma {1.5 * win / 11:.3g}{small}), mean over positions and "
            "channels. k-NN: class of each "
            f"test code by a vote of its {knn_k} nearest training codes"
            + (f" ({chance_text(metrics['chance_accuracy'], len(metrics['class_names']))})"
               if "chance_accuracy" in metrics else "") + ". PCA is fit on the training images."
            + (f" Noisy input: the test images corrupted {as_trained} (fixed seed), compared with the clean "
               "image." if cfg.noise > 0 else "") + "</p>",
            *([f"<p>With --best-codes, {esc(best_codes_text(metrics['best_codes'], models['autoencoder']['test_mse']))}"
               ". This is encoding by search: it uses only the image and the decoder, as the encoder does. Where it "
               "finds a better code, that part of the error is the encoder's (it cannot compute the decoder's best "
               "code: an amortisation gap; a local search finds a lower bound of it), not the decoder's."
               + (" The search starts from clean test images, which this denoising encoder was not trained on, so "
                  "the gap also holds what training on corrupted inputs costs on clean ones."
                  if cfg.noise > 0 and cfg.noise_levels == "fixed" else "")
               + " The best codes and each test image's MSE from them and from the encoder's codes are in "
               "latents.npz (best_codes, best_mse, encoder_mse); the reconstructions figure has a row of them; the "
               "latent plots show the encoder's codes.</p>"] if metrics.get("best_codes") else []),
            f"<p>Encoding the {metrics['n_test']:,} test images took {s['encode_test']:.2f} s; the whole "
            f"evaluation {s['total']:.0f} s.</p>",
            f"<p><b><a href=\"{files['latent_3d_html']}\">Open the "
            f"{'rotatable 3-D' if cfg.latent_dim >= 3 else 'interactive'} view</a></b> (drag, zoom, "
            f"hover a point to see its image). Codes: <a href=\"latents.csv\">latents.csv</a>, "
            f"<a href=\"latents.npz\">latents.npz</a>; numbers: <a href=\"metrics.json\">metrics.json</a>.</p>"]
    for name, caption in captions.items():
        if name in files:
            heading, caption = caption if isinstance(caption, tuple) else (name.replace("_", " "), caption)
            body.append(f"<h2>{esc(heading)}</h2><p>{esc(caption)}</p>"
                        f"<img src=\"{esc(files[name])}\" alt=\"{esc(name)}\">")
    page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>jaxae evaluation</title><style>"
            "body{font-family:sans-serif;max-width:1500px;margin:20px}img{max-width:100%;border:1px solid #ddd}"
            "th{text-align:left;padding-right:14px}pre{background:#f4f4f4;padding:8px;display:inline-block}"
            "</style></head><body>" + "\n".join(body) + "</body></html>\n")
    with open(out, "w") as fh:
        fh.write(page)
    return os.path.basename(out)
