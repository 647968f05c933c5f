"""Command-line entry point: ``python -m benchmarks [options]``.

Runs the workers, the optional 1.2.11 comparison, memory, import and scaling
measurements, then prints a Markdown report and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.cases import CASES
from benchmarks.scene import SMOKE, TUTORIAL, SceneSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY_MEMORY_CASES = ("pipeline", "build_L", "dot", "tocsr")
WORKER_ENV = {"PYTHONHASHSEED": "0"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument(
        "--smoke", action="store_true", help="tiny scene, 2 repeats, no 1.2.11, no pydata: a few seconds"
    )
    p.add_argument(
        "--cases",
        nargs="+",
        choices=list(CASES),
        metavar="CASE",
        help=f"cases to run (default all): {', '.join(CASES)}",
    )
    p.add_argument(
        "--impls",
        nargs="+",
        choices=["numpy", "sparse3d", "pydata"],
        help="implementations timed together (default numpy sparse3d pydata)",
    )
    p.add_argument("--no-legacy", action="store_true", help="skip sparse3d==1.2.11")
    p.add_argument("--repeats", type=int, help="warm runs per case (default 7, smoke 2)")
    p.add_argument("--legacy-repeats", type=int, default=5, help="warm runs for 1.2.11")
    p.add_argument("--warmup", type=int, default=1, help="warm-up calls per case")
    p.add_argument(
        "--min-time",
        type=float,
        help="fast cases repeat until each implementation ran this many seconds "
        "(max 50 runs; default 0.5, smoke 0)",
    )
    p.add_argument(
        "--memory",
        choices=["none", "pipeline", "key", "all"],
        help="cases measured for memory in fresh processes "
        "(default key = pipeline build_L dot tocsr; smoke: pipeline)",
    )
    p.add_argument("--no-imports", action="store_true", help="skip import-time measurement")
    p.add_argument("--scaling", action="store_true", help="run the scaling series")
    p.add_argument("--scaling-max-sources", type=int, default=1_000_000)
    p.add_argument("--plot", type=Path, help="write the scaling plot here (implies --scaling)")
    p.add_argument(
        "--scale",
        action="store_true",
        help="run the lean pipeline at scale in a guarded process (default 10M sources on 16384^2, "
        "~17 GB: see benchmarks/scale.py)",
    )
    p.add_argument("--scale-sources", type=int, default=10_000_000)
    p.add_argument("--scale-imshape", type=int, nargs=2, default=(16384, 16384), metavar=("H", "W"))
    p.add_argument("--scale-dtype", choices=["float32", "float64"], default="float32")
    p.add_argument(
        "--scale-limit-gb", type=float, default=20.0, help="kill the scale run above this RSS (GB = 1e9 B)"
    )
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--markdown", type=Path, help="write the report as Markdown here")
    p.add_argument("--nsources", type=int, help="override the scene's number of sources")
    p.add_argument("--imshape", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--stamp", type=int, help="override the stamp size")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="set OMP/OPENBLAS/MKL/NUMBA thread counts in the workers")
    args = p.parse_args(argv)
    if args.plot:
        args.scaling = True
    return args


def scene_spec(args: argparse.Namespace) -> SceneSpec:
    """The scene selected by ``--smoke`` and the overrides."""
    spec = SMOKE if args.smoke else TUTORIAL
    overrides = {
        k: v
        for k, v in (("nsources", args.nsources), ("stamp", args.stamp), ("seed", args.seed))
        if v is not None
    }
    if args.imshape:
        overrides["imshape"] = tuple(args.imshape)
    return replace(spec, **overrides)


def min_time(args: argparse.Namespace) -> float:
    """Seconds of timed runs each implementation gets at least (fast cases)."""
    if args.min_time is not None:
        return args.min_time
    return 0.0 if args.smoke else 0.5


def worker_env(threads: int | None) -> dict:
    """Environment of the worker processes."""
    env = {**os.environ, **WORKER_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
            env[var] = str(threads)
    return env


def run_worker(spec: dict, env: dict) -> dict:
    """Run :mod:`benchmarks.worker` on ``spec`` in a fresh process.

    Returns
    -------
    dict
        The worker's JSON output, or ``{"failed": message}``.
    """
    with tempfile.TemporaryDirectory(prefix="sparse3d-bench-") as tmp:
        spec_path, out_path = Path(tmp, "spec.json"), Path(tmp, "out.json")
        spec_path.write_text(json.dumps(spec))
        # stderr (progress, tracebacks) passes through live; stdout is dropped
        # because 1.2.11 prints from inside its operators
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.worker", str(spec_path), str(out_path)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        if proc.returncode != 0 or not out_path.exists():
            return {"failed": f"worker exited with {proc.returncode} (traceback above)"}
        return json.loads(out_path.read_text())


def _fill(results: dict, out: dict, cases: list[str], impls: list[str], rename: dict | None = None) -> None:
    """Merge a worker's results (or its failure) into ``results``."""
    rename = rename or {}
    lib = out.get("library", {})
    for case in cases:
        for impl in impls:
            name = rename.get(impl, impl)
            if "failed" in out:
                entry = {"status": "error", "error": out["failed"]}
            elif impl in ("sparse3d", "legacy") and not lib.get("importable", True):
                entry = {"status": "missing", "error": lib.get("error", "")}
            else:
                entry = out["results"].get(case, {}).get(impl, {"status": "missing"})
            results.setdefault(case, {})[name] = entry
            paired = f"{impl}@"  # a reference case timed in the same rounds (cases.PAIRED)
            for key, value in out.get("results", {}).get(case, {}).items():
                if key.startswith(paired) and not rename:
                    results[case][key] = value


