"""Train a list of configurations one after another and tabulate test MSE, 10-NN accuracy and time.

    python bench/sweep.py --data data/cifar10-jpeg.tar.gz --out runs/sweep.jsonl \
        --base '{"epochs": 20}' --grid '[{}, {"width": 32}, {"loss": "l1"}]'

Each grid entry overrides the base config; each run leaves a normal workdir under --root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PCA3_MSE = 0.0323  # ../shared/data/README.md, the same JPEG copy of CIFAR-10


def _encode(state, images, bs=1000):
    import jax, numpy as np
    f = jax.jit(lambda p, x: state.apply_fn({"params": p}, x.astype("float32") / 255.0, method="encode"))
    return np.concatenate([np.asarray(f(state.params, images[i:i + bs])) for i in range(0, len(images), bs)])


def _knn(tr, ytr, te, yte, k=10):
    import jax, jax.numpy as jnp, numpy as np
    @jax.jit
    def votes(q):
        d = jnp.sum(q**2, 1)[:, None] - 2 * q @ tr.T + jnp.sum(tr**2, 1)[None]
        _, idx = jax.lax.top_k(-d, k)
        return jnp.argmax(jax.nn.one_hot(jnp.asarray(ytr)[idx], 10).sum(1), 1)
    pred = np.concatenate([np.asarray(votes(te[i:i + 1000])) for i in range(0, len(te), 1000)])
    return float(np.mean(pred == yte))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--base", default="{}", help="JSON dict of Config overrides shared by all runs")
    p.add_argument("--grid", required=True, help="JSON list of dicts, one run each")
    p.add_argument("--root", default="runs/sweep", help="parent folder of the runs' workdirs")
    p.add_argument("--out", default="runs/sweep.jsonl", help="JSON lines, one per run (appended)")
    p.add_argument("--cache-dir", default="")
    args = p.parse_args(argv)

    import jax
    from jaxae.config import Config
    from jaxae.data import load
    from jaxae.train import train_and_evaluate

    base, grid = json.loads(args.base), json.loads(args.grid)
    ds = load(args.data, cache_dir=args.cache_dir)
    print(f"{jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}", flush=True)
    for i, over in enumerate(grid):
        name = "-".join(f"{k}{v}" for k, v in over.items()) or "base"
        cfg = Config(**{**base, **over, "data": args.data, "workdir": os.path.join(args.root, name),
                        "fresh": True}).validate()
        t0 = time.perf_counter()
        res = train_and_evaluate(cfg, ds=ds, progress=False)
        wall = time.perf_counter() - t0
        state = res["state"]
        tr = _encode(state, ds.train_images)
        te = _encode(state, ds.test_images)
        knn = _knn(tr, ds.train_labels, te, ds.test_labels)
        row = {"name": name, **over, "test_mse": res["test_mse"], "x_pca3": res["test_mse"] / PCA3_MSE,
               "knn10": knn, "train_loss": res["train_loss"], "wall_s": wall, "base": base}
        print(f"RESULT {name:40s} mse {row['test_mse']:.5f} ({row['x_pca3']:.3f} x PCA-3)  10-NN {knn:.1%}  "
              f"{wall:6.1f} s", flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
