"""Evaluate a trained run: restore its checkpoint, encode the test set, compare with PCA, draw the latent space.

    python evaluate.py --workdir runs/default            # latest checkpoint, config read from the workdir
    python evaluate.py --workdir runs/default --step 2000 --out runs/default/eval-2000
    python evaluate.py --workdir runs/default --best-codes 100    # also: how much of the error is the encoder's
    open runs/default/eval/index.html
"""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
    from jaxae.cli import ArgumentParser
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the run's folder (holds config.json and checkpoints/)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step to evaluate (default: the latest)")
    parser.add_argument("--out", default=None, help="output folder (default: WORKDIR/eval); a previous "
                        "evaluation there is moved aside, not deleted")
    parser.add_argument("--data", default=None, help="data source (default: the one the run was trained on); "
                        "'tfds' or a local folder / tar, as train.py --data")
    parser.add_argument("--interp-steps", type=int, default=10, help="decoded steps per interpolation row and "
                        "per traversal row (default: 10, at most 50)")
    parser.add_argument("--cache-dir", default=None, help="where decoded local datasets and compiled "
                        "programs are cached (default: the run's, else ~/.cache/jaxae)")
    parser.add_argument("--best-codes", type=int, default=0, metavar="STEPS", help="also search each test "
                        "image's best code for the decoder: the nearer of the encoder's code and the best of up "
                        "to 4,096 decoded training codes, then STEPS Adam steps on the reconstruction error (20 "
                        "gets most of what 100 get). Where it beats the encoder, the error is the encoder's, not "
                        "the decoder's. Slow on CPU: minutes for the quick preset, an hour or more for the default "
                        "model (default: 0, off)")
    args = parser.parse_args(argv)

    from jaxae.evaluate import run

    run(args.workdir, step=args.step, out=args.out, data=args.data, interp_steps=args.interp_steps,
        cache_dir=args.cache_dir, best_steps=args.best_codes)
    return 0


if __name__ == "__main__":
    from jaxae.cli import run_main
    run_main(main)
