"""bench/throughput.py: a tiny end-to-end run, and a stopped run keeping what it measured;
bench/profile_step.py's reading of the compiled program's convolutions."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, load_bench

SCRIPT = os.path.join(REPO, "bench", "throughput.py")


def test_tiny_run_prints_rows_as_they_finish_and_writes_json(tmp_path):
    out = tmp_path / "tp.json"
    # 4 passes of 2: the CPU step as programs (jaxae.train._PassSteps), its FLOPs summed over them
    proc = subprocess.run([sys.executable, SCRIPT, "--preset", "tiny", "--width", "32", "--stages", "1", "--microbatch",
                           "2", "--batch-sizes", "8", "--devices", "1", "--no-torch", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    # the row's summary comes before the table, as soon as the worker measured it
    summary = next(i for i, l in enumerate(lines) if l.strip().startswith("jaxae 1 device(s) batch 8:"))
    table = next(i for i, l in enumerate(lines) if l.startswith("impl "))
    assert summary < table
    assert any("compiled in" in l for l in lines[:table])
    result = json.loads(out.read_text())
    assert "incomplete" not in result
    (row,) = result["rows"]
    assert row["impl"] == "jaxae" and row["batch"] == 8 and row["devices"] == 1 and row["microbatch"] == 2
    assert row["img_s_best"] >= row["img_s_median"] > 0
    assert row["flops_per_img"] > 0 and 0 < row["pct_matmul_peak"]
    # width 32, one stage: the convs at 16x16 run as Winograd's, with fewer FLOPs than lax's direct convs
    assert row["direct_flops_per_img"] > 1.2 * row["flops_per_img"]
    assert row["pct_matmul_peak_direct"] == pytest.approx(
        row["pct_matmul_peak"] * row["direct_flops_per_img"] / row["flops_per_img"])
    (worker,) = result["jax_workers"]
    assert worker["encode"]["images"] == 10000 and worker["peak_rss_mb"] > 0
    from jaxae import evaluate
    assert worker["encode"]["batch"] == evaluate.split_batch()  # evaluate.py's own pass over the test split


def test_a_stopped_run_prints_and_saves_the_rows_measured_so_far(tmp_path, monkeypatch, capsys):
    bench = load_bench("throughput")
    row = {"impl": "jaxae", "backend": "cpu", "devices": 1, "batch": 8, "steps_per_call": 1, "microbatch": 8,
           "img_s_best": 100.0, "img_s_median": 90.0, "compile_s": 1.0}
    calls = []

    def fake_worker(kind, argv, ndev=0, on_row=None):
        calls.append((kind, ndev))
        on_row(dict(row, devices=ndev))
        if ndev == 2:  # `timeout` (SIGTERM) or Ctrl-C while the second worker runs
            raise KeyboardInterrupt
        return {"backend": "cpu", "devices": ndev, "rows": [dict(row, devices=ndev)], "device_kind": "cpu",
                "matmul_peak_flops": 1e11,
                "encode": {"images": 10000, "batch": 250, "seconds_best": 1.0, "img_s_best": 1e4},
                "peak_rss_mb": 100.0, "keep_freed_memory": True, "cpu_programs_inline": True}

    monkeypatch.setattr(bench, "_run_worker", fake_worker)
    out = tmp_path / "tp.json"
    rc = bench.main(["--preset", "tiny", "--batch-sizes", "8", "--devices", "1,2", "--out", str(out)])
    assert rc == 130
    assert calls == [("jax", 1), ("jax", 2)]  # the torch worker never started
    result = json.loads(out.read_text())
    assert result["incomplete"] is True
    assert [r["devices"] for r in result["rows"]] == [1, 2]
    text = capsys.readouterr().out
    assert "stopped before the end" in text and "impl " in text


def test_on_an_accelerator_one_jax_worker_covers_every_device(tmp_path, monkeypatch):
    bench = load_bench("throughput")
    calls = []

    gpu_worker = {"backend": "gpu", "devices": 8, "rows": [], "device_kind": "gpu", "matmul_peak_flops": 1e14,
                  "encode": {"images": 10000, "batch": 500, "seconds_best": 0.01, "img_s_best": 1e6},
                  "peak_rss_mb": 100.0}

    def fake_worker(kind, argv, ndev=0, on_row=None):
        calls.append((kind, ndev))
        on_row({"impl": "jaxae" if kind == "jax" else "torch eager", "backend": "gpu", "batch": 8, "img_s_best": 1e5,
                "img_s_median": 1e5, "devices": 8, "steps_per_call": 1, "microbatch": 8, "compile_s": 1.0})
        return gpu_worker if kind == "jax" else {"rows": [], "peak_rss_mb": 100.0, "torch": "2.11"}

    monkeypatch.setattr(bench, "_run_worker", fake_worker)
    assert bench.main(["--preset", "tiny", "--batch-sizes", "8", "--out", str(tmp_path / "tp.json")]) == 0
    assert calls == [("jax", 1), ("torch", 0)]  # no second jax worker asking for 2 devices


def test_every_worker_failing_is_exit_1_not_an_empty_table_and_0(tmp_path, monkeypatch, capsys):
    bench = load_bench("throughput")
    monkeypatch.setattr(bench, "_run_worker", lambda kind, argv, ndev=0, on_row=None: {"error": "exit 1"})
    assert bench.main(["--preset", "tiny", "--batch-sizes", "8", "--devices", "1", "--no-torch",
                       "--out", str(tmp_path / "tp.json")]) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: no measurement finished")


@pytest.mark.parametrize("flag,value,bad", [("--steps-per-call", "1,ep", "ep"), ("--devices", "x", "x"),
                                            ("--batch-sizes", "0,256", "0"), ("--batch-sizes", ",", ",")])
def test_a_bad_list_is_refused_before_any_worker_starts(tmp_path, monkeypatch, capsys, flag, value, bad):
    bench = load_bench("throughput")
    monkeypatch.setattr(bench, "_run_worker", lambda *a, **k: pytest.fail("a worker started"))
    assert bench.main(["--preset", "tiny", flag, value, "--out", str(tmp_path / "tp.json")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {flag} {value!r}: {bad!r} is not auto or comma-separated")


def test_a_failed_worker_is_reported_with_its_last_lines(tmp_path):
    bench = load_bench("throughput")
    rows = []
    w = bench._run_worker("jax", ["--width", "0"], 1, rows.append)  # the worker's config check fails
    assert rows == []
    assert "failed with exit" in w["error"] and "--width" in w["error"]


@pytest.mark.parametrize("row,expected", [
    ({"impl": "torch eager", "batch": 256, "img_s_best": 1234.4, "img_s_median": 1000.0},
     "torch eager batch 256: 1,234 img/s best, 1,000 median"),
    ({"impl": "torch.compile", "batch": 64, "error": "RuntimeError: no compiler"},
     "torch.compile batch 64: RuntimeError: no compiler"),
])
def test_row_summary(row, expected):
    assert load_bench("throughput")._row_summary(row) == expected


def test_ratios_per_batch_size_and_each_side_at_its_best_batch_size():
    def row(impl, batch, rate):
        return {"impl": impl, "batch": batch, "img_s_best": rate}
    rows = [row("jaxae", 256, 80.0), row("jaxae", 1024, 110.0), row("torch eager", 256, 30.0),
            row("torch eager", 1024, 50.0), row("torch.compile", 256, 40.0), row("torch.compile", 1024, 20.0),
            {"impl": "torch.compile", "batch": 4096, "error": "killed"}, row("jaxae", 4096, 120.0)]
    r = load_bench("throughput")._ratios(rows)
    assert set(r) == {"256", "1024", "best"}  # 4096 has no PyTorch figure: no ratio
    assert r["256"]["ratio"] == pytest.approx(2.0) and r["256"]["torch_impl"] == "torch.compile"
    assert r["1024"]["ratio"] == pytest.approx(2.2) and r["1024"]["torch_impl"] == "torch eager"
    assert (r["best"]["jaxae_batch"], r["best"]["torch_batch"]) == (4096, 1024)
    assert r["best"]["ratio"] == pytest.approx(120.0 / 50.0)


def test_profile_step_finds_each_convolution_and_its_flops():
    """profile_step --convs: the compiled program's convolutions by shape, with their FLOPs (CPU)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    profile = load_bench("profile_step")
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 6))

    def f(x, w):  # forward, input gradient and kernel gradient: three convolutions
        return jnp.sum(jnp.sin(lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))))

    hlo = jax.jit(jax.grad(f, argnums=(0, 1))).lower(x, w).compile().as_text()
    convs = sorted(profile.conv_shapes(hlo).values())
    assert len(convs) == 3, convs
    # each is 2 x (8 x 8 x 2 output positions) x (3 x 3 x 4 inputs) x 6 outputs multiply-adds
    assert all(flops == 2 * 8 * 8 * 2 * 9 * 4 * 6 for _, flops in convs), convs
    assert any(shape.startswith("f32[2,8,8,4] * f32[3,3,4,6] -> f32[2,8,8,6]") for shape, _ in convs), convs


