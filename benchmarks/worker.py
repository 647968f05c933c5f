"""Worker process: time (or measure memory of) cases for some implementations.

Run by :mod:`benchmarks.run`, never imported by it::

    python -m benchmarks.worker SPEC.json OUT.json

``SPEC.json`` holds ``mode`` (``"time"`` or ``"memory"``), ``impls``,
``cases``, ``scene`` (a :class:`~benchmarks.scene.SceneSpec` dict),
``repeats``, ``warmup`` and optionally ``sys_path_first`` and
``expect_version``.  The worker puts ``sys_path_first`` at the front of
``sys.path`` before anything imports ``sparse3d``; that is how the cached
``sparse3d==1.2.11`` is timed with this same script.
"""

from __future__ import annotations

import gc
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any


def _library_info(expect_version: str | None, expect_dir: str | None = None) -> dict:
    """Import ``sparse3d`` and describe the version that was found.

    Exits the worker if ``expect_version`` is given and does not match, or if
    the module was not imported from under ``expect_dir``.
    """
    try:
        import sparse3d
    except Exception as exc:  # noqa: BLE001
        return {"importable": False, "error": f"{type(exc).__name__}: {exc}"}
    from importlib import metadata

    version = getattr(sparse3d, "__version__", None)
    try:
        dist_version = metadata.version("sparse3d")
    except metadata.PackageNotFoundError:
        dist_version = None
    info = {
        "importable": True,
        "version": version,
        "dist_version": dist_version,
        "file": getattr(sparse3d, "__file__", None),
    }
    if expect_version is not None and expect_version not in (version, dist_version):
        raise SystemExit(f"expected sparse3d {expect_version}, imported {version} from {info['file']}")
    if expect_dir is not None and not str(info["file"]).startswith(str(Path(expect_dir).resolve())):
        raise SystemExit(f"sparse3d was imported from {info['file']}, not from {expect_dir}")
    return info


