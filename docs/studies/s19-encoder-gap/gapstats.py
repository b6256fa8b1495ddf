"""How the --best-codes gain spreads over the test images, how far the codes move, and whether the best codes are
more class-like (docs/quality.md, nineteenth session). Reads an evaluate.py --best-codes output folder.

    PYTHONPATH=. python docs/studies/s19-encoder-gap/gapstats.py /tmp/s16/review-runs/q30 /tmp/s19/q30best
"""
import sys

import jax
import numpy as np

from jaxae import evaluate as ev
from jaxae.metrics import pad_to_multiple
from jaxae.models import model_from_config

workdir, out = sys.argv[1], sys.argv[2]
cfg, state, ds = ev.restore(workdir)
ae = ev.autoencoder_codec(model_from_config(cfg, ds.image_shape), state.params)
saved = np.load(f"{out}/latents.npz")
enc, best, y = saved["codes"], saved["best_codes"], saved["labels"]
x, mask = pad_to_multiple(ds.test_images, 500)
x = jax.device_put(x)


def per_image_mse(codes):
    padded = np.zeros((len(x), codes.shape[1]), np.float32)
    padded[:len(codes)] = codes
    fn = ev._Errors(ae.roundtrip, ae.decode, "gaussian", 0.0, from_codes=True)
    return np.asarray(ev._map_batches(fn, (ae.params, jax.numpy.asarray(padded)), x, 500)[0])[mask > 0]


a, b = per_image_mse(enc), per_image_mse(best)
gain = 1 - b / a
print(f"test MSE {a.mean():.5f} -> {b.mean():.5f}; gain per image: median {np.median(gain):.1%}, "
      f"> 1 %: {np.mean(gain > 0.01):.1%}, > 5 %: {np.mean(gain > 0.05):.1%}, any: {np.mean(gain > 0):.1%}")
move = np.linalg.norm((best - enc) / enc.std(0), axis=1)
print(f"move in units of the codes' spread per axis: median {np.median(move):.2f}, > 0.5: {np.mean(move > 0.5):.1%}, "
      f"> 1: {np.mean(move > 1):.1%}")


def loo_knn(z, k=10):  # 10-NN among the test codes themselves, each image left out of its own vote
    z = z.astype(np.float64)
    sq = (z * z).sum(1)
    d = sq[:, None] + sq[None, :] - 2 * z @ z.T
    np.fill_diagonal(d, np.inf)
    nb = np.argpartition(d, k, axis=1)[:, :k]
    votes = np.zeros((len(y), y.max() + 1))
    np.add.at(votes, (np.arange(len(y))[:, None], y[nb]), 1)
    return np.mean(votes.argmax(1) == y)


print(f"10-NN among the test codes (leave one out): encoder's {loo_knn(enc):.1%}, best {loo_knn(best):.1%}")