def time_cases(
    args, spec: SceneSpec, cases: list[str], impls: list[str], env: dict, repeats: int
) -> tuple[dict, dict]:
    """Time ``cases`` for ``impls`` in one worker; returns (results, worker output)."""
    out = run_worker(
        {
            "mode": "time",
            "impls": impls,
            "cases": cases,
            "scene": spec.to_dict(),
            "repeats": repeats,
            "warmup": args.warmup,
            "min_total_s": min_time(args),
        },
        env,
    )
    results: dict = {}
    _fill(results, out, cases, impls)
    return results, out


def time_legacy(args, spec: SceneSpec, cases: list[str], env: dict, results: dict) -> dict:
    """Install (if needed) and time ``sparse3d==1.2.11`` next to the NumPy baseline."""
    from benchmarks.legacy import LEGACY_VERSION, ensure_legacy

    print("== sparse3d 1.2.11 (separate process, cached install first on sys.path)", file=sys.stderr)
    try:
        path = ensure_legacy()
    except RuntimeError as exc:
        _fill(results, {"failed": str(exc)}, cases, ["legacy"])
        return {"failed": str(exc)}
    out = run_worker(
        {
            "mode": "time",
            "impls": ["numpy", "legacy"],
            "cases": cases,
            "scene": spec.to_dict(),
            "repeats": args.legacy_repeats,
            "warmup": args.warmup,
            "min_total_s": min_time(args),
            "sys_path_first": str(path),
            "expect_version": LEGACY_VERSION,
        },
        env,
    )
    _fill(results, out, cases, ["numpy", "legacy"], rename={"numpy": "numpy@legacy"})
    return {"path": str(path), **out.get("library", {}), "failed": out.get("failed")}


def measure_memory(
    spec: SceneSpec, cases: list[str], impls: list[str], env: dict, legacy_path: str | None
) -> dict:
    """Cold call + peak memory, one fresh worker per (case, implementation)."""
    memory: dict = {}
    for case in cases:
        for impl in impls:
            if impl == "legacy" and (case != "pipeline" or not legacy_path):
                continue
            job = {
                "mode": "memory",
                "impls": [impl],
                "cases": [case],
                "scene": spec.to_dict(),
                "repeats": 0,
                "warmup": 0,
            }
            if impl == "legacy":
                job.update(sys_path_first=legacy_path, expect_version="1.2.11")
            print(f"  memory {case} / {impl}", file=sys.stderr, flush=True)
            out = run_worker(job, env)
            tmp: dict = {}
            _fill(tmp, out, [case], [impl])
            memory.setdefault(case, {})[impl] = tmp[case][impl]
    return memory


def measure_imports(args, env: dict, legacy_path: str | None) -> dict:
    """Import times of ``sparse3d`` (new and 1.2.11) and of NumPy alone."""
    from benchmarks.importtime import measure_import

    n = 3 if args.smoke else 7
    out = {
        "sparse3d": measure_import("sparse3d", n, cwd=REPO_ROOT, env=env),
        "numpy": measure_import("numpy", n, cwd=REPO_ROOT, env=env),
    }
    if legacy_path:
        out["sparse3d==1.2.11"] = measure_import(
            "sparse3d", n, sys_path_first=legacy_path, cwd=REPO_ROOT, env=env
        )
    return out


