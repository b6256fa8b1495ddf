"""How a run with encoder heads uses them: the share of test images each head wins, and the test MSE of each head
alone (its codes for every image) beside that of the choice. A choice.py run needs encoder_heads in its config.json.

    PYTHONPATH=. python docs/studies/s29-encoder/heads.py runs/s29/choice2
"""
import sys

import jax
import numpy as np

from jaxae import evaluate as ev
from jaxae.models import model_from_config

cfg, state, ds = ev.restore(sys.argv[1])
model = model_from_config(cfg, ds.image_shape)
K = cfg.encoder_heads


@jax.jit
def head_errors(p, x):
    """[B, K] squared error per image of each head's decoding."""
    z = model.apply({"params": p}, x, method="proposals").reshape(x.shape[0] * K, -1)
    y = model.apply({"params": p}, z, method="decode").reshape(x.shape[0], K, *x.shape[1:])
    return ((y - x[:, None]) ** 2).mean(axis=(2, 3, 4))


err = np.concatenate([np.asarray(head_errors(state.params, ds.test_images[i:i + 500] / np.float32(255)))
                      for i in range(0, len(ds.test_images), 500)])
win = err.argmin(1)
print(f"{K} heads, {len(err)} test images")
for k in range(K):
    print(f"head {k}: wins {np.mean(win == k):.1%}; its codes alone: test MSE {err[:, k].mean():.5f}")
print(f"the choice: test MSE {err.min(1).mean():.5f}; the choice's gain over the best single head: "
      f"{err.min(1).mean() / err.mean(0).min() - 1:+.1%}")
