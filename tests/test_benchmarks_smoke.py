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
        [sys.executable, "-m", "benchmarks", "--smoke", "--json", str(out)],
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


def test_psf_and_shift_cases_have_ratios(smoke):
    for case in ("psf_gaussian", "psf_gaussian_derivs", "shift"):
        assert smoke["results"][case]["sparse3d"]["status"] == "ok", smoke["results"][case]
    rows = {(r["case"], r["baseline"]): r for r in smoke["ratios"] if r["impl"] == "sparse3d"}
    for key in (("psf_gaussian", "sparse3d:build_L"), ("shift", "sparse3d:op_mul")):
        assert rows[key]["target"] is not None and math.isfinite(rows[key]["ratio"]), rows[key]


def test_compat_jitter_loop_smoke(tmp_path):
    """benchmarks.compat: legacy and 2.x loops run, agree, and give finite ratios (no 1.2.11)."""
    out = tmp_path / "compat.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.compat", "--smoke", "--repeats", "2", "--json", str(out)],
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
        assert max(r["max_rel_difference"].values()) <= 1e-12


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
