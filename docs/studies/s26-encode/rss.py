"""Peak RSS of the default model's CPU step (train._PassSteps, batch B) after N steps, with this session's changes on
or off (VARIANT as in ab.py: none, im2col, bias, im2col+bias), one variant per process, freed host memory kept and
programs inline as in train.py. Prints VmHWM and VmRSS.

    VARIANT=none PYTHONPATH=. python docs/studies/s26-encode/rss.py; VARIANT=im2col+bias PYTHONPATH=. python ...
"""
import os

from jaxae import hostmem

hostmem.keep_freed_memory(large_steps=True)
hostmem.run_cpu_programs_inline()

import jax  # noqa: E402

from docs.studies.steps import step_inputs  # noqa: E402
from jaxae import models  # noqa: E402
from jaxae import train as T  # noqa: E402

B, N, v = int(os.environ.get("B", 1024)), int(os.environ.get("N", 6)), os.environ.get("VARIANT", "im2col+bias")
on = set(v.split("+")) - {"none"}
models._IM2COL, models._BIAS_LAST = "im2col" in on, "bias" in on
spe = 4
cfg, state, images, perm, _ = step_inputs("default", B, spe)
step = T.make_p_train_steps(cfg, 1, spe)
with hostmem.release_after_compiles():
    state, m = step(state, images, perm)
for _ in range(N):
    state, m = step(state, images, perm)
jax.block_until_ready(m)
status = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmHWM", "VmRSS")))
print(f"{v}: batch {B}, {N + 1} steps: " + ", ".join(f"{k} {int(s.split()[0]):,} kB" for k, s in status.items()))
