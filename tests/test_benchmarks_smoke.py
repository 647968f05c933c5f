"""The benchmark suite's smoke mode runs and reports finite ratios."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CORE_CASES = [
    "pipeline",
    "pipeline_f32",
    "dot_cached",
    "build_L",
    "dot",
    "dot_k10",
    "tensordot",
    "tocsr",
    "op_sub",
    "op_pow",
    "op_exp",
    "op_mul",
]
TARGETED = [
    ("pipeline", "time"),
    ("pipeline", "memory"),
    ("dot", "time"),
    ("tocsr", "time"),
    ("op_sub", "time"),
    ("op_pow", "time"),
    ("op_exp", "time"),
    ("op_mul", "time"),
]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--smoke",
            "--json",
            str(out),
            *("--scale", "--scale-sources", "3000", "--scale-imshape", "256", "256"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ratios" in proc.stdout
    return json.loads(out.read_text())


def test_every_case_is_reported(smoke):
    from benchmarks.cases import CASES

    assert set(smoke["results"]) == set(CASES)
    for case in CORE_CASES:
        for impl in ("numpy", "sparse3d"):
            entry = smoke["results"][case][impl]
            assert entry["status"] == "ok", (case, impl, entry)
            assert entry["repeats"] >= 2 and entry["median_s"] > 0


def test_targeted_ratios_are_finite(smoke):
    rows = {(r["case"], r["kind"], r["baseline"]): r for r in smoke["ratios"] if r["impl"] == "sparse3d"}
    for case, kind in TARGETED:
        row = rows[(case, kind, "numpy")]
        assert row["target"] is not None
        assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
    for row in smoke["ratios"]:
        assert row["ratio"] is not None and math.isfinite(row["ratio"]), row


def test_sparse3d_computes_the_same_as_the_baseline(smoke):
    rows = {
        r["case"]: r
        for r in smoke["ratios"]
        if r["impl"] == "sparse3d" and r["baseline"] == "numpy" and r["kind"] == "time"
    }
    for case in CORE_CASES:
        assert rows[case]["check"] == "ok", rows[case]


def test_optional_cases_are_ratios_when_available(smoke):
    for case in ("xarray_sum", "xarray_sel", "fit"):
        if smoke["results"][case]["sparse3d"]["status"] != "ok":
            continue
        ratios = [r for r in smoke["ratios"] if r["case"] == case and r["impl"] == "sparse3d"]
        assert ratios and all(math.isfinite(r["ratio"]) for r in ratios)


def test_import_time_is_measured(smoke):
    imp = smoke["imports"]["sparse3d"]
    assert imp["status"] == "ok" and 0 < imp["cumulative_s"] < 30


def test_issue15_rows_are_reported(smoke):
    """Physical limit, spread over 11 runs, float32 vs float64 (interleaved), reused dot."""
    rows = {(r["case"], r["impl"], r["baseline"], r["kind"]): r for r in smoke["ratios"]}
    limit = rows[("pipeline", "sparse3d", "physical limit", "time")]
    assert limit["target"] == 6.0 and limit["ratio"] > 1  # nothing beats the memory system
    assert smoke["meta"]["limit"]["bytes_per_s"] > 1e8
    # float32 against its own limit, and the float32 / float64 ratio of a pipeline at its limit
    m = smoke["meta"]["limit"]
    assert rows[("pipeline_f32", "sparse3d", "physical limit", "time")]["ratio"] > 1
    floor = rows[("pipeline_f32", "physical limit", "physical limit@pipeline", "time")]
    assert floor["ratio"] == pytest.approx(m["pipeline_f32_bytes"] / m["pipeline_bytes"])
    assert 0.5 < floor["ratio"] < 1  # positions do not shrink with the float type
    spread = rows[("pipeline", "sparse3d", "sparse3d", "spread")]
    assert spread["target"] == 1.3 and spread["ratio"] >= 1
    assert smoke["results"]["pipeline"]["sparse3d"]["repeats"] >= 11
    f32 = rows[("pipeline_f32", "sparse3d", "sparse3d@pipeline", "time")]
    assert f32["target"] == 0.6 and math.isfinite(f32["ratio"])
    assert smoke["results"]["pipeline_f32"]["sparse3d@pipeline"]["status"] == "ok"
    assert rows[("dot_cached", "sparse3d", "numpy", "time")]["target"] == 1.0
    assert rows[("pipeline", "sparse3d", "numpy", "time")]["target"] == 0.25


def test_scale_case_runs_tiny(smoke):
    scale = smoke["scale"]
    assert scale["status"] == "ok", scale
    assert scale["position_dtype"] == "int16" and scale["image_dtype"] == "float32"
    assert 0.9 < scale["flux_fraction"] < 1.01  # a normalised PSF: the image holds the flux
    assert 0 < scale["peak_rss_bytes"] < scale["limit_bytes"]
    check = next(c for c in smoke["absolute"] if "peak RSS" in c["name"])
    assert check["passed"] is True


def test_psf_and_shift_cases_have_ratios(smoke):
    for case in ("psf_gaussian", "psf_gaussian_derivs", "shift", "shift_per_source"):
        assert smoke["results"][case]["sparse3d"]["status"] == "ok", smoke["results"][case]
    rows = {(r["case"], r["baseline"]): r for r in smoke["ratios"] if r["impl"] == "sparse3d"}
    keys = ("psf_gaussian", "sparse3d:build_L"), ("shift", "sparse3d:op_mul")
    for key in (*keys, ("shift_per_source", "sparse3d:op_mul")):
        assert rows[key]["target"] is not None and math.isfinite(rows[key]["ratio"]), rows[key]


def test_compat_jitter_loop_smoke(tmp_path):
    """benchmarks.compat: legacy and 2.x loops run, agree, and give finite ratios (no 1.2.11)."""
    out = tmp_path / "compat.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.compat", "--smoke", "--repeats", "2", "--rounds"]
        + ["--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r["case"] for r in results] == ["scene", "roiscene"]
    for r in results:
        assert math.isfinite(r["ratios"]["legacy / 2.x"]) and r["ratios"]["legacy / 2.x"] > 0
        assert math.isfinite(r["cpu_ratios"]["legacy / 2.x"]) and r["cpu_ratios"]["legacy / 2.x"] > 0
        assert max(r["max_rel_difference"].values()) <= 1e-12
        assert all(len(r["rounds"][name]) == 2 for name in ("legacy", "2.x"))  # per round
        assert all(len(t) == 3 and t[0] > 0 and t[2] >= 0 for t in r["rounds"]["legacy"])  # wall, cpu, faults
    assert proc.stdout.count("every round: wall ms / CPU ms / minor page faults") == 2


def test_distributed_scene_fit_smoke():
    """benchmarks/distributed_fit.py --smoke: the distributed fit of its generated scene on a
    LocalCluster equals the eager fit (the script exits 1 otherwise) and reports memory."""
    pytest.importorskip("distributed")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.distributed_fit", "--smoke"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"] and out["max_dw_over_sigma"] < 1e-3 and out["max_rel_err_diff"] < 1e-2
    dist = out["distributed"]
    assert dist["n_tiles"] == 16 and len(dist["worker_peak_mib"]) == 2
    assert all(math.isfinite(v) for v in dist["timings_s"].values())


def test_fit_sky_smoke():
    """benchmarks.fit_sky runs and prints a ratio for every sky model and diagnostic."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.fit_sky", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for what in ('background="plane"', "BilinearGrid(64)", ".source_chi2", ".flags", ".covariance()"):
        line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith(what))
        assert math.isfinite(float(line.split()[-1])), line


@pytest.mark.parametrize("noise", ["tutorial", "0.01"])
def test_stamp_groups_smoke(noise, capsys):
    from benchmarks import stamp_groups

    stamp_groups.main(
        ["--imsize", "64", "--small", "60", "--big", "4", "--repeat", "1", "--no-all41", "--noise", noise]
    )
    out = capsys.readouterr().out
    assert f"noise: {noise}" in out and "| fit |" in out
