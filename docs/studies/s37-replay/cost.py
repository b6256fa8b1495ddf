"""XLA's FLOPs per image (cost_analysis) and temporaries (memory_analysis) of one CPU training step with the chosen
code's drawing replayed or drawn again (models._REPLAY), the temporaries against train.cpu_step_temporaries, by
--encoder-heads, for the default model's sub-pixel output head and the conv head (as
docs/studies/s29-encoder/memory.py).

    PYTHONPATH=. python docs/studies/s37-replay/cost.py
"""
import json

import jax
import numpy as np

from jaxae import models, train
from jaxae.config import Config, PRESETS

ROWS = [("quick", 1, "upsample"), ("quick", 4, "upsample"), ("quick", 8, "upsample"), ("default", 1, "upsample"),
        ("default", 2, "upsample"), ("default", 4, "upsample"), ("default", 8, "upsample"), ("quick", 1, "conv"),
        ("quick", 2, "conv"), ("quick", 4, "conv"), ("quick", 8, "conv")]
for preset, heads, head in ROWS:
    cfg = Config(**{**PRESETS[preset], "encoder_heads": heads, "head": head})
    state = train.create_train_state(cfg, (32, 32, 3), 10, 10)
    batch = np.zeros((cfg.batch_size, 32, 32, 3), np.uint8)
    row = {"preset": preset, "head": head, "batch": cfg.batch_size, "encoder_heads": heads}
    for replay in ((False, True) if heads > 1 else (True,)):
        models._REPLAY = replay  # read while tracing
        # a new function each time: jit's trace cache is keyed by the function, and the flag is read while tracing
        fn = jax.jit(lambda state, batch, key, cfg: train.train_step(state, batch, key, cfg), static_argnames="cfg")
        step = fn.lower(state, batch, jax.random.PRNGKey(0), cfg=cfg)
        compiled, way = step.compile(), "replayed" if replay else "drawn_again"
        row[f"mflop_per_image_{way}"] = round(compiled.cost_analysis()["flops"] / cfg.batch_size / 1e6, 2)
        row[f"xla_mb_{way}"] = round(compiled.memory_analysis().temp_size_in_bytes / 1e6, 1)
    models._REPLAY = True
    row.update(estimate_mb=round(train.cpu_step_temporaries(cfg) / 1e6, 1), one_arena=train.large_cpu_steps(cfg))
    print(json.dumps(row), flush=True)
