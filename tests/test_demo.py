"""The main job (python -m sparse3d demo) on a small scene, and its command line."""

import re
import subprocess
import sys

import numpy as np
import pytest

import sparse3d
from sparse3d import __main__ as cli
from sparse3d._demo import READ_NOISE, error_map, run_demo, simulate_data


def test_simulated_noise_has_the_stated_variance():
    # Poisson(model) + N(0, READ_NOISE): variance model + READ_NOISE**2 (the old integer-truncated
    # read noise had variance 6.9 instead of 9)
    rng = np.random.default_rng(5)
    model = np.repeat([0.0, 2.0, 50.0], 200_000).reshape(3, -1)
    data = simulate_data(model, rng)
    assert data.dtype == np.float64
    np.testing.assert_allclose(data.mean(axis=1), model[:, 0], atol=0.05)
    np.testing.assert_allclose(data.var(axis=1), model[:, 0] + READ_NOISE**2, rtol=0.02)
    np.testing.assert_allclose(error_map(np.array([-4.0, 0.0, 16.0])), np.sqrt([9.0, 9.0, 25.0]))


def test_demo_fit_is_weighted_and_its_statistics_are_honest(tmp_path, capsys):
    out = run_demo(imshape=(128, 128), nsources=300, output=tmp_path, seed=3)
    text = capsys.readouterr().out
    assert "L.tocsr()" in text and "pulls" in text and "L.fit agrees" in text
    assert out["recipe_max_rel_difference"] < 1e-8
    assert (tmp_path / "model_image.png").stat().st_size > 1000
    assert (tmp_path / "truth_vs_measured.png").stat().st_size > 1000
    # independent reference: chi2 and degrees of freedom from the returned arrays
    data, model, errors = out["data"], out["fit_model"], out["errors"]
    chi2 = np.sum(((data - model) / errors) ** 2)
    dof = data.size - 300  # every star has pixels in the image
    assert out["dof"] == dof
    np.testing.assert_allclose(out["reduced_chi2"], chi2 / dof, rtol=1e-10)
    assert 0.95 < out["reduced_chi2"] < 1.05
    np.testing.assert_allclose(errors, np.sqrt(np.clip(model, 0, None) + READ_NOISE**2), rtol=0.5)
    # the weights are the weighted least-squares solution (dense reference)
    pull = (out["weights"] - out["truth"]) / out["weights_err"]
    np.testing.assert_allclose(out["pull_std"], np.std(pull), rtol=1e-12)
    assert 0.8 < out["pull_std"] < 1.2
    bright = out["truth"] > 100
    assert 0.7 < np.std(pull[bright]) < 1.3
    np.testing.assert_allclose(out["median_abs_pull_bright"], np.median(np.abs(pull[bright])), rtol=1e-12)
    assert f"= {out['reduced_chi2']:.4f}" in text


def test_demo_fit_matches_dense_weighted_least_squares():
    out = run_demo(imshape=(40, 48), nsources=30, seed=1, plots=False, recipe=False)
    from sparse3d.testing import gaussian_scene

    sc = gaussian_scene(imshape=(40, 48), nsources=30, seed=1)
    R, C = sc["x3d"] - sc["row_phase"], sc["y3d"] - sc["col_phase"]
    psf = np.exp(-0.5 * (R**2 + C**2)) / (2 * np.pi)
    A = np.zeros((40, 48, 30))
    for s in range(30):
        for (i, j), v in np.ndenumerate(psf[:, :, s]):
            r, c = sc["row3d"][i, j, s], sc["col3d"][i, j, s]
            if 0 <= r < 40 and 0 <= c < 48:
                A[r, c, s] += v
    A = A.reshape(-1, 30) / out["errors"].reshape(-1, 1)
    w, *_ = np.linalg.lstsq(A, out["data"].ravel() / out["errors"].ravel(), rcond=None)
    np.testing.assert_allclose(out["weights"], w, rtol=1e-8, atol=1e-8 * np.abs(w).max())
    np.testing.assert_allclose(out["weights_err"], np.sqrt(np.diag(np.linalg.inv(A.T @ A))), rtol=1e-8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seed": -1}, "seed"),
        ({"nsources": 0}, "nsources"),
        ({"imshape": (10, -2)}, "imshape"),
    ],
)
def test_run_demo_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_demo(**{"imshape": (16, 16), "nsources": 3, "plots": False, **kwargs})


def test_run_demo_checks_the_output_folder_before_computing(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError, match="not writable"):
        run_demo(imshape=(16, 16), nsources=3, output=blocker / "figures")
    assert "[1/" not in capsys.readouterr().err  # no step ran


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.mark.parametrize(
    "argv, option",
    [
        (["--seed", "-1"], "--seed"),
        (["--seed", "1.5"], "--seed"),
        (["--nsources", "-5"], "--nsources"),
        (["--nsources", "0"], "--nsources"),
        (["--imshape", "64", "-3"], "--imshape"),
        (["--imshape", "0", "64"], "--imshape"),
    ],
)
def test_cli_bad_numbers_give_the_demo_usage_and_a_clear_error(capsys, argv, option):
    code, out, err = _cli(capsys, "demo", *argv)
    assert code == 2
    assert "Traceback" not in err
    assert err.startswith("usage: python -m sparse3d demo ")  # the demo's usage line, not the top one
    assert f"error: argument {option}" in err and ("positive" in err or "integer" in err)


def test_cli_unwritable_output_fails_before_any_compute(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err = _cli(
        capsys, "demo", "--imshape", "16", "16", "--nsources", "3", "--output", str(blocker)
    )
    assert code == 2
    assert "error: argument --output" in err and str(blocker) in err
    assert "[1/" not in err and out == ""  # nothing was computed


def test_cli_help_documents_every_option_in_plain_text(capsys):
    code, out, _ = _cli(capsys, "demo", "--help")
    assert code == 0
    assert "``" not in out and "`" not in out
    demo = cli.build_parser()._subparsers._group_actions[0].choices["demo"]
    for action in demo._actions:
        assert action.help, f"{action.option_strings} has no help text"
        for opt in action.option_strings:
            assert opt in out
    code, top, _ = _cli(capsys, "--help")
    assert code == 0 and "``" not in top and "demo" in top and "--version" in top


def test_cli_version(capsys):
    code, out, _ = _cli(capsys, "--version")
    assert code == 0 and out.strip() == f"sparse3d {sparse3d.__version__}"


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
    assert "64x80 image, 50 sources" in res.stdout and "reduced chi2" in res.stdout
    assert re.search(r"\[(\d+)/\1\] (re)?fit", res.stderr) is None  # the fit is not the last step
    assert re.search(r"\[(\d+)/\1\] the tutorial's recipe", res.stderr)  # progress reaches n/n
    bad = subprocess.run(cmd[:4] + ["--seed", "-1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--seed" in bad.stderr
