"""Ratios against baselines and the pass/fail targets of issue 5.

Every reported number is a ratio ``candidate / baseline`` of medians
measured in the same suite run (the machine is shared and noisy).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from benchmarks.cases import CASES, compare_summaries

IMPORT_TARGET_S = 0.5
SEL_TARGET_S = 0.05
SCALING_TARGET = 12.0  # 10x the stored elements may cost at most 12x the time
CHECK_RTOL = 1e-6  # relative difference of result summaries counted as "same"


@dataclass(frozen=True)
class Target:
    """A ratio target: ``impl`` on ``case`` vs ``base_impl`` on ``base_case``."""

    case: str
    impl: str
    base_impl: str
    max_ratio: float
    kind: str = "time"
    base_case: str | None = None
    label: str = ""


#: Cases whose run-to-run spread (max / min over SPREAD_RUNS timed runs) is reported.
SPREAD_CASES = ("pipeline",)
SPREAD_RUNS = 11
SPREAD_TARGET = 1.3
LIMIT_TARGET = 6.0  # pipeline time / (minimum bytes / measured bandwidth)

TARGETS: list[Target] = [
    Target("pipeline", "sparse3d", "numpy", 0.25, label="issue 15 (issue 5: <= 0.8x)"),
    Target("dot_cached", "sparse3d", "numpy", 1.0, label="reused L vs cached CSR @ w"),
    Target("pipeline_f32", "sparse3d", "sparse3d", 0.6, label="float32 vs float64, interleaved"),
    Target("pipeline", "sparse3d", "legacy", 0.1, label=">= 10x faster than 1.2.11"),
    Target("pipeline", "sparse3d", "numpy", 1.2, kind="memory"),
    *(Target(op, "sparse3d", "numpy", 1.3) for op in ("op_sub", "op_pow", "op_exp", "op_mul")),
    Target("dot", "sparse3d", "numpy", 1.0, label="vs CSR construction + product"),
    Target("tocsr", "sparse3d", "numpy", 1.0, label="vs CSR construction + product"),
    Target("xarray_sum", "sparse3d", "sparse3d", 1.5, base_case="dot_ones"),
    Target("xarray_sel", "sparse3d", "sparse3d", 1.5, base_case="dot_ones"),
    Target("fit", "sparse3d", "numpy", 0.2, label=">= 5x faster than the tutorial's spsolve recipe"),
    Target("fit_frames100", "sparse3d", "sparse3d", 1.5, base_case="fit", label="100 frames <= 1.5x one"),
    Target("fit_weights_err", "sparse3d", "sparse3d", 0.5, base_case="fit", label="errors <= 0.5x a fit"),
    Target(
        "psf_gaussian",
        "sparse3d",
        "sparse3d",
        1.0,
        base_case="build_L",
        label="psf.Gaussian design <= the tutorial's expression on Sparse3D",
    ),
    Target("shift", "sparse3d", "sparse3d", 3.0, base_case="op_mul", label="fractional shift <= 3x a ufunc"),
    Target(
        "shift_per_source",
        "sparse3d",
        "sparse3d",
        6.0,
        base_case="op_mul",
        label="one fractional shift per source <= 6x a ufunc",
    ),
]


@dataclass
class Row:
    """One line of the ratio table."""

    case: str
    impl: str
    baseline: str
    kind: str
    value: float
    base_value: float
    ratio: float
    target: float | None = None
    passed: bool | None = None
    label: str = ""
    check: str | None = None

    def to_dict(self) -> dict:
        """JSON-serialisable form (non-finite numbers become ``None``)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d


def _median(results: dict, case: str, impl: str) -> float | None:
    entry = results.get(case, {}).get(impl)
    if not entry or entry.get("status") != "ok":
        return None
    return entry.get("median_s")


def _check(results: dict, case: str, impl: str, base: str) -> str | None:
    """``"ok"``, ``"DIFF <rel>"`` or ``"shape ..."``: do both give the same result?"""
    a = (results.get(case, {}).get(impl) or {}).get("check")
    b = (results.get(case, {}).get(base) or {}).get("check")
    if not a or not b or "shape" not in a or "shape" not in b:
        return None
    if a["shape"] != b["shape"]:
        return f"shape {tuple(a['shape'])} != {tuple(b['shape'])}"
    diff = compare_summaries(a, b)
    if not math.isfinite(diff):
        return "DIFF (non-finite)"
    return "ok" if diff < CHECK_RTOL else f"DIFF {diff:.1e}"


