"""train.py under a 10 ms VmRSS sampler: the peak, when it came, and glibc's malloc_stats() per arena at exit
(docs/performance.md, twentieth session). Arguments: train.py's.

    TQDM_DISABLE=1 PYTHONPATH=. python docs/studies/s20-memory/rsstrace.py --data data/cifar10-jpeg.tar.gz \
        --workdir /tmp/r --fresh --max-steps 8 --log-every 1
"""
import atexit, resource, runpy, sys, time, threading
t0 = time.time(); samples = []
def sampler():
    while True:
        rss = int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) // 1024
        samples.append((time.time() - t0, rss)); time.sleep(0.01)
threading.Thread(target=sampler, daemon=True).start()
marks = []
def mark(tag): marks.append((time.time() - t0, tag))
def report():
    m = max(samples, key=lambda s: s[1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"ru_maxrss {peak:.0f} MB; sampled max {m[1]} MB at {m[0]:.2f} s", file=sys.stderr)
    around = [s for s in samples if abs(s[0] - m[0]) < 1.0][::10]
    print("around:", " ".join(f"{a:.2f}:{b}" for a, b in around), file=sys.stderr)
    print("marks:", " ".join(f"{a:.1f}:{b}" for a, b in marks), file=sys.stderr)
def mstats():
    import ctypes; ctypes.CDLL("libc.so.6").malloc_stats()
atexit.register(mstats)
atexit.register(report)
import jaxae.train, jaxae.figures, jaxae.checkpoints, jaxae.hostmem
def wrap(mod, name):
    f = getattr(mod, name)
    def g(*a, **k):
        mark(f"<{name}"); r = f(*a, **k); mark(f"{name}>"); return r
    setattr(mod, name, g)
for n in ("train_and_evaluate", "put_dataset", "create_train_state", "reconstruction_error", "make_p_train_steps",
          "place_state"):
    wrap(jaxae.train, n)
wrap(jaxae.hostmem, "release_after_compiles") if hasattr(jaxae.hostmem, "release_after_compiles") else None
wrap(jaxae.figures, "loss_curve")
sys.argv = ["train.py"] + sys.argv[1:]
runpy.run_path("train.py", run_name="__main__")
