"""XLA's temporary memory of the default model's CPU step, by batch, microbatch and passes in flight
(docs/performance.md, twentieth session). Each argument is BATCH,MICROBATCH,PASSES_IN_FLIGHT.

    PYTHONPATH=. python docs/studies/s20-memory/steptemp.py 256,64,2 1024,64,2 512,64,2 1024,128,2 1024,64,1
"""
import sys, jax, numpy as np
from jaxae import train, hostmem
from jaxae.config import OLD_MODEL, Config
hostmem.keep_freed_memory(); hostmem.run_cpu_programs_inline()
for spec in sys.argv[1:]:
    b, mb, inflight = map(int, spec.split(","))
    train.PASSES_IN_FLIGHT = inflight
    cfg = Config(**OLD_MODEL, batch_size=b, microbatch=mb)
    state = train.create_train_state(cfg, (32, 32, 3), 4800, 48)
    batch = np.zeros((b, 32, 32, 3), np.uint8)
    c = jax.jit(train.train_step, static_argnames="cfg").lower(state, batch, jax.random.PRNGKey(0), cfg=cfg).compile()
    m = c.memory_analysis()
    print(spec, f"temp {m.temp_size_in_bytes/2**20:.0f} MB", flush=True)
