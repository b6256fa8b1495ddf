"""Why does the L1 denoiser reconstruct noisy inputs with a lower MSE than clean ones? For each trained run given,
its reconstructions of the 10k test images, clean and corrupted (evaluate.corrupt_fixed, the noise evaluate.py
uses), against the clean images:
- MSE and MAE (MAE is what an L1 run minimised, MSE what the table reports);
- contrast: each reconstruction's pixel standard deviation about its own mean, averaged (the images': `image`);
- `best scale`: the factor s that, applied to every reconstruction's deviations from its own mean
  (m + s (r - m)), gives the least MSE over the split, and that MSE. s < 1: the drawings have more contrast than the
  least-squares drawing of the same codes would have; s > 1, less;
- how far the noisy inputs' codes moved from the clean ones' (mean Euclidean distance), and how many images changed
  encoder head.
A model with encoder heads keeps the proposal whose drawing is nearest its input by the run's loss (choose_by); the
last row encodes the clean inputs with the other error (L2 for an L1 run, L1 for an L2 run) to compare the heads by.

    PYTHONPATH=. python docs/studies/s36-l1noise/contrast.py runs/s35/l1n runs/s34/l1 runs/s33/d100n
"""
import sys

from jaxae import hostmem

hostmem.keep_freed_memory()
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxae import evaluate as E  # noqa: E402
from jaxae.metrics import pad_to_multiple  # noqa: E402
from jaxae.models import model_from_config  # noqa: E402

STRENGTHS = (0.0, 0.1, 0.2, 0.4)


def stats(r, x):
    """Per-image sums over the pixels, to be reduced over the split: squared error, absolute error, the
    reconstruction's variance about its mean, the image's, and the covariance of the two deviations."""
    n = x.shape[0]
    r, x = r.reshape(n, -1), x.reshape(n, -1)
    rd, xd = r - r.mean(1, keepdims=True), x - x.mean(1, keepdims=True)
    dm = r.mean(1) - x.mean(1)  # the error of each image's mean
    return (jnp.square(r - x).mean(1), jnp.abs(r - x).mean(1), jnp.square(rd).mean(1), jnp.square(xd).mean(1),
            (rd * xd).mean(1), jnp.square(dm))


def study(workdir):
    cfg, state, ds = E.restore(workdir)
    model = model_from_config(cfg, ds.image_shape)
    x, mask = pad_to_multiple(ds.test_images, E.batch_size_for(len(ds.test_images)))
    x = jax.device_put(x)
    keep = mask > 0
    print(f"{workdir}: loss {cfg.loss}, --noise {cfg.noise:g} ({cfg.noise_levels}), {cfg.encoder_heads} heads")
    print("   sigma     MSE     MAE  contrast (image)  best scale  its MSE  code shift  heads changed")
    clean_codes = clean_heads = None
    other = "l2" if cfg.loss == "l1" else "l1"
    rows = [(f"{s:5.2f}", s, model) for s in STRENGTHS]
    if cfg.encoder_heads > 1:
        rows.append((f" 0, {other}", 0.0, model.clone(choose_by=other)))
    for label, s, m in rows:
        def fn(p, xb, idx, s=s, m=m):
            xin = E.corrupt_fixed(cfg.corruption, s, xb, idx) if s else xb
            z = m.apply({"params": p}, xin, method="encode")
            r = m.apply({"params": p}, z, method="decode")
            head = jnp.argmin(jnp.abs(m.apply({"params": p}, xin, method="proposals") - z[:, None]).sum(-1), axis=1)
            return (z, head, *stats(r, xb))
        out = E._map_batches(fn, state.params, x, E.batch_size_for(x.shape[0]))
        z, heads, se, ae, rv, xv, cov, dm = (np.asarray(v)[keep] for v in out)
        scale = cov.mean() / rv.mean()  # least squares over the split: MSE(s) = dm + s^2 rv - 2 s cov + xv
        best = (dm + scale ** 2 * rv - 2 * scale * cov + xv).mean()
        if clean_codes is None:
            clean_codes, clean_heads = z, heads
        shift = np.linalg.norm(z - clean_codes, axis=1).mean()
        changed = (heads != clean_heads).mean() if cfg.encoder_heads > 1 else float("nan")
        print(f"   {label}  {se.mean():.5f}  {ae.mean():.4f}  {np.sqrt(rv).mean():.4f} ({np.sqrt(xv).mean():.4f})"
              f"      {scale:.3f}   {best:.5f}   {shift:.3f}      {changed:6.1%}")


for w in sys.argv[1:]:
    study(w)
