"""evaluate: restore a tiny trained run, encode, metrics, PCA baseline, k-NN, figures and pages."""

from __future__ import annotations

import dataclasses
import glob
import html
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_image_folder, tiny_config
from PIL import Image

from jaxae import checkpoints, evaluate, figures, pages
from jaxae.config import UsageError
from jaxae.data import load
from jaxae.metrics import mean_image_mse, pad_to_multiple
from jaxae.train import train_and_evaluate

STEPS = 4  # --interp-steps of the runs below
N_TEST = 24  # 2 classes x 12


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny denoising run, evaluated twice into the same folder (the second moves the first aside)."""
    tmp = tmp_path_factory.mktemp("eval")
    data = make_image_folder(tmp / "data", n_train=16, n_test=N_TEST // 2)
    # test_train's run settings (32 training images, noise 0.2, flips, 4 epochs at learning rate 1e-2, no
    # warm-up): the pmapped step is the same program, compiled once for both modules.
    cfg = tiny_config(tmp, data=data, max_steps=4, noise=0.2, flip=True, warmup_epochs=0.0, epochs=4,
                      learning_rate=1e-2)
    trained = train_and_evaluate(cfg, progress=False)
    out = str(tmp / "eval")
    first = evaluate.run(cfg.workdir, out=out, interp_steps=STEPS)
    previous = glob.glob(out + "-previous-*")
    second = evaluate.run(cfg.workdir, out=out, interp_steps=STEPS)
    moved = [p for p in glob.glob(out + "-previous-*") if p not in previous]
    return {"cfg": cfg, "trained": trained, "out": out, "first": first, "second": second, "moved": moved}


def test_every_output_file_is_written(run):
    names = ["index.html", "metrics.json", "latents.npz", "latents.csv", "latent_3d.html", "latent_3d.png",
             "latent_pairs.png", "interpolation.png", "reconstructions.png", "traversal.png", "decoder_map.png",
             "class_means.png", "neighbours.png",
             "loss_curve.png", "noise_curve.png"]
    for name in names:
        assert os.path.getsize(os.path.join(run["out"], name)) > 0, name
    index = open(os.path.join(run["out"], "index.html")).read()
    for name in names[2:]:
        assert name in index, f"index.html does not link {name}"
    assert "gaussian corruption, strength 0-0.2 (drawn uniformly for each example" in index
    assert "latent dimension" in index
    assert "checkpoint step 4, epoch 1 of 4" in index  # --max-steps 4 stopped it after one
    assert ("second row: the same images corrupted at the top of the training's range (strength 0.2); last two rows: "
            "both reconstructions") in html.unescape(index)  # the captions are escaped


def test_a_previous_evaluation_is_moved_aside_not_deleted(run):
    assert len(run["moved"]) == 1
    assert os.path.exists(os.path.join(run["moved"][0], "metrics.json"))


def test_image_grids_have_the_expected_pixel_sizes(run):
    def size(name):
        return Image.open(os.path.join(run["out"], name)).size
    # rows: 8 pairs; columns: A, STEPS decoded points, B
    assert size("interpolation.png") == figures.grid_size(8, STEPS + 2, 16, 16)
    # original, corrupted, AE, PCA, AE of noisy, PCA of noisy x 12 examples
    assert size("reconstructions.png") == figures.grid_size(6, 12, 16, 16)
    assert size("traversal.png") == figures.grid_size(3, STEPS, 16, 16)  # one row per latent axis
    assert size("neighbours.png") == figures.grid_size(8, 1 + 8, 16, 16)  # query + 8 neighbours
    assert size("decoder_map.png") == figures.grid_size(STEPS, STEPS, 16, 16)
    # 16x16 tiles enlarged 3 times (48 px) plus 2 px of padding; narrow grids are widened to MIN_W
    assert figures.grid_size(8, STEPS + 2, 16, 16) == (max(figures.MIN_W, figures.LABEL_W + 6 * 50 + 2),
                                                       figures.TITLE_H + figures.HEADER_H + 8 * 50 + 2)
    assert figures.grid_size(1, 12, 16, 16)[0] == figures.LABEL_W + 12 * 50 + 2


def test_latents_have_one_code_per_test_image_and_are_deterministic(run):
    a = np.load(os.path.join(run["moved"][0], "latents.npz"))
    b = np.load(os.path.join(run["out"], "latents.npz"))
    assert b["codes"].shape == (N_TEST, 3) and b["labels"].shape == (N_TEST,)
    assert list(b["class_names"]) == ["cat", "dog"]
    np.testing.assert_array_equal(a["codes"], b["codes"])
    rows = open(os.path.join(run["out"], "latents.csv")).read().splitlines()
    assert rows[0] == "index,label,class,z1,z2,z3" and len(rows) == N_TEST + 1
    np.testing.assert_allclose([float(v) for v in rows[1].split(",")[3:]], b["codes"][0], rtol=1e-5)


def test_metrics_are_finite_and_agree_with_training(run):
    m = json.load(open(os.path.join(run["out"], "metrics.json")))
    assert m["step"] == 4 and m["n_test"] == N_TEST and set(m["models"]) == {"autoencoder", "PCA-3"}
    assert m["image_shape"] == [16, 16, 3] and m["class_names"] == ["cat", "dog"]
    page = open(os.path.join(run["out"], "index.html")).read()
    assert "SSIM: 11x11 Gaussian window (sigma 1.5), mean" in page
    assert m["chance_accuracy"] == 0.5  # two classes of 12 test images
    assert "10 nearest training codes (always guessing the commonest training class is right for 50.0 %" in page
    for model in m["models"].values():
        assert set(model) == {"test_mse", "test_mae", "test_psnr", "test_ssim", "noisy_test_mse", "noisy_test_mae",
                              "noisy_test_psnr", "noisy_test_ssim", "knn10_accuracy"}
        assert all(np.isfinite(v) for v in model.values())
        assert model["test_psnr"] == pytest.approx(10 * np.log10(1 / model["test_mse"]))
        assert -1 <= model["test_ssim"] <= 1 and 0 <= model["knn10_accuracy"] <= 1
    # the same clean-test MSE as the training loop's own evaluation (a second code path)
    assert m["models"]["autoencoder"]["test_mse"] == pytest.approx(run["trained"]["test_mse"], rel=1e-4)
    assert m["models"] == run["first"]["models"]
    # the mean training image's error: PCA's reconstruction is that mean plus a projection, never worse
    ds = load(run["cfg"].data, cache_dir=run["cfg"].cache_dir)
    assert m["mean_image_test_mse"] == pytest.approx(mean_image_mse(ds.train_images, ds.test_images))
    assert m["models"]["PCA-3"]["test_mse"] <= m["mean_image_test_mse"]


def test_a_denoising_run_gets_a_noise_curve(run):
    """The test split at 0, 0.5, 1 and 2 x the trained --noise (the table's clean and noisy errors at 0 and 1), the
    corrupted input's own error growing with the strength, and the terminal's line giving every value."""
    m = json.load(open(os.path.join(run["out"], "metrics.json")))
    curve = m["noise_curve"]
    assert curve["strengths"] == [0.0, 0.1, 0.2, 0.4] and set(curve) == {"strengths", "autoencoder", "PCA-3", "input"}
    for name, model in m["models"].items():
        assert curve[name][0] == model["test_mse"] and curve[name][2] == model["noisy_test_mse"]
        assert curve[name][1] != curve[name][3] and all(v > 0 for v in curve[name])
    assert curve["input"][0] == 0 and np.all(np.diff(curve["input"]) > 0)
    assert curve["input"][1] == pytest.approx(0.01, rel=0.2)  # gaussian 0.1 (clipped at 0 and 1: a little less)
    assert run["second"]["noise_curve"] == pytest.approx(curve)
    page = open(os.path.join(run["out"], "index.html")).read()
    assert "reconstruction error against input corruption" in page and "noise_curve.png" in page
    line = pages.noise_curve_text(curve, "gaussian", "autoencoder", "PCA-3")
    assert line.startswith("noise curve, test MSE to the clean images of inputs corrupted (gaussian) at strength "
                           "0, 0.1, 0.2, 0.4: autoencoder ")
    assert all(f"{v:.4f}" in line for k in ("autoencoder", "PCA-3", "input") for v in curve[k])


def test_the_noise_curves_own_passes_corrupt_as_the_noisy_metrics_do(run):
    """A strength measured by the curve's own program, traced strength and all, gives the numbers of the table's
    (corrupt_fixed's noise at a static strength; the clean split at 0)."""
    from jaxae.metrics import pad_to_multiple
    from jaxae.models import model_from_config
    cfg, state, ds = evaluate.restore(run["cfg"].workdir)
    codec = evaluate.autoencoder_codec(model_from_config(cfg, ds.image_shape), state.params)
    x, mask = pad_to_multiple(ds.test_images, evaluate.batch_size_for(len(ds.test_images)))
    curve = evaluate.noise_curve((codec,), jnp.asarray(x), mask, "gaussian", [0.0, 0.2], known={})
    ae = run["first"]["models"]["autoencoder"]
    assert curve["autoencoder"] == pytest.approx([ae["test_mse"], ae["noisy_test_mse"]], rel=1e-5)


@pytest.mark.parametrize("kind, noise, strengths", [
    ("gaussian", 0.2, [0.0, 0.1, 0.2, 0.4]), ("gaussian", 3.0, [0.0, 1.5, 3.0, 6.0]),
    ("mask", 0.25, [0.0, 0.125, 0.25, 0.5]), ("mask", 0.75, [0.0, 0.375, 0.75, 1.0]),
    ("salt_pepper", 1.0, [0.0, 0.5, 1.0])])
def test_noise_curve_strengths_stop_at_what_the_corruption_can_do(kind, noise, strengths):
    assert evaluate.curve_strengths(kind, noise) == strengths


def test_metrics_json_is_strict_json_even_for_a_model_that_diverged():
    # json.dump writes NaN and Infinity, which jq and JavaScript's JSON.parse refuse: metrics.json gets null
    metrics = {"models": {"autoencoder": {"test_mse": float("nan"), "test_psnr": float("-inf"), "ssim": 0.5}},
               "image_shape": [8, 8, 3], "data": "tfds"}
    text = json.dumps(evaluate._finite_or_null(metrics), allow_nan=False)
    assert json.loads(text)["models"]["autoencoder"] == {"test_mse": None, "test_psnr": None, "ssim": 0.5}


def test_the_encode_timing_runs_the_program_compiled_beforehand(run):
    """evaluate.py compiles the test split's encode without running it, then times the encode: the timed call
    must neither lower nor compile anything."""
    import jax
    from jaxae.metrics import pad_to_multiple
    from jaxae.models import model_from_config
    cfg, state, ds = evaluate.restore(run["cfg"].workdir)
    codec = evaluate.autoencoder_codec(model_from_config(cfg, ds.image_shape), state.params)
    x = jax.device_put(pad_to_multiple(ds.test_images, 7)[0])  # 28 rows: a shape no other test encodes
    lowered = []

    def listener(event: str, duration: float, **_):
        if event in ("/jax/core/compile/jaxpr_to_mlir_module_duration", "/jax/core/compile/backend_compile_duration"):
            lowered.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        evaluate.compile_encode_split(codec, x)
        n_compile = len(lowered)
        codes = evaluate.encode_split(codec, x)
        n_run = len(lowered) - n_compile
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    # one lowering (and a backend compile, unless the session's compilation cache already holds the program)
    assert lowered[:1] == ["/jax/core/compile/jaxpr_to_mlir_module_duration"] and n_run == 0, lowered
    assert codes.shape == (28, cfg.latent_dim) and np.isfinite(np.asarray(codes)).all()


def test_clean_errors_from_the_codes_equal_those_from_encoding_again(run):
    """evaluate.py decodes the test codes it already has for the clean reconstructions: the same numbers as
    encoding the split again."""
    import jax
    from jaxae.metrics import pad_to_multiple
    from jaxae.models import model_from_config
    cfg, state, ds = evaluate.restore(run["cfg"].workdir)
    codec = evaluate.autoencoder_codec(model_from_config(cfg, ds.image_shape), state.params)
    x, mask = pad_to_multiple(ds.test_images, evaluate.batch_size_for(len(ds.test_images)))
    x = jax.device_put(x)
    again = evaluate.reconstruction_metrics(codec, x, mask)
    decoded = evaluate.reconstruction_metrics(codec, x, mask, codes=evaluate.encode_split(codec, x))
    assert decoded == pytest.approx(again, rel=1e-5)
    with pytest.raises(ValueError, match="clean inputs' codes"):
        evaluate.reconstruction_metrics(codec, x, mask, "gaussian", 0.2, codes=evaluate.encode_split(codec, x))


def test_the_figures_decode_any_number_of_codes_with_one_program(run, monkeypatch):
    """decode_codes: the decoder's drawings of 5, FIGURE_BATCH and FIGURE_BATCH + 3 codes (FIGURE_BATCH set to 8),
    each what decoding them all at once gives, from calls of FIGURE_BATCH codes only: one compiled program (each
    count compiled its own before)."""
    from jaxae.models import model_from_config
    cfg, state, ds = evaluate.restore(run["cfg"].workdir)
    codec = evaluate.autoencoder_codec(model_from_config(cfg, ds.image_shape), state.params)
    monkeypatch.setattr(evaluate, "FIGURE_BATCH", 8)
    z = np.random.default_rng(0).normal(size=(11, cfg.latent_dim)).astype(np.float32)
    want = np.asarray(codec.decode(codec.params, jnp.asarray(z)))
    shapes = []
    real = evaluate._apply
    monkeypatch.setattr(evaluate, "_apply", lambda fn, p, x: shapes.append(x.shape) or real(fn, p, x))
    for n in (5, 8, 11):
        got = evaluate.decode_codes(codec, z[:n])
        assert got.shape == (n, *ds.image_shape)
        np.testing.assert_allclose(got, want[:n], rtol=1e-5, atol=1e-6)
    assert set(shapes) == {(8, cfg.latent_dim)} and len(shapes) == 4  # 1 + 1 + 2 calls, all of 8 codes


@dataclasses.dataclass(frozen=True)
class _ToTheMean:
    """A poor encoder for the PCA decoder: every image to the code of the mean image."""
    def __call__(self, p, x):
        return jnp.zeros((x.shape[0], p["components"].shape[0]))


@dataclasses.dataclass(frozen=True)
class _Scaled:
    """PCA's decoder of codes `factor` times PCA's own."""
    decode: object
    factor: float

    def __call__(self, p, z):
        return self.decode(p, z / self.factor)


@pytest.fixture(scope="module")
def pca_splits(run):
    """The run's data and its PCA-3, whose decoder is linear: the best code of an image is its PCA code. The
    test split is padded for batches of 16 (24 images: two batches, the second with 8 pad rows)."""
    _, _, ds = evaluate.restore(run["cfg"].workdir)
    pca = evaluate.fit_pca_codec(ds, 3)
    x, mask = pad_to_multiple(ds.test_images, 16)
    train, _ = pad_to_multiple(ds.train_images, evaluate.batch_size_for(len(ds.train_images)))
    train_codes = np.asarray(evaluate.encode_split(pca, jax.device_put(train)))[:len(ds.train_images)]
    return pca, jax.device_put(x), mask, train_codes


def _poor(pca, factor):
    return evaluate.Codec("poor", _ToTheMean(), _Scaled(pca.decode, factor), pca.params)


@pytest.mark.parametrize("factor", [1.0, 1000.0])
def test_best_codes_find_the_best_code_a_poor_encoder_missed(pca_splits, monkeypatch, factor):
    """--best-codes with PCA's decoder and an encoder that sends every image to the mean: the search of the
    training codes alone does better, the descent reaches PCA's own (least-squares) codes' error whatever the
    codes' scale (its steps follow the codes' spread), the errors reported are those of decoding the codes
    returned, and a code is replaced only by a better one. Two batches of 16, pad rows included."""
    monkeypatch.setattr(evaluate, "split_batch", lambda: 16)
    pca, x, mask, train_codes = pca_splits
    poor = _poor(pca, factor)
    enc = evaluate.encode_split(poor, x)
    optimum = evaluate.reconstruction_metrics(pca, x, mask)["mse"]
    means = []
    for steps in (0, 100):
        z, err, enc_err, n_cand = evaluate.best_codes(poor, x, enc, factor * train_codes, steps, candidates=8)
        assert n_cand == 8 and z.shape == enc.shape == (32, 3)
        err, enc_err = np.asarray(err)[mask > 0], np.asarray(enc_err)[mask > 0]
        assert (err <= enc_err).all()
        assert evaluate.reconstruction_metrics(poor, x, mask, codes=z)["mse"] == pytest.approx(err.mean(), rel=1e-5)
        assert evaluate.reconstruction_metrics(poor, x, mask)["mse"] == pytest.approx(enc_err.mean(), rel=1e-5)
        changed = np.any(np.asarray(z) != np.asarray(enc), axis=1)[mask > 0]
        assert np.array_equal(changed, err < enc_err)
        means.append(err.mean())
    closed = [(enc_err.mean() - m) / (enc_err.mean() - optimum) for m in means]  # of the way to the optimum
    assert 0.5 < closed[0] < 0.95 and 0.99 < closed[1] <= 1  # measured: 0.86 and 0.996


def test_a_descent_that_makes_codes_worse_is_not_kept(pca_splits, monkeypatch):
    """Steps far too long make every code worse: the search's start is returned, with its error."""
    pca, x, mask, train_codes = pca_splits
    poor = _poor(pca, 1.0)
    enc = evaluate.encode_split(poor, x)
    start, start_err, _, _ = evaluate.best_codes(poor, x, enc, train_codes, 0)
    monkeypatch.setattr(evaluate, "BEST_RATE", 1e3)
    z, err, _, _ = evaluate.best_codes(poor, x, enc, train_codes, 5)
    np.testing.assert_array_equal(np.asarray(z), np.asarray(start))
    np.testing.assert_array_equal(np.asarray(err), np.asarray(start_err))


def test_best_codes_refuse_a_split_not_padded_to_whole_batches(pca_splits, monkeypatch):
    pca, x, _, train_codes = pca_splits
    monkeypatch.setattr(evaluate, "split_batch", lambda: 16)
    with pytest.raises(ValueError, match="padded to a multiple of 16 rows"):
        evaluate.best_codes(pca, x[:20], evaluate.encode_split(pca, x)[:20], train_codes, 1)


def test_best_codes_of_an_optimal_encoder_are_its_own(pca_splits):
    """PCA's encoder already gives its decoder's best codes: the search finds nothing better, beyond rounding."""
    pca, x, mask, train_codes = pca_splits
    enc = evaluate.encode_split(pca, x)
    z, err, enc_err, _ = evaluate.best_codes(pca, x, enc, train_codes, 50)
    err, enc_err = np.asarray(err)[mask > 0], np.asarray(enc_err)[mask > 0]
    assert err.mean() == pytest.approx(enc_err.mean(), rel=1e-4)
    np.testing.assert_allclose(np.asarray(z), np.asarray(enc), atol=1e-2 * np.abs(train_codes).max())


def test_the_candidate_search_finds_an_image_the_decoder_drew(pca_splits):
    """A test image that is the decoding of a training code: the search (no descent) finds that code."""
    pca, _, _, train_codes = pca_splits
    target = train_codes[5:6]
    drawn = np.asarray(pca.decode(pca.params, jnp.asarray(target)))
    images = jax.device_put(np.round(np.clip(drawn, 0, 1) * 255).astype(np.uint8))
    poor = evaluate.Codec("poor", _ToTheMean(), pca.decode, pca.params)
    z, err, enc_err, n_cand = evaluate.best_codes(poor, images, evaluate.encode_split(poor, images), train_codes, 0)
    assert n_cand == len(train_codes)
    np.testing.assert_array_equal(np.asarray(z), target)
    assert float(err[0]) < 0.1 * float(enc_err[0])


def test_best_codes_in_an_evaluation(run, tmp_path, capsys, monkeypatch):
    """evaluate.py --best-codes: its MSE beside the encoder's in metrics.json, the terminal and the page, the
    codes in latents.npz, and a row of the reconstructions figure."""
    out = tmp_path / "ev"
    # three batches of the 24 test images: the pace is taken after the first, a line after the second, none after
    # the last
    monkeypatch.setattr(evaluate, "split_batch", lambda: 8)
    monkeypatch.setattr(evaluate, "BEST_REPORT_EVERY", 0.0)
    m = evaluate.run(run["cfg"].workdir, out=str(out), interp_steps=STEPS, best_steps=10)
    best = m["best_codes"]
    assert best["steps"] == 10 and best["candidates"] == 32 and 0 <= best["improved"] <= 1
    assert 0 < best["median_gain"] < 1 and best["test_mse"] < m["models"]["autoencoder"]["test_mse"]
    assert json.load(open(out / "metrics.json"))["best_codes"] == pytest.approx(best)
    printed = capsys.readouterr().out
    assert "searching the best code of each of the 24 test images (10 descent steps; on CPU this takes" in printed
    assert "best codes: 16 of 24 test images in " in printed and printed.count("best codes: ") == 1
    assert ("the best codes found (the encoder's or the nearest of 32 decoded training codes, then 10 Adam "
            "steps per image; ") in printed and f"test MSE {best['test_mse']:.4f}" in printed
    page = open(out / "index.html").read()
    assert "With --best-codes, the best codes found" in page and "amortisation gap" in page
    # the run trained with --noise 0.2 at uniform levels: near-clean inputs too, so no word of clean ones unseen
    assert "this denoising encoder was not trained on" not in page
    codes = np.load(out / "latents.npz")
    assert codes["best_codes"].shape == codes["codes"].shape == (N_TEST, 3)
    assert codes["best_mse"].mean() == pytest.approx(best["test_mse"], rel=1e-5)
    assert codes["encoder_mse"].mean() == pytest.approx(m["models"]["autoencoder"]["test_mse"], rel=1e-5)
    assert (codes["best_mse"] <= codes["encoder_mse"]).all()
    assert Image.open(out / "reconstructions.png").size == figures.grid_size(7, 12, 16, 16)
    assert "best_codes" not in run["second"] and "best_codes" not in np.load(os.path.join(run["out"], "latents.npz"))
    with pytest.raises(UsageError, match="--best-codes must be 0 .off. or a number of descent steps"):
        evaluate.run(run["cfg"].workdir, out=str(tmp_path / "ev2"), best_steps=-1)


def test_a_workdir_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    checkpoints.save_config(cfg)
    with pytest.raises(UsageError, match="holds no checkpoint"):
        evaluate.run(cfg.workdir)
    import evaluate as script  # the thin script: one line on stderr, exit status 2
    from jaxae.cli import run_main
    with pytest.raises(SystemExit) as exit_:
        run_main(script.main, ["--workdir", cfg.workdir])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no checkpoint" in err and "\n" not in err
    with pytest.raises(UsageError, match="nothing: no such folder"):
        evaluate.run(str(tmp_path / "nothing"))
    # a file given as the workdir is named as such, not blamed on the --out made from it (FILE/eval)
    with pytest.raises(UsageError, match=r"^--workdir .*config.json: not a folder; give the folder a training run"):
        evaluate.run(os.path.join(cfg.workdir, "config.json"))


def test_out_naming_a_file_is_refused_and_the_file_kept(run, tmp_path):
    log = tmp_path / "q30.out"
    log.write_text("a log the user keeps")
    with pytest.raises(UsageError, match="--out .*q30.out is a file: give a folder"):
        evaluate.run(run["cfg"].workdir, out=str(log))
    assert log.read_text() == "a log the user keeps" and os.listdir(tmp_path) == ["q30.out"]


def test_out_inside_the_dataset_folder_is_refused_before_the_work(run, monkeypatch):
    """Its figures would join the dataset as images of a class of their own (and break its next load)."""
    data = run["cfg"].data
    before = sorted(os.listdir(os.path.join(data, "train")))
    monkeypatch.setattr(evaluate, "restore", lambda *a, **k: pytest.fail("restored before --out was checked"))
    out = os.path.join(data, "train", "eval")
    with pytest.raises(UsageError, match=f"--out {out} is inside the dataset's folder {data}: its files would "
                                         f"change the dataset"):
        evaluate.run(run["cfg"].workdir, out=out)
    assert sorted(os.listdir(os.path.join(data, "train"))) == before


@pytest.mark.parametrize("under", ["a file", "proc"])
def test_out_where_nothing_can_be_written_is_refused_before_the_work(run, tmp_path, monkeypatch, under):
    # found only when the results were written, minutes later, and as "cannot write there (File exists)"
    if under == "proc" and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    (tmp_path / "data.tar.gz").write_text("a file")
    out = str(tmp_path / "data.tar.gz" / "eval") if under == "a file" else "/proc/jaxae-eval"
    monkeypatch.setattr(evaluate, "restore", lambda *a, **k: pytest.fail("restored before --out was checked"))
    message = f"{tmp_path / 'data.tar.gz'} is a file, not a folder" if under == "a file" else "cannot write in /proc"
    with pytest.raises(UsageError, match=f"--out {out}: {message}"):
        evaluate.run(run["cfg"].workdir, out=out)
    assert sorted(os.listdir(tmp_path)) == ["data.tar.gz"]


def test_a_model_no_better_than_the_mean_image_is_called_untrained(run, tmp_path):
    """A run evaluated after a few steps draws grey figures: the page says why, at the top of its metrics."""
    metrics = json.load(open(os.path.join(run["out"], "metrics.json")))
    ae = metrics["models"]["autoencoder"]["test_mse"]
    for baseline, expected in ((ae * 1.01, False), (ae, True), (ae * 0.99, True)):
        m = {**metrics, "mean_image_test_mse": baseline}
        assert pages.untrained(m) is expected
        page = tmp_path / "index.html"
        pages.index(str(page), run["cfg"], m, "table", {"latent_3d_html": "latent_3d.html"})
        assert ("has not learned yet" in page.read_text()) is expected


def test_pairs_come_from_two_classes():
    labels = np.repeat([0, 1], 12)
    pairs = evaluate.pick_pairs(labels, 8)
    assert all(labels[a] != labels[b] for a, b in pairs) and len(set(pairs)) == 8


@pytest.mark.parametrize("classes, rows", [(10, 10), (2, 8), (30, 20)])
def test_the_neighbours_figure_has_a_row_per_class(classes, rows):
    labels = np.repeat(np.arange(classes), 5)
    queries = evaluate.neighbour_queries(labels)
    assert len(queries) == rows and len(set(labels[queries])) == min(classes, rows)  # 8 rows: ship, truck missing


def test_pairs_of_classes_with_one_test_image_each():
    """CIFAR-like classes with one test image each: the reconstructions' 12 pairs wrap around (an IndexError
    before)."""
    labels = np.arange(10)
    pairs = evaluate.pick_pairs(labels, 12)
    assert len(pairs) == 12 and all(labels[a] != labels[b] for a, b in pairs)
    assert evaluate.pick_pairs(np.zeros(3, int), 5) == [(0, 2), (1, 1), (2, 0), (0, 2), (1, 1)]  # one class


def test_a_few_images_evaluate_with_fewer_neighbours_and_pairs(run, tmp_path, capsys):
    """4 training and 3 test images (other data of the run's image size): 4-NN instead of 10-NN, said so,
    and every figure drawn (a top_k error and an IndexError before)."""
    data = make_image_folder(tmp_path / "few", classes=("cat", "dog", "eel"), n_train=2, n_test=1)
    os.remove(os.path.join(data, "train", "eel", "0000.png"))
    os.remove(os.path.join(data, "train", "eel", "0001.png"))
    with pytest.warns(UserWarning, match=r"class folder\(s\) with no images: train/eel$"):  # a test class still
        m = evaluate.run(run["cfg"].workdir, out=str(tmp_path / "ev"), data=data, interp_steps=2)
    assert set(m["models"]["autoencoder"]) >= {"knn4_accuracy", "test_mse"}
    out = capsys.readouterr().out
    assert "votes over 4 neighbours, not 10" in out and "4-NN class accuracy" in out
    assert f"note: evaluating on --data {data}, not on the data the run was trained on" in out
    assert "its 4 nearest training codes" in open(tmp_path / "ev" / "index.html").read()
    assert Image.open(tmp_path / "ev" / "reconstructions.png").size == figures.grid_size(6, 3, 16, 16)


@pytest.mark.parametrize("where", ["workdir", "parent", "cwd", "other files"])
def test_out_that_would_move_the_run_or_other_things_aside_is_refused(run, tmp_path, monkeypatch, where):
    """Replacing --out moves it aside: never the run itself, a folder holding it, the current folder or a
    folder of other things (the run was moved out of its workdir before)."""
    workdir = run["cfg"].workdir
    out = {"workdir": workdir, "parent": os.path.dirname(workdir), "cwd": str(tmp_path),
           "other files": str(tmp_path / "notes")}[where]
    os.makedirs(tmp_path / "notes")
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    (tmp_path / "notes" / "index.html").write_text("a web page, not an evaluation")
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(os.path.dirname(workdir))), sorted(os.listdir(workdir))
    message = {"workdir": "is or holds the run's workdir", "parent": "is or holds the run's workdir",
               "cwd": "is the current folder",
               "other files": "holds files that are not an evaluation"}[where]
    with pytest.raises(UsageError, match=message):
        evaluate.run(workdir, out=out)
    assert (sorted(os.listdir(os.path.dirname(workdir))), sorted(os.listdir(workdir))) == before
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_a_failed_evaluation_leaves_no_partial_folder(run, tmp_path, monkeypatch):
    def fail(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(figures, "loss_curve", fail)
    with pytest.raises(KeyboardInterrupt):
        evaluate.run(run["cfg"].workdir, out=str(tmp_path / "new" / "deep" / "ev"), interp_steps=2)
    assert os.listdir(tmp_path) == []  # nor the folders made for it


def test_interp_steps_out_of_range_is_refused(run):
    for n in (1, 51):
        with pytest.raises(UsageError, match="--interp-steps must be between 2 and 50"):
            evaluate.run(run["cfg"].workdir, interp_steps=n)


def test_a_run_whose_relative_data_path_is_gone_names_where_it_came_from(run, tmp_path, monkeypatch):
    cfg = run["cfg"]
    workdir = str(tmp_path / "copy")
    import shutil
    shutil.copytree(cfg.workdir, workdir)
    saved = json.load(open(os.path.join(workdir, "config.json")))
    json.dump({**saved, "data": "data/cifar10"}, open(os.path.join(workdir, "config.json"), "w"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"was trained on --data data/cifar10, which is not there from .* \(a "
                                         r"relative path\): pass --data PATH"):
        evaluate.run(workdir)


def test_the_decoder_map_spans_the_codes_main_plane(tmp_path):
    """A 3-D code cloud that is flat along latent 3: the map's grid lies in its plane, about its mean, spanning
    the 1st to 99th percentile of each main direction."""
    rng = np.random.default_rng(0)
    codes = np.stack([rng.normal(0, 3, 2000), rng.normal(0, 1, 2000), np.full(2000, 5.0)], 1) + [1, 2, 0]
    seen = []
    def dec(z):
        seen.append(np.asarray(z))
        return np.zeros((len(z), 4, 4, 3), np.float32)
    train = np.stack([rng.normal(0, 3, 2000), rng.normal(0, 1, 2000), np.full(2000, 5.0)], 1) + [1, 2, 0]
    evaluate._decoder_map(codes, train, dec, 5, (4, 4, 3), str(tmp_path / "map.png"))
    grid = seen[0].reshape(5, 5, 3)
    np.testing.assert_allclose(grid[..., 2], 5.0, atol=1e-6)  # in the plane of the codes
    np.testing.assert_allclose(grid[2, 2], codes.mean(0), atol=0.3)  # the middle of the percentile box
    first = np.abs(grid[0, :, 0] - grid[0, 0, 0]).max() > np.abs(grid[0, :, 1] - grid[0, 0, 1]).max()
    assert first  # across: the wide direction (latent 1), down: latent 2
    span = np.percentile(codes[:, 0] - codes[:, 0].mean(), [1, 99])
    np.testing.assert_allclose(sorted([grid[2, 0, 0], grid[2, -1, 0]]), span + codes[:, 0].mean(), rtol=0.02)
    assert Image.open(tmp_path / "map.png").size == figures.grid_size(5, 5, 4, 4)


def test_class_means_decode_each_class_mean_code_beside_its_pixel_mean(tmp_path):
    from jaxae.data import Dataset
    images = (np.arange(6) * 40).astype(np.uint8)[:, None, None, None].repeat(4, 1).repeat(4, 2).repeat(3, 3)
    labels = np.array([0, 0, 0, 1, 1, 1])
    ds = Dataset(images, labels, images, labels, ["dark", "bright", "absent"])
    codes = np.array([[0.0], [1.0], [2.0], [10.0], [15.0], [11.0]])
    seen = []
    def dec(z):
        seen.append(np.asarray(z))
        return np.full((len(z), 4, 4, 3), 0.5, np.float32)
    evaluate._class_means(codes, labels, ds, dec, str(tmp_path / "m.png"))
    np.testing.assert_allclose(seen[0][:, 0], [1.0, 12.0])  # the two present classes' mean codes, in order
    grid = np.asarray(Image.open(tmp_path / "m.png").convert("L"))
    assert grid.shape[::-1] == figures.grid_size(3, 2, 4, 4)
    side = 4 * figures.tile_scale(4, 4)
    tile = lambda i, j: grid[figures.TITLE_H + figures.HEADER_H + figures.PAD + i * (side + figures.PAD) + side // 2,
                             figures.LABEL_W + figures.PAD + j * (side + figures.PAD) + side // 2]
    assert [tile(0, 0), tile(0, 1)] == [128, 128]  # decoded: 0.5
    assert [tile(1, 0), tile(1, 1)] == [40, 160]  # pixel means of 0, 40, 80 and of 120, 160, 200
    assert [tile(2, 0), tile(2, 1)] == [40, 200]  # images 1 and 5: codes 1 and 11 are nearest 1 and 12


def test_the_traversal_columns_are_labelled_with_the_fraction_of_the_sweep(tmp_path, monkeypatch):
    # the headers were "1st pct, 2, 3, ..., 99th pct": step numbers, read as percentiles
    codes = np.random.default_rng(0).normal(0, 1, (500, 3)) * [1, 5, 0.2] + [0, 10, 0]
    drawn, seen = [], []
    monkeypatch.setattr(figures, "image_grid", lambda *a: drawn.append(a) or "t.png")
    evaluate._traversal(codes, lambda z: seen.append(np.asarray(z)) or np.zeros((len(z), 4, 4, 3)), 5, (4, 4, 3),
                        str(tmp_path / "t.png"))
    sweep = seen[0].reshape(3, 5, 3)
    _, _, title, cols, rows = drawn[0]
    t = [float(c.removeprefix("t=")) for c in cols]
    lo, hi = np.percentile(codes, 1, axis=0), np.percentile(codes, 99, axis=0)
    for d in range(3):  # row d: coordinate d at lo + t (hi - lo), the others at their median
        np.testing.assert_allclose(sweep[d, :, d], lo[d] + np.array(t) * (hi[d] - lo[d]), rtol=1e-6)
        others = [k for k in range(3) if k != d]
        np.testing.assert_allclose(sweep[d, :, others], np.median(codes, 0)[others][:, None].repeat(5, 1))
        assert rows[d].startswith(f"latent {d + 1}: ")
    assert t == [0, 0.25, 0.5, 0.75, 1] and "1st percentile (t=0)" in title and "99th (t=1)" in title


def test_the_decoder_map_of_a_2d_code_is_labelled_with_its_coordinates(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    codes = rng.normal(0, 1, (500, 2)) + [10, -20]
    drawn, seen = [], []
    monkeypatch.setattr(figures, "image_grid", lambda *a: drawn.append(a) or "map.png")
    evaluate._decoder_map(codes, codes, lambda z: seen.append(np.asarray(z)) or np.zeros((len(z), 4, 4, 3)), 3,
                          (4, 4, 3), str(tmp_path / "map.png"))
    grid = seen[0].reshape(3, 3, 2)
    _, _, title, cols, rows = drawn[0]
    np.testing.assert_allclose([float(c) for c in cols], grid[0, :, 0], atol=0.006)  # latent 1, not offsets
    np.testing.assert_allclose([float(r.split("= ")[1]) for r in rows], grid[:, 0, 1], atol=0.006)
    assert rows[0].startswith("latent 2 = ") and grid[0, 0, 1] > grid[-1, 0, 1]  # the top row is the high end
    np.testing.assert_allclose(grid[:, :, 0].min(), np.percentile(codes[:, 0], 1), rtol=1e-6)


@pytest.mark.parametrize("dim", [3, 6])
def test_the_decoder_maps_pc_axes_are_the_latent_plots_own(tmp_path, monkeypatch, dim):
    # The scatter of a long code fit PCA on the training codes, the decoder map on the test codes, each with its
    # own signs: "PC 2" of one figure correlated -0.80 with "PC 2" of the other. One projection now serves both.
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(dim, dim))
    train, test = (rng.normal(size=(n, dim)) * np.geomspace(3, 0.3, dim) @ mix for n in (400, 100))
    drawn, seen = [], []
    monkeypatch.setattr(figures, "image_grid", lambda *a: drawn.append(a) or "map.png")
    evaluate._decoder_map(test, train, lambda z: seen.append(np.asarray(z)) or np.zeros((len(z), 4, 4, 3)), 5,
                          (4, 4, 3), str(tmp_path / "map.png"))
    pts, axes, note = evaluate.project_to_3d(test, train)
    mean, basis = evaluate.code_axes(train, 3)
    grid = (seen[0] - mean) @ basis.T  # the decoded points in the coordinates of the latent plots
    _, _, title, cols, rows = drawn[0]
    np.testing.assert_allclose(grid[:5, 0], [float(c) for c in cols], atol=0.01)  # PC 1 across, as labelled
    np.testing.assert_allclose(grid[::5, 1], [float(r.split("= ")[1]) for r in rows], atol=0.01)  # PC 2 down
    np.testing.assert_allclose(grid[:, 2], 0, atol=1e-6)  # the plane of PC 1 and PC 2
    np.testing.assert_allclose(grid[:5, 0].min(), np.percentile(pts[:, 0] if dim > 3 else
                                                                (test - mean) @ basis[0], 1), rtol=1e-5)
    if dim == 3:  # the latent plots show latent coordinates: the title says where the plane lies in them
        assert axes == ["latent 1", "latent 2", "latent 3"] and "; PC 1 = (" in title and "; PC 2 = (" in title
    else:
        assert axes[:2] == ["PC 1 of the code", "PC 2 of the code"] and "PC 1 of the code across" in title
        assert note.startswith("6-D codes projected to 3-D with PCA, fit on the training codes: ")
        assert note.endswith(" % of their variance")


def test_coordinate_labels_have_the_decimals_their_spacing_needs():
    assert evaluate.coordinate_labels(np.linspace(-1, 1, 5)) == ["-1.00", "-0.50", "0.00", "0.50", "1.00"]
    assert evaluate.coordinate_labels(np.linspace(-0.002, 0.006, 5)) == [
        "-0.0020", "0.0000", "0.0020", "0.0040", "0.0060"]  # "-0.00, 0.00, 0.00, 0.00, 0.01" before
    assert evaluate.coordinate_labels(np.array([-0.0001, 0.0001])) == ["-0.00010", "0.00010"]
    assert evaluate.coordinate_labels(np.array([3.0])) == ["3.00"]
    assert evaluate.coordinate_labels(np.array([np.nan, np.nan])) == ["nan", "nan"]  # a diverged model's codes


def test_one_test_image_evaluates_without_a_decoder_map(run, tmp_path):
    """A plane needs three codes: with one (an IndexError before) or two the page has no decoder map."""
    data = make_image_folder(tmp_path / "one", classes=("cat", "dog"), n_train=2, n_test=1)
    os.remove(os.path.join(data, "test", "dog", "0000.png"))
    with pytest.warns(UserWarning, match="class folder\\(s\\) with no images: test/dog"):
        evaluate.run(run["cfg"].workdir, out=str(tmp_path / "ev"), data=data, interp_steps=2)
    assert not os.path.exists(tmp_path / "ev" / "decoder_map.png")
    assert os.path.exists(tmp_path / "ev" / "class_means.png")


def test_a_run_with_encoder_heads_trains_restores_and_evaluates_with_its_chosen_codes(tmp_path, capsys):
    """--encoder-heads 2: config.json keeps it, so the restored model has the encoder's 2 x 3 outputs; the codes
    in latents.npz are the chosen ones, with the head each came from; the clean test MSE is the training loop's;
    metrics.json, the terminal and the page give each head's share of the test images."""
    data = make_image_folder(tmp_path / "data", n_train=16, n_test=4)
    cfg = tiny_config(tmp_path, data=data, max_steps=2, encoder_heads=2)
    trained = train_and_evaluate(cfg, progress=False)
    m = evaluate.run(cfg.workdir, out=str(tmp_path / "eval"), interp_steps=2)
    _, state, ds = evaluate.restore(cfg.workdir)
    assert json.load(open(os.path.join(cfg.workdir, "config.json")))["encoder_heads"] == 2
    last = max((n for n in state.params["encoder"] if n.startswith("Dense_")), key=lambda n: int(n[6:]))
    assert state.params["encoder"][last]["kernel"].shape[-1] == 6
    model = evaluate.model_from_config(cfg, ds.image_shape)
    x = ds.test_images / np.float32(255)
    codes = model.apply({"params": state.params}, x, method="encode")
    proposals = np.asarray(model.apply({"params": state.params}, x, method="proposals"))
    drawn = model.apply({"params": state.params}, proposals.reshape(-1, 3), method="decode")
    heads = ((np.asarray(drawn).reshape(len(x), 2, *x.shape[1:]) - x[:, None]) ** 2).mean(axis=(2, 3, 4)).argmin(1)
    saved = np.load(tmp_path / "eval" / "latents.npz")
    np.testing.assert_allclose(saved["codes"], codes, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(saved["heads"], heads)
    assert m["encoder_heads"]["wins"] == pytest.approx(np.bincount(heads, minlength=2) / len(x))
    assert m["models"]["autoencoder"]["test_mse"] == pytest.approx(trained["test_mse"], rel=1e-4)
    shares = f"head 1 gave the codes of {m['encoder_heads']['wins'][0]:.1%}".replace("%", " %")
    assert f"encoder heads: {shares} of the test images, head 2 " in capsys.readouterr().out
    page = html.unescape(open(tmp_path / "eval" / "index.html").read())
    assert ("the encoder proposes 2 codes per image, and the one the decoder draws nearest the image is its code "
            f"({shares} of the test images, head 2 ") in page
    assert '<h2>latent space by encoder head</h2>' in page and 'src="latent_heads.png"' in page
    view = open(tmp_path / "eval" / "latent_3d.html").read()
    assert json.loads(re.search(r"const D = (\{.*?\});\n", view).group(1))["h"] == heads.tolist()


def test_the_heads_line_names_the_heads_that_gave_almost_no_code():
    even = pages.heads_text([0.25, 0.25, 0.3, 0.2])
    assert even == ("head 1 gave the codes of 25.0 % of the test images, head 2 25.0 %, head 3 30.0 %, head 4 20.0 %")
    # eight heads on seed 2 of the quick model (docs/quality.md, thirty-first session): head 7 at 0.6 %
    eight = pages.heads_text([0.121, 0.135, 0.172, 0.132, 0.123, 0.146, 0.006, 0.165])
    assert eight.endswith("head 8 16.5 %; head 7 gave almost none: a head learns only from the images whose code it "
                          "gives, so one that falls behind may never catch up, and it still costs a decoder pass per "
                          "image (fewer --encoder-heads cost less)")
    assert "; heads 2 and 3 gave almost none:" in pages.heads_text([0.9, 0.0, 0.03, 0.07])  # 1/16: 0.0625
