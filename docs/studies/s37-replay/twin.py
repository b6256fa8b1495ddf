"""The PyTorch twin's step for the default model (bench/torch_twin.py, batch B) with the chosen code drawn by
replaying the rows of the heads' pass, or drawn again (Autoencoder.replay), eager and compiled: R rounds of a
timing of K steps of each (docs/performance.md, thirty-seventh session).

    python docs/studies/s37-replay/twin.py              # B=256 K=20 R=3
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))
from jaxae import hostmem  # noqa: E402

hostmem.keep_freed_memory()  # as bench/throughput.py's torch worker

from bench.torch_twin import time_training  # noqa: E402
from jaxae.config import MODEL  # noqa: E402

B, K, R = (int(os.environ.get(k, d)) for k, d in (("B", 256), ("K", 20), ("R", 3)))
model = {k: MODEL[k] for k in ("width", "blocks", "head", "hidden", "activation", "encoder_heads")}
for compile_ in (False, True):
    for r in range(R):
        for replay in ((False, True) if r % 2 == 0 else (True, False)):
            out = time_training(**model, mlp_layers=3, batch_size=B, steps=K, repeats=3, compile=compile_,
                                replay=replay)
            print(f"twin {'torch.compile' if compile_ else 'eager'}, batch {B}, chosen code "
                  f"{'replayed' if replay else 'drawn again'}: best {out['img_s_best']:,.0f} img/s, median "
                  f"{out['img_s_median']:,.0f}, loss {out['loss']:.5f}", flush=True)