def test_profile_step_tells_xlas_own_dots_and_convolutions_from_fused_ones():
    """eigen_ops: the top-level dot and convolution of a program (Eigen thunks, whose events end before their work),
    not the convolution inside a fusion, nor other instructions."""
    profile = load_bench("profile_step")
    hlo = """%ynn_fused_computation.2 (p0: f32[2,8,8,4], p1: f32[3,3,4,6]) -> f32[2,8,8,6] {
  %p0 = f32[2,8,8,4]{3,2,1,0} parameter(0)
  %p1 = f32[3,3,4,6]{3,2,1,0} parameter(1)
  ROOT %convolution.7 = f32[2,8,8,6]{3,2,1,0} convolution(%p0, %p1), window={size=3x3 pad=1_1x1_1}
}

ENTRY %main.9 (a: f32[2,8,8,4], b: f32[3,3,4,6], c: f32[16,32], d: f32[32,8]) -> f32[2,8,8,6] {
  %a = f32[2,8,8,4]{3,2,1,0} parameter(0)
  %b = f32[3,3,4,6]{3,2,1,0} parameter(1)
  %c = f32[16,32]{1,0} parameter(2)
  %d = f32[32,8]{1,0} parameter(3)
  %dot_general.3 = f32[16,8]{1,0} dot(%c, %d), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %conv_general_dilated.1 = f32[2,8,8,6]{3,2,1,0} convolution(%a, %b), window={size=3x3 pad=1_1x1_1}
  %add_fusion.4 = f32[2,8,8,6]{3,2,1,0} fusion(%conv_general_dilated.1), kind=kLoop, calls=%fused_add
  ROOT %ynn_fusion.5 = f32[2,8,8,6]{3,2,1,0} fusion(%a, %b), kind=kCustom, calls=%ynn_fused_computation.2
}
"""
    assert profile.eigen_ops(hlo) == {"dot_general.3", "conv_general_dilated.1"}