def _memory(memory: dict, case: str, impl: str) -> float | None:
    entry = memory.get(case, {}).get(impl)
    if not entry or entry.get("status") != "ok":
        return None
    return entry.get("rss_peak_bytes")


def time_rows(results: dict) -> list[Row]:
    """Ratio rows for every case: each implementation vs the baselines.

    ``results[case][impl]`` are timing dicts; ``numpy@legacy`` is the NumPy
    baseline timed inside the 1.2.11 worker, used for ``legacy / numpy``.
    """
    targets = {(t.case, t.impl, t.base_impl, t.base_case): t for t in TARGETS if t.kind == "time"}
    rows: list[Row] = []
    pairs = [("sparse3d", "numpy"), ("sparse3d", "legacy"), ("pydata", "numpy"), ("legacy", "numpy@legacy")]
    for case in CASES:
        for impl, base in pairs:
            rows += _row(results, case, impl, base, case, targets)
    rows += _row(results, "tocsr", "sparse3d", "numpy", "csr_build", targets)
    for case in ("xarray_sum", "xarray_sel"):
        for impl in ("sparse3d", "pydata"):
            rows += _row(results, case, impl, impl, "dot_ones", targets)
    for case in ("fit_frames100", "fit_weights_err", "fit_superlu", "fit_cholmod", "fit_csr"):
        rows += _row(results, case, "sparse3d", "sparse3d", "fit", targets)
    for case in ("fit_superlu", "fit_cholmod", "fit_csr"):
        rows += _row(results, case, "sparse3d", "numpy", "fit", targets)
    rows += _row(results, "psf_gaussian", "sparse3d", "sparse3d", "build_L", targets)
    rows += _row(results, "psf_gaussian", "sparse3d", "sparse3d", "pipeline", targets)
    rows += _row(results, "psf_gaussian_derivs", "sparse3d", "sparse3d", "build_L", targets)
    for case in ("shift", "shift_per_source"):
        for base in ("op_mul", "op_exp"):
            rows += _row(results, case, "sparse3d", "sparse3d", base, targets)
    for impl in ("sparse3d", "numpy"):
        rows += _row(results, "pipeline_f32", impl, f"{impl}@pipeline", "pipeline_f32", targets)
    return rows


def limit_rows(results: dict, limit: dict | None) -> list[Row]:
    """``pipeline`` (and ``pipeline_f32``) time over its physical limit (minimum bytes /
    measured bandwidth), and the float32 / float64 ratio of the two limits: the ratio a
    pipeline at its physical limit would have (the float32 target's floor)."""
    if not limit or not limit.get("pipeline_limit_s"):
        return []
    rows = []
    for case, key in (("pipeline", "pipeline"), ("pipeline_f32", "pipeline_f32")):
        base = limit.get(f"{key}_limit_s")
        if not base:
            continue
        for impl in ("sparse3d", "numpy"):
            value = _median(results, case, impl)
            if value is None:
                continue
            row = Row(case, impl, "physical limit", "time", value, base, value / base)
            row.label = f"{limit[f'{key}_bytes'] / 1e6:.0f} MB at {limit['bytes_per_s'] / 1e9:.1f} GB/s"
            if impl == "sparse3d" and case == "pipeline":
                row.target, row.passed = LIMIT_TARGET, row.ratio <= LIMIT_TARGET
            rows.append(row)
    if limit.get("pipeline_f32_limit_s"):
        a, b = limit["pipeline_f32_limit_s"], limit["pipeline_limit_s"]
        row = Row("pipeline_f32", "physical limit", "physical limit@pipeline", "time", a, b, a / b)
        row.label = "float32 / float64 of a pipeline at its physical limit"
        rows.append(row)
    return rows


