"""Does an encoder with more capacity than its decoder, trained with it from the start, lower the test MSE?

The nineteenth session measured the quick model's encoder gap (the decoder draws the test images 3.9 % better from
searched codes than from the encoder's) and found that neither more training of the encoder nor a bigger fresh
encoder fitted to a frozen decoder closes it. Left on its list: a bigger encoder trained with the decoder from the
start. This runs train.py and evaluate.py with the encoder's fields overridden (the decoder keeps the run's):

    ENC='{"width": 32}' PYTHONPATH=. python docs/studies/s29-encoder/widen.py --preset quick \
        --data data/cifar10-jpeg.tar.gz --workdir runs/s29/encw32

ENC is a JSON object of jaxae.models._Arch fields (width, blocks, hidden, mlp_layers, ...). The override is not in
the run's config.json, so only this script evaluates such a run correctly (it does so at the end, in WORKDIR/eval).
"""
import json
import os
import sys

from jaxae import models

ENC = json.loads(os.environ.get("ENC", "{}"))


def _setup_wider(self):  # models.Autoencoder.setup, with ENC's fields for the encoder
    self.encoder = models.Encoder(latent_dim=self.latent_dim, **{**self.arch(), **ENC})
    self.decoder = models.Decoder(image_shape=tuple(self.image_shape), upsample=self.upsample, head=self.head,
                                  **self.arch())


models.Autoencoder.setup = _setup_wider

if __name__ == "__main__":
    import evaluate
    import train
    from jaxae.cli import run_main

    argv = sys.argv[1:]
    workdir = argv[argv.index("--workdir") + 1]
    print(f"encoder overrides: {ENC}", flush=True)
    run_main(lambda _: train.main(argv) or evaluate.main(["--workdir", workdir]))