def _versions() -> dict:
    import numpy
    import scipy

    out = {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__}
    for name in ("sparse", "xarray", "numba"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = getattr(mod, "__version__", "?")
    return out


def _prepare(impl: str, case: str, scene: Any, factories: dict) -> Any:
    from benchmarks.cases import Unsupported
    from benchmarks.timing import Timing, error_summary

    if case not in factories:
        return Timing(status="unsupported", note="case not defined")
    try:
        return factories[case](scene)
    except Unsupported as exc:
        return Timing(status="unsupported", note=str(exc))
    except Exception as exc:  # noqa: BLE001
        return Timing(status="error", error=error_summary(exc))


def _canon_summary(prepared: Any, result: Any) -> dict | None:
    import numpy as np

    from benchmarks.cases import summarize

    try:
        arr = prepared.canon(result) if prepared.canon is not None else result
        if arr is None or not isinstance(arr, np.ndarray):
            return None
        return summarize(arr)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def _time_case(case: str, spec: dict, scene: Any, factories: dict[str, dict]) -> dict:
    """Prepare and time one case for every implementation.

    Everything the case built is released when this function returns, so no
    array (and no cached index structure) survives into the next case.
    """
    from benchmarks.cases import PAIRED, Prepared
    from benchmarks.timing import time_interleaved

    prepared = {impl: _prepare(impl, case, scene, f) for impl, f in factories.items()}
    if case in PAIRED:  # the reference case, interleaved with this one: "<impl>@<reference>"
        for impl, f in factories.items():
            prepared[f"{impl}@{PAIRED[case]}"] = _prepare(impl, PAIRED[case], scene, f)
    runnable = {k: p for k, p in prepared.items() if isinstance(p, Prepared)}
    checks: dict[str, Any] = {}

    def keep(name: str, result: Any) -> None:
        checks[name] = _canon_summary(prepared[name], result)

    from benchmarks.targets import SPREAD_CASES, SPREAD_RUNS

    repeats = max(spec["repeats"], SPREAD_RUNS) if case in SPREAD_CASES else spec["repeats"]
    min_total_s = spec.get("min_total_s", 0.0)
    timings = time_interleaved(runnable, repeats, spec["warmup"], keep, min_total_s=min_total_s)
    out = {}
    for impl, p in prepared.items():
        if isinstance(p, Prepared):
            t = timings[impl]
            t.note, t.check = p.note, checks.get(impl)
            out[impl] = t.to_dict()
        else:
            out[impl] = p.to_dict()
    return out


def run_time(spec: dict, scene: Any, factories: dict[str, dict]) -> dict:
    """Time every case of ``spec`` for every implementation (interleaved)."""
    results: dict[str, dict] = {}
    for case in spec["cases"]:
        results[case] = out = _time_case(case, spec, scene, factories)
        gc.collect()
        summary = ", ".join(
            f"{k}={v['median_s']:.4g}s" if v.get("median_s") else f"{k}={v['status']}" for k, v in out.items()
        )
        print(f"  [{'/'.join(factories)}] {case}: {summary}", file=sys.stderr, flush=True)
    return results


def run_memory(spec: dict, scene: Any, factories: dict[str, dict]) -> dict:
    """Cold call, then peak memory of one warm call, for one impl and case."""
    from benchmarks.cases import Prepared
    from benchmarks.memory import fix_mmap_threshold, measure_peak
    from benchmarks.timing import error_summary, timed_call

    (impl,), (case,) = list(factories), spec["cases"]
    p = _prepare(impl, case, scene, factories[impl])
    if not isinstance(p, Prepared):
        return {case: {impl: p.to_dict()}}
    try:
        cold, result = timed_call(p)  # default allocator settings, as a user gets
        del result
        mmap_fixed = fix_mmap_threshold()
        out = {"status": "ok", "cold_s": cold, **measure_peak(p), "mmap_threshold_fixed": mmap_fixed}
    except Exception as exc:  # noqa: BLE001
        out = {"status": "error", "error": error_summary(exc)}
    return {case: {impl: out}}


def main(argv: list[str] | None = None) -> int:
    """Run the spec in ``argv[0]`` and write the JSON result to ``argv[1]``."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    if spec.get("sys_path_first"):
        sys.path.insert(0, spec["sys_path_first"])
    t0 = time.perf_counter()
    out: dict[str, Any] = {"spec": spec}
    if any(i in ("sparse3d", "legacy") for i in spec["impls"]):
        out["library"] = _library_info(spec.get("expect_version"), spec.get("sys_path_first"))

    from benchmarks.cases import NEEDS_FAKE_DATA
    from benchmarks.impls import load
    from benchmarks.impls.numpy_baseline import model_image
    from benchmarks.scene import SceneSpec, add_fake_data, make_scene

    scene = make_scene(SceneSpec.from_dict(spec["scene"]))
    if NEEDS_FAKE_DATA & set(spec["cases"]):
        add_fake_data(scene, model_image(scene))
    factories = {}
    for impl in spec["impls"]:
        if impl in ("sparse3d", "legacy") and not out["library"]["importable"]:
            continue
        factories[impl] = load(impl)
    if spec["mode"] == "memory":
        out["results"] = run_memory(spec, scene, factories) if factories else {}
    else:
        if "pipeline" in spec["cases"]:
            import numpy as np

            from benchmarks.limits import measure_bandwidth, pipeline_bytes

            bw = measure_bandwidth()
            nbytes, nbytes32 = pipeline_bytes(scene), pipeline_bytes(scene, np.float32)
            out["limit"] = {
                **bw,
                "pipeline_bytes": nbytes,
                "pipeline_limit_s": nbytes / bw["bytes_per_s"],
                "pipeline_f32_bytes": nbytes32,
                "pipeline_f32_limit_s": nbytes32 / bw["bytes_per_s"],
            }
            gc.collect()
        out["results"] = run_time(spec, scene, factories)
    out["versions"] = _versions()
    out["wall_s"] = time.perf_counter() - t0
    Path(argv[1]).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
