"""tools/screenshot.py without a browser: the PNG it would write, and its refusal to write over a file."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from jaxae.config import UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "screenshot.py")
# what evaluate.py writes beside latent_3d.html (tests/test_evaluate.py checks the same list)
EVALUATE_FILES = {"index.html", "metrics.json", "latents.npz", "latents.csv", "latent_3d.html", "latent_3d.png",
                  "latent_pairs.png", "interpolation.png", "reconstructions.png", "traversal.png", "neighbours.png",
                  "loss_curve.png"}


@pytest.fixture(scope="module")
def screenshot():
    spec = importlib.util.spec_from_file_location("screenshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_default_png_is_none_of_evaluates_files(tmp_path, screenshot):
    page = tmp_path / "latent_3d.html"
    out = screenshot.output_path(str(page))
    assert os.path.dirname(out) == str(tmp_path) and os.path.basename(out) == "latent_3d_page.png"
    assert os.path.basename(out) not in EVALUATE_FILES


def test_an_existing_png_is_refused_unless_forced(tmp_path, screenshot):
    page = tmp_path / "latent_3d.html"
    (tmp_path / "latent_3d.png").write_bytes(b"evaluate's figure")
    with pytest.raises(UsageError, match="--force"):
        screenshot.output_path(str(page), str(tmp_path / "latent_3d.png"))
    forced = str(tmp_path / "latent_3d.png")
    assert screenshot.output_path(str(page), forced, force=True) == forced
    assert screenshot.output_path(str(page), str(tmp_path / "other.png")) == str(tmp_path / "other.png")


def test_the_script_refuses_in_one_line_with_exit_2_and_leaves_the_file(tmp_path):
    # checked before the browser is looked for, so this runs (and fails the same way) with or without Chromium
    page = tmp_path / "latent_3d.html"
    page.write_text("<html></html>")
    for name in ("latent_3d_page.png", "latent_3d.png"):
        (tmp_path / name).write_bytes(b"a good result")
    for args in ([], ["--out", str(tmp_path / "latent_3d.png")]):
        proc = subprocess.run([sys.executable, SCRIPT, str(page), "--pin", "0", *args], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "exists" in proc.stderr, proc.stderr
    assert {p.read_bytes() for p in tmp_path.glob("*.png")} == {b"a good result"}
