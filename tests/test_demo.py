"""The main job (python -m sparse3d demo) on a small scene."""

import re
import subprocess
import sys

import numpy as np

from sparse3d._demo import run_demo


def test_demo_recovers_brightnesses_and_writes_figures(tmp_path, capsys):
    out = run_demo(imshape=(128, 128), nsources=300, output=tmp_path, seed=3)
    text = capsys.readouterr().out
    assert "L.tocsr()" in text and "median" in text and "L.fit agrees" in text
    assert out["recipe_max_rel_difference"] < 1e-8
    assert (tmp_path / "model_image.png").stat().st_size > 1000
    assert (tmp_path / "truth_vs_measured.png").stat().st_size > 1000
    bright = out["truth"] > 1000
    np.testing.assert_allclose(out["weights"][bright], out["truth"][bright], rtol=0.2)
    assert 0.5 < out["reduced_chi2"] < 2


def test_demo_command_line(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "sparse3d",
        "demo",
        "--imshape",
        "64",
        "80",
        "--nsources",
        "50",
        "--output",
        str(tmp_path),
        "--no-plots",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert "64x80 image, 50 sources" in res.stdout
    assert re.search(r"\[(\d+)/\1\] fit", res.stderr) is None  # the fit is not the last step
    assert re.search(r"\[(\d+)/\1\] the tutorial's recipe", res.stderr)  # progress reaches n/n
    bad = subprocess.run(cmd[:4] + ["--nsources", "0"], capture_output=True, text=True)
    assert bad.returncode != 0 and "positive" in bad.stderr
