"""train.py's training loop (train_and_evaluate, default model and settings) on the first N training images and the
first M test images of CIFAR-10, so that epochs end every few steps: for tracing what happens around epoch ends.

    PYTHONPATH=. python docs/studies/s22-memory/subset.py WORKDIR N M MAX_STEPS [train.py flags as key=value]
    strace -f -e trace=mmap,munmap -o TRACE python ...   # which thread maps the step's block of temporaries
"""
import sys, threading
from jaxae.config import Config, PRESETS
from jaxae.data import Dataset, load
from jaxae.train import train_and_evaluate

workdir, n, m, max_steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
extra = {k: type(getattr(Config(), k))(v) for k, v in (a.split("=", 1) for a in sys.argv[5:])}
print("main thread", threading.get_native_id(), flush=True)
full = load("data/cifar10-jpeg.tar.gz")
ds = Dataset(full.train_images[:n], full.train_labels[:n], full.test_images[:m], full.test_labels[:m],
             full.class_names)
del full
cfg = Config(**{**PRESETS["long"], "workdir": workdir, "data": "data/cifar10-jpeg.tar.gz", "fresh": True,
                "max_steps": max_steps, **extra})
r = train_and_evaluate(cfg, ds=ds, progress=False)
print({k: r[k] for k in ("step", "test_mse", "seconds") if k in r}, flush=True)
