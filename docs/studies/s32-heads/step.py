"""The quick preset's CPU training step (train._PassSteps, batch B) with the heads' drawings compared as images or as
the sub-pixel conv's output (models._CHOOSE_IN_CELLS), interleaved in one process: K steps of each in turn per
round, R rounds, the order reversed every other round. Freed host memory kept and programs inline, as in train.py
(docs/performance.md, thirty-second session).

    PYTHONPATH=. python docs/studies/s32-heads/step.py              # B=128 K=20 R=6
"""
import os

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=False)
hostmem.run_cpu_programs_inline()

import numpy as np  # noqa: E402

from docs.studies.steps import flag_runs, time_interleaved  # noqa: E402

B, K, R = (int(os.environ.get(k, d)) for k, d in (("B", 128), ("K", 20), ("R", 6)))
runs = flag_runs("_CHOOSE_IN_CELLS", (False, True), "quick", B)
print(f"the loss of the second step: {runs[False][4]:.7f} as images, {runs[True][4]:.7f} as cells")
times = time_interleaved(runs, K, R)
for c, ts in times.items():
    print(f"quick batch {B}, compared as {'cells' if c else 'images'}: {K} steps a timing, best {B / min(ts):,.0f} "
          f"img/s, median {B / np.median(ts):,.0f}", flush=True)
