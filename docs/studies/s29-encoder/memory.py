"""XLA's temporaries of one CPU training step (memory_analysis) against train.cpu_step_temporaries, by
--encoder-heads, for the quick preset and the default model (as docs/studies/s22-memory/fit.py).

    PYTHONPATH=. python docs/studies/s29-encoder/memory.py
"""
import json

import jax
import numpy as np

from jaxae import train
from jaxae.config import Config, PRESETS

for preset, heads in [("quick", 1), ("quick", 2), ("quick", 4), ("default", 1), ("default", 2)]:
    cfg = Config(**{**PRESETS[preset], "encoder_heads": heads})
    state = train.create_train_state(cfg, (32, 32, 3), 10, 10)
    batch = np.zeros((cfg.batch_size, 32, 32, 3), np.uint8)
    step = jax.jit(train.train_step, static_argnames="cfg").lower(state, batch, jax.random.PRNGKey(0), cfg=cfg)
    temp = step.compile().memory_analysis().temp_size_in_bytes
    print(json.dumps({"preset": preset, "encoder_heads": heads, "xla_mb": round(temp / 1e6, 1),
                      "estimate_mb": round(train.cpu_step_temporaries(cfg) / 1e6, 1),
                      "one_arena": train.large_cpu_steps(cfg)}), flush=True)
