"""The default model's CPU training step (train._PassSteps, batch B) with the chosen code drawn by replaying the
rows the heads' pass recorded, or drawn again (models._REPLAY), interleaved in one process: K steps of each in turn
per round, R rounds, the order reversed every other round. Freed host memory kept and programs inline, as in
train.py (docs/performance.md, thirty-seventh session).

    PYTHONPATH=. python docs/studies/s37-replay/step.py              # B=256 K=20 R=6
    MODEL='{"head": "conv"}' PYTHONPATH=. python docs/studies/s37-replay/step.py     # the default model, changed
"""
import json
import os

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=False)
hostmem.run_cpu_programs_inline()

import numpy as np  # noqa: E402

from docs.studies.steps import flag_runs, time_interleaved  # noqa: E402

B, K, R = (int(os.environ.get(k, d)) for k, d in (("B", 256), ("K", 20), ("R", 6)))
runs = flag_runs("_REPLAY", (False, True), "default", B, **json.loads(os.environ.get("MODEL", "{}")))
print(f"the loss of the second step: {runs[False][4]:.7f} drawn again, {runs[True][4]:.7f} replayed")
times = time_interleaved(runs, K, R)
for r, ts in times.items():
    model = f"default model {os.environ['MODEL']}" if os.environ.get("MODEL") else "default model"
    print(f"{model}, batch {B}, chosen code {'replayed' if r else 'drawn again'}: {K} steps a timing, best "
          f"{B / min(ts):,.0f} img/s, median {B / np.median(ts):,.0f}", flush=True)
