"""How long evaluate.py's noise curve takes: `evaluate.run` on a denoising run, with `evaluate.noise_curve` timed
(compiles included). Twenty-eighth session, 2-core box: 34 s of a 127 s evaluation for the default model (a run
of `python train.py --max-steps 2 --noise 0.2`), 8 s for the quick preset (5.9 s with its programs already in
the compilation cache).

    PYTHONPATH=. python docs/studies/s28-noise/time_curve.py WORKDIR OUT
"""

import sys
import time

from jaxae import evaluate


def main(workdir: str, out: str) -> None:
    curve = evaluate.noise_curve

    def timed(*args, **kwargs):
        t = time.perf_counter()
        result = curve(*args, **kwargs)
        print(f"noise curve: {time.perf_counter() - t:.2f} s", flush=True)
        return result
    evaluate.noise_curve = timed
    evaluate.run(workdir, out=out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