def spread_rows(results: dict) -> list[Row]:
    """Run-to-run spread: slowest / fastest of the first ``SPREAD_RUNS`` timed runs."""
    rows = []
    for case in SPREAD_CASES:
        for impl in ("sparse3d", "numpy"):
            entry = results.get(case, {}).get(impl) or {}
            times = (entry.get("times") or [])[:SPREAD_RUNS]
            if entry.get("status") != "ok" or len(times) < 2:
                continue
            row = Row(case, impl, impl, "spread", max(times), min(times), max(times) / min(times))
            row.label = f"max/min over {len(times)} runs"
            if impl == "sparse3d":
                row.target, row.passed = SPREAD_TARGET, row.ratio <= SPREAD_TARGET
            rows.append(row)
    return rows


def _row(results, case, impl, base, base_case, targets) -> list[Row]:
    value = _median(results, case, impl)
    base_value = _median(results, base_case, base)
    if value is None or base_value is None or base_value <= 0:
        return []
    key = (case, impl, base.split("@")[0], None if base_case == case else base_case)
    t = targets.get(key)
    ratio = value / base_value
    check = _check(results, case, impl, base) if base_case == case else None
    name = base if base_case == case else f"{base}:{base_case}"
    row = Row(case, impl, name, "time", value, base_value, ratio, check=check)
    if t is not None:
        row.target, row.passed, row.label = t.max_ratio, ratio <= t.max_ratio, t.label
    return [row]


def cold_rows(memory: dict) -> list[Row]:
    """First call in a fresh process (imports, JIT, first-touch memory): ratios."""
    rows = []
    for case, per_impl in memory.items():
        cold = {k: v.get("cold_s") for k, v in per_impl.items() if v.get("status") == "ok"}
        for impl, base in (
            ("sparse3d", "numpy"),
            ("sparse3d", "legacy"),
            ("pydata", "numpy"),
            ("legacy", "numpy"),
        ):
            if cold.get(impl) and cold.get(base):
                rows.append(Row(case, impl, base, "cold", cold[impl], cold[base], cold[impl] / cold[base]))
    return rows


def memory_rows(memory: dict) -> list[Row]:
    """Peak-RSS ratio rows vs the NumPy baseline (fresh process per case)."""
    targets = {(t.case, t.impl): t for t in TARGETS if t.kind == "memory"}
    rows = []
    for case in CASES:
        base = _memory(memory, case, "numpy")
        for impl in ("sparse3d", "pydata", "legacy"):
            value = _memory(memory, case, impl)
            if value is None or not base:
                continue
            row = Row(case, impl, "numpy", "memory", value, base, value / base)
            t = targets.get((case, impl))
            if t is not None:
                row.target, row.passed = t.max_ratio, row.ratio <= t.max_ratio
            rows.append(row)
    return rows


def absolute_checks(
    results: dict, imports: dict, scaling: dict | None, scale: dict | None = None
) -> list[dict]:
    """Targets on absolute numbers: ``sel`` time, import time, scaling, the pipeline at scale."""
    out = []
    if scale:
        H, W = scale["imshape"]
        name = f"pipeline, {scale['nsources']:,} sources on {H}x{W} (lean inputs): peak RSS"
        peak = scale.get("peak_rss_bytes") if scale.get("status") == "ok" else None
        out.append(
            {
                "name": name if peak else f"{name}: {scale.get('status')} ({scale.get('reason', '')})",
                "value": peak,
                "target": scale.get("limit_bytes"),
                "passed": None if peak is None and scale.get("status") == "skipped" else bool(peak),
            }
        )
    sel = _median(results, "xarray_sel", "sparse3d")
    if sel is not None:
        out.append(
            {"name": "xarray_sel < 50 ms", "value": sel, "target": SEL_TARGET_S, "passed": sel < SEL_TARGET_S}
        )
    imp = (imports or {}).get("sparse3d", {})
    if imp.get("status") == "ok":
        out.append(
            {
                "name": "import sparse3d <= 0.5 s (-X importtime, cumulative)",
                "value": imp["cumulative_s"],
                "target": IMPORT_TARGET_S,
                "passed": imp["cumulative_s"] <= IMPORT_TARGET_S,
            }
        )
        out.append(
            {
                "name": "import sparse3d <= 0.5 s (first, cold-ish run)",
                "value": imp["first_cumulative_s"],
                "target": IMPORT_TARGET_S,
                "passed": imp["first_cumulative_s"] <= IMPORT_TARGET_S,
            }
        )
    for check in (scaling or {}).get("checks", []):
        out.append(check)
    return out