def run_scaling_series(args, env: dict, repeats: int) -> dict:
    """Run the scaling series (pipeline, NumPy baseline and sparse3d).

    Each implementation runs in its own worker here, not interleaved: the
    check is on each one's own growth, and at the largest sizes a NumPy run
    between two sparse3d runs was seen to slow the latter by ~25% on this
    VM (memory-system interference, not the library).
    """
    from benchmarks.scaling import run_scaling

    def time_scene(spec: SceneSpec) -> dict:
        print(f"== scaling {spec}", file=sys.stderr, flush=True)
        out = {}
        for impl in ("numpy", "sparse3d"):
            results, _ = time_cases(args, spec, ["pipeline"], [impl], env, max(5, repeats))
            out[impl] = results["pipeline"][impl]
        return out

    return run_scaling(time_scene, max_sources=args.scaling_max_sources)


def main(argv: list[str] | None = None) -> int:
    """Run the suite; returns 0 even when targets are missed (see the report)."""
    from benchmarks.report import full_report
    from benchmarks.targets import (
        absolute_checks,
        cold_rows,
        limit_rows,
        memory_rows,
        spread_rows,
        time_rows,
    )

    args = parse_args(argv)
    spec = scene_spec(args)
    cases = args.cases or list(CASES)
    impls = args.impls or (["numpy", "sparse3d"] if args.smoke else ["numpy", "sparse3d", "pydata"])
    repeats = args.repeats or (2 if args.smoke else 7)
    legacy_on = not (args.smoke or args.no_legacy)
    memory_mode = args.memory or ("pipeline" if args.smoke else "key")
    env = worker_env(args.threads)

    print(f"== timing {impls} on {spec}", file=sys.stderr, flush=True)
    results, out = time_cases(args, spec, cases, impls, env, repeats)
    legacy_info = time_legacy(args, spec, cases, env, results) if legacy_on else None
    legacy_path = legacy_info.get("path") if legacy_info and not legacy_info.get("failed") else None

    mem_cases = {"none": [], "pipeline": ["pipeline"], "key": list(KEY_MEMORY_CASES), "all": list(CASES)}[
        memory_mode
    ]
    mem_cases = [c for c in mem_cases if c in cases]
    memory = measure_memory(spec, mem_cases, impls + ["legacy"], env, legacy_path)
    imports = {} if args.no_imports else measure_imports(args, env, legacy_path)
    scaling = run_scaling_series(args, env, repeats) if args.scaling else None
    scale = None
    if args.scale:
        from benchmarks.scale import run_guarded

        print(f"== scale: {args.scale_sources} sources on {args.scale_imshape}", file=sys.stderr, flush=True)
        limit = int(args.scale_limit_gb * 1e9)
        scale = run_guarded(args.scale_sources, tuple(args.scale_imshape), 10, args.scale_dtype, limit, env)
        scale["limit_bytes"] = limit

    reported = impls + (["legacy", "numpy@legacy"] if legacy_on else [])
    ratios = time_rows(results) + limit_rows(results, out.get("limit")) + spread_rows(results)
    ratios += memory_rows(memory) + cold_rows(memory)
    absolute = absolute_checks(results, imports, scaling, scale)
    verdicts = [r.passed for r in ratios if r.passed is not None]
    verdicts += [c["passed"] for c in absolute if c["passed"] is not None]
    data = {
        "meta": {
            "mode": "smoke" if args.smoke else "full",
            "argv": sys.argv[1:] if argv is None else argv,
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "scene": spec.to_dict(),
            "repeats": repeats,
            "warmup": args.warmup,
            "min_time_s": min_time(args),
            "legacy_repeats": args.legacy_repeats if legacy_on else None,
            "impls_reported": reported,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.executable,
            "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
            "threads": args.threads,
            "versions": out.get("versions"),
            "library": out.get("library"),
            "legacy": legacy_info,
            "limit": out.get("limit"),
        },
        "results": results,
        "memory": memory,
        "imports": imports,
        "scaling": scaling,
        "scale": scale,
        "ratios": [r.to_dict() for r in ratios],
        "absolute": absolute,
        "summary": {"passed": sum(map(bool, verdicts)), "missed": sum(not v for v in verdicts)},
    }
    report = full_report(data)
    print(report)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(finite(data), indent=1, allow_nan=False))
    if args.plot and scaling:
        from benchmarks.plot import plot_scaling

        plot_scaling(scaling, args.plot)
    return 0


def finite(obj: Any) -> Any:
    """Copy of a JSON-like object with NaN and infinities replaced by ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
