"""What the bound's lock and access-time files cost a run whose programs are all cached: N small programs compiled
into a fresh folder, then loaded from it by fresh processes, unbounded (-1) and bounded (1 GiB), alternating.
Prints the seconds each process spent loading them (best and median of R).

    PYTHONPATH=. python docs/studies/s31-cache/hits.py [N] [R]
"""
import os
import statistics
import subprocess
import sys
import tempfile

LOAD = """
import sys, time
import jax, jax.numpy as jnp
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_compilation_cache_max_size", int(sys.argv[2]))
t = time.perf_counter()
for k in range(int(sys.argv[3])):
    jax.jit(lambda x: jnp.sin(x) * k).lower(jax.ShapeDtypeStruct((3,), jnp.float32)).compile()
print(time.perf_counter() - t)
"""


def load(folder, bound, n):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", LOAD, folder, str(bound), str(n)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return float(out)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    folder = tempfile.mkdtemp()
    first = load(folder, 1 << 30, n)
    times = {-1: [], 1 << 30: []}
    for _ in range(repeats):
        for bound in times:
            times[bound].append(load(folder, bound, n))
    print(f"{n} programs compiled and written in {first:.2f} s (bounded)")
    for bound, ts in times.items():
        print(f"bound {bound}: {n} cached programs loaded in {min(ts):.3f} s best, {statistics.median(ts):.3f} s median")


if __name__ == "__main__":
    main()
