"""Train a (denoising) convolutional autoencoder: flags -> Config -> jaxae.train.train_and_evaluate.

    python train.py --noise 0.2
    python train.py --data path/to/cifar10 --loss l1 --latent-dim 3 --epochs 30 --workdir runs/l1
"""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
    from jaxae import config
    from jaxae.cli import ArgumentParser, use_compilation_cache

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    config.add_flags(parser)
    args = parser.parse_args(argv)
    cfg, explicit = config.from_args(args)

    from jaxae import checkpoints, distributed, figures, monitor
    from jaxae.config import TrainingStopped
    from jaxae.train import keep_host_memory, train_and_evaluate

    use_compilation_cache(cfg.cache_dir)
    keep_host_memory(cfg, explicit)  # before distributed.initialize starts threads, so that they keep to its arenas
    distributed.initialize(cfg)  # before anything touches a device
    import jax

    try:
        result = train_and_evaluate(cfg, explicit)
    except TrainingStopped:  # diverged or collapsed: the curve shows how; run_main prints the line, exit 1
        if jax.process_index() == 0:
            figures.loss_curve(cfg.workdir)
        raise
    if jax.process_index() == 0:
        figures.loss_curve(cfg.workdir)
    if "test_mse" in result and jax.process_index() == 0:
        if result["step"] >= result["total"]:  # else stopped by a signal, which said so: no "done", no stale mse
            print(f"done: step {result['step']}, test mse {result['test_mse']:.5f}, workdir {cfg.workdir}")
            if result["step"] < result["run_steps"]:
                print(f"--max-steps {cfg.max_steps} ends this command at step {result['step']} of the run's "
                      f"{result['run_steps']}: `{checkpoints.resume_command(cfg.replace(max_steps=0))}` trains on")
        print(monitor.timing(result))
    return result["exit"]


if __name__ == "__main__":
    from jaxae.cli import run_main
    run_main(main)