def _bash(script, env, *args):
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], **env}
    return subprocess.run(["bash", os.path.join(REPO, "bench", script), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=env)


@pytest.mark.parametrize("env,args,message", [
    ({"PART": "variant"}, [], "error: PART=variant: write PART=perf (the default), PART=variants or PART=sweep"),
    ({"PART": "variants", "VARIANTS": "a:--noise 0.1;b --loss l1"}, [], "error: VARIANTS entry 'b --loss l1'"),
    ({}, ["--workdir"], "error: bench/h100.sh takes no arguments (got '--workdir')"),
])
def test_h100_sh_refuses_a_bad_setting_before_any_work(tmp_path, env, args, message):
    # a typo found on the device machine costs device time: PART=variant ran the 10-minute perf mode
    proc = _bash("h100.sh", {**env, "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs")}, *args)
    assert proc.returncode == 2 and proc.stdout.startswith(message), proc.stdout + proc.stderr
    assert not os.path.exists(tmp_path / "out") and not os.path.exists(tmp_path / "runs")


def test_h100_sh_variants_dry_run_trains_evaluates_and_returns_its_files(tmp_path):
    from conftest import make_image_folder
    data = make_image_folder(tmp_path / "data", n_train=8, n_test=4)
    out = tmp_path / "out"
    proc = _bash("h100.sh", {"PART": "variants", "VARIANTS": "plain: --noise 0", "DATA": data, "OUT": str(out),
                             "RUNS": str(tmp_path / "runs"), "TRAIN_FLAGS": "--preset tiny --max-steps 2",
                             "BUDGET": "250", "EVAL_FLAGS": "--best-codes 2"})
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert sorted(os.listdir(out)) == ["eval-plain.out", "log.txt", "metrics-plain.jsonl", "train-plain.out"]
    log = (out / "log.txt").read_text()
    assert "--- plain: train.py  --noise 0 --preset tiny --max-steps 2 wall:" in log and "INCOMPLETE" not in log
    assert "10-NN class accuracy" in log and "evaluate.py wall:" in log
    assert "then 2 Adam steps per image" in log  # EVAL_FLAGS reach evaluate.py


def test_startup_sh_usage(tmp_path):
    assert "Usage:" in _bash("startup.sh", {}, "--help").stdout
    proc = _bash("startup.sh", {"DATA": "x", "OUT": str(tmp_path)})
    assert proc.returncode == 2 and proc.stdout.startswith("error: name at least one variant")
    proc = _bash("startup.sh", {"DATA": "x", "OUT": str(tmp_path)}, "a b")
    assert proc.returncode == 2 and proc.stdout.startswith("error: variant 'a b': write NAME or NAME:VAR=VALUE")
