"""An encoder that proposes K codes, of which the one whose decoding is nearest the image is taken.

The nineteenth session's guess for the encoder's gap (the decoder draws the test images 3.9 % better from searched
codes than from the encoder's): the decoder's 3-D sheet of images folds back near itself, and a continuous encoder
must pick one fold for all the images near a crease. An encoder with K output heads can send an image to K places;
decoding all K and keeping the best is a choice no continuous map has to make. Trained winner-take-all (the loss of
the best head only), as multiple-choice learning (Guzman-Rivera et al. 2012). The code is still 3 numbers; the
encoder is a network and an argmin over K decodings (K decoder passes per image).

    K=2 PYTHONPATH=. python docs/studies/s29-encoder/choice.py --preset quick --data data/cifar10-jpeg.tar.gz \
        --workdir runs/s29/choice2

Plain autoencoders only (the choice is made against the input, which is then the target; L2). The heads are not in
the run's config.json, so only this script evaluates such a run correctly (it does so at the end, in WORKDIR/eval).
"""
import os
import sys

import jax.numpy as jnp

from jaxae import models

K = int(os.environ.get("K", "2"))


def _setup(self):
    self.encoder = models.Encoder(latent_dim=self.latent_dim * K, **self.arch())
    self.decoder = models.Decoder(image_shape=tuple(self.image_shape), upsample=self.upsample, head=self.head,
                                  **self.arch())


def _best(self, x):
    """(codes [B, latent_dim], their decodings): each image's head whose decoding has the least squared error."""
    b = x.shape[0]
    z = self.encoder(x).reshape(b * K, self.latent_dim)
    y = self.decoder(z).reshape(b, K, *x.shape[1:])
    err = jnp.mean((y - x.astype(jnp.float32)[:, None]) ** 2, axis=(2, 3, 4))
    k = jnp.argmin(err, axis=1)
    pick = lambda a: jnp.take_along_axis(a, k.reshape((b, 1) + (1,) * (a.ndim - 2)), axis=1)[:, 0]
    return pick(z.reshape(b, K, self.latent_dim)), pick(y)


models.Autoencoder.setup = _setup
models.Autoencoder.encode = lambda self, x: _best(self, x)[0]
models.Autoencoder.__call__ = lambda self, x: _best(self, x)[1]

if __name__ == "__main__":
    import evaluate
    import train
    from jaxae.cli import run_main

    argv = sys.argv[1:]
    workdir = argv[argv.index("--workdir") + 1]
    print(f"encoder heads: {K}", flush=True)
    run_main(lambda _: train.main(argv) or evaluate.main(["--workdir", workdir]))
