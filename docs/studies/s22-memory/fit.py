"""XLA's temporaries of one CPU training step (memory_analysis) against train.cpu_step_temporaries, for the quick
preset, the default and variants of each (docs/performance.md, twenty-second session). One JSON line per step.

    PYTHONPATH=. python docs/studies/s22-memory/fit.py
"""
import json
import jax, numpy as np
from jaxae import train
from jaxae.config import Config, PRESETS

Q, D = PRESETS["quick"], PRESETS["long"]
CASES = [("quick", {}), ("quick conv", {"head": "conv"}), ("quick gelu", {"activation": "gelu"}),
         ("quick conv gelu", {"head": "conv", "activation": "gelu"}), ("quick w24 conv", {"width": 24, "head": "conv"}),
         ("quick w32", {"width": 32}), ("quick b1", {"blocks": 1}), ("quick w32 b1", {"width": 32, "blocks": 1}),
         ("quick b2", {"blocks": 2}), ("quick B256", {"batch_size": 256}), ("quick B64", {"batch_size": 64}),
         ("default", {}), ("default upsample", {"head": "upsample"}), ("default relu", {"activation": "relu"}),
         ("default w32", {"width": 32}), ("default b0", {"blocks": 0}), ("default B256", {"batch_size": 256}),
         ("default stages4", {"stages": 4})]
for name, over in CASES:
    cfg = Config(**{**(Q if name.startswith("quick") else D), **over})
    state = train.create_train_state(cfg, (32, 32, 3), 10, 10)
    batch = np.zeros((cfg.batch_size, 32, 32, 3), np.uint8)
    step = jax.jit(train.train_step, static_argnames="cfg").lower(state, batch, jax.random.PRNGKey(0), cfg=cfg)
    temp = step.compile().memory_analysis().temp_size_in_bytes
    est = train.cpu_step_temporaries(cfg)
    print(json.dumps({"name": name, "xla_mb": round(temp / 1e6, 1), "estimate_mb": round(est / 1e6, 1),
                      "one_arena": train.large_cpu_steps(cfg), "over_64_mib": temp > 64 * 2**20}), flush=True)
