"""The downstream jitter loop: ``sparse3d.legacy`` against 1.2.11 and against the 2.x API.

A scene model (a PSF design ``X`` and its two gradient designs ``dX0``, ``dX1``, as
pandora-psf's ``Scene`` builds them) is evaluated at 20 integer jitter offsets, each for a
few frames, the way 1.x code wrote it::

    for offset, frames in groups:                    # 1.x / sparse3d.legacy
        X.translate(offset); dX0.translate(offset); dX1.translate(offset)   # absolute, in place
        model[frames] = X.dot(f) + dX0.dot(f * j0) + dX1.dot(f * j1)        # (k, H, W)

and the same loop written with the 2.x API (relative translate from the untranslated arrays,
``(H, W, k)`` results). Three implementations, timed as ratios measured in one run:

* ``1.2.11``: ``sparse3d==1.2.11`` from PyPI (installed by :mod:`benchmarks.legacy`) in a
  worker process whose ``sys.path`` starts with the cached install;
* ``legacy``: ``sparse3d.legacy`` (this repository), same code as 1.2.11's;
* ``2.x``: ``sparse3d.Sparse3D`` (this repository).

``legacy`` and ``2.x`` are interleaved in one worker. Targets (issue 14): 1.2.11 / legacy
>= 10; legacy / 2.x <= 1.2. Every run checks that the three models agree (1e-12).

Besides the wall-clock medians (what the targets are judged on) the report gives the
medians of the worker's CPU time (``time.thread_time``: the loops are single-threaded) and
their ratios: on a shared, oversubscribed machine the wall clock also counts the time the
worker waited for a core, which the CPU time does not.

By default 1.2.11 runs in its own worker after the others, so on a shared machine its ratio
moves with the load between the two workers. ``--interleaved`` times all three in one worker,
round by round: the cached 1.2.11 install is copied under another package name
(``sparse3d_1x``; its modules import each other relatively), so both versions load in one
process and every ratio is measured under the same load.

    python -m benchmarks.compat              # both cases, a few minutes
    python -m benchmarks.compat --interleaved
    python -m benchmarks.compat --smoke      # tiny scene, no 1.2.11, seconds
    python -m benchmarks.compat --interleaved --floor   # also the loop's own arithmetic

The models compared are those of the last timed round (the steady state: a family's first
products take the NumPy or plain scatter paths, its later ones the sorted/planes kernels).
``--floor`` also times, in the same rounds, the loop without products (the result array, the
adds of three fixed ``(k, H, W)`` models and the assignments): a cost every implementation's
loop pays, which bounds ``1.2.11 / legacy`` from above.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent

#: ``scene``: pandora-psf's ``Scene`` loop (full-frame models); ``roiscene``: its ``ROIScene``
#: loop (models read in ``nrois`` windows of ``roi_size``).
FULL = {
    "scene": dict(imshape=(512, 512), nsources=3000, stamp=15, noffsets=20, frames_per_offset=3, seed=14),
    "roiscene": dict(
        imshape=(2048, 2048),
        nsources=5000,
        stamp=15,
        noffsets=20,
        frames_per_offset=3,
        seed=14,
        nrois=50,
        roi_size=(30, 30),
    ),
}
SMOKE = {
    "scene": dict(imshape=(96, 80), nsources=40, stamp=7, noffsets=20, frames_per_offset=2, seed=14),
    "roiscene": dict(
        imshape=(96, 80),
        nsources=40,
        stamp=7,
        noffsets=20,
        frames_per_offset=2,
        seed=14,
        nrois=4,
        roi_size=(12, 10),
    ),
}


def make_scene(imshape, nsources, stamp, noffsets, frames_per_offset, seed, nrois=0, roi_size=(1, 1)) -> dict:
    """Seeded Gaussian PSF stamps with gradients, fluxes, and jitter split into offset groups."""
    rng = np.random.default_rng(seed)
    corners = [
        tuple(int(v) for v in c) for c in rng.integers(0, min(imshape) - min(roi_size), size=(nrois, 2))
    ]
    H, W = imshape
    half = stamp // 2
    centre = rng.uniform([-5, -5], [H + 5, W + 5], size=(nsources, 2))
    base = np.floor(centre).astype(int)
    R, C = np.mgrid[-half : half + 1, -half : half + 1]
    row = R[:, :, None] + base[:, 0]
    col = C[:, :, None] + base[:, 1]
    dr = row + 0.5 - centre[:, 0]
    dc = col + 0.5 - centre[:, 1]
    psf = np.exp(-0.5 * (dr**2 + dc**2) / 1.5**2)
    psf /= psf.sum(axis=(0, 1))
    offsets = rng.integers(-6, 7, size=(noffsets, 2))
    frames = noffsets * frames_per_offset
    return {
        "imshape": tuple(imshape),
        "corners": corners,
        "roi_size": tuple(roi_size),
        "row": row,
        "col": col,
        "data": psf,
        "grad0": psf * dr / 1.5**2,
        "grad1": psf * dc / 1.5**2,
        "flux": 10 ** rng.uniform(1, 3, size=(nsources, frames)),
        "jitter": rng.uniform(-0.5, 0.5, size=(2, frames)),
        "groups": [
            (tuple(int(v) for v in o), np.arange(i * frames_per_offset, (i + 1) * frames_per_offset))
            for i, o in enumerate(offsets)
        ],
    }


def _result_1x(s: dict, roi: bool) -> np.ndarray:
    """The zeroed result of a 1.x loop: ``(nrois, frames, h, w)`` or ``(frames, H, W)``."""
    nframes = s["flux"].shape[1]
    return np.zeros((len(s["corners"]), nframes, *s["roi_size"]) if roi else (nframes, *s["imshape"]))


def _store_1x(out: np.ndarray, idx: np.ndarray, model: np.ndarray, roi: bool) -> None:
    """Write one offset's model into the frames ``idx`` of a 1.x loop's result."""
    if roi:
        out[:, idx] = model
    else:
        out[idx] = model


def loop_1x(mod, s: dict, roi: bool = False):
    """The loop as 1.x code wrote it (runs on 1.2.11 and on ``sparse3d.legacy``)."""
    args = (s["row"], s["col"], s["imshape"])
    if roi:
        kw = dict(nROIs=len(s["corners"]), ROI_size=s["roi_size"], ROI_corners=s["corners"])
        X, dX0, dX1 = (mod.ROISparse3D(s[name], *args, **kw) for name in ("data", "grad0", "grad1"))
    else:
        X, dX0, dX1 = (mod.Sparse3D(s[name], *args) for name in ("data", "grad0", "grad1"))

    def run():
        flux, jit = s["flux"], s["jitter"]
        out = _result_1x(s, roi)
        for offset, idx in s["groups"]:
            X.translate(offset)
            dX0.translate(offset)
            dX1.translate(offset)
            f = flux[:, idx]
            _store_1x(out, idx, X.dot(f) + dX0.dot(f * -jit[0, idx]) + dX1.dot(f * -jit[1, idx]), roi)
        return out

    return run


def loop_2x(mod, s: dict, roi: bool = False):
    """The same loop with the 2.x API: relative translate from the untranslated arrays."""
    args = (s["row"], s["col"], s["imshape"])
    X, dX0, dX1 = (mod.Sparse3D(s[name], *args) for name in ("data", "grad0", "grad1"))
    if roi:
        X, dX0, dX1 = (A.roi(s["corners"], s["roi_size"]) for A in (X, dX0, dX1))

    def run():
        flux, jit = s["flux"], s["jitter"]
        if roi:
            out = np.zeros((len(s["corners"]), *s["roi_size"], flux.shape[1]))  # (nrois, h, w, k)
        else:
            out = np.zeros((*s["imshape"], flux.shape[1]))  # (H, W, k)
        for offset, idx in s["groups"]:
            Xo, d0, d1 = X.translate(offset), dX0.translate(offset), dX1.translate(offset)
            f = flux[:, idx]
            out[..., idx] = Xo.dot(f) + d0.dot(f * -jit[0, idx]) + d1.dot(f * -jit[1, idx])
        return np.moveaxis(out, -1, 1 if roi else 0)  # the 1.x layout, for the comparison

    return run


def loop_floor(s: dict, roi: bool = False):
    """The 1.x loop's own arithmetic without products: the same result array, adds and
    assignments on three fixed models of the 1.x layout (what any implementation's loop
    pays on top of its ``translate`` and ``dot``; reported with ``--floor``)."""
    k = len(s["groups"][0][1])
    shape = (len(s["corners"]), k, *s["roi_size"]) if roi else (k, *s["imshape"])
    rng = np.random.default_rng(0)
    a, b, c = (rng.uniform(size=shape) for _ in range(3))

    def run():
        out = _result_1x(s, roi)
        for _, idx in s["groups"]:
            _store_1x(out, idx, a + b + c, roi)
        return out

    return run


def _time(fns: dict, repeats: int) -> tuple[dict, dict, dict, dict]:
    """Interleaved: one warm-up each, then ``repeats`` rounds; median wall-clock seconds,
    median CPU seconds of this thread, the results of the last round (the steady state:
    a family's first products take other paths than its later ones) and every round's
    ``(wall, cpu, minor page faults)`` per implementation (stragglers, ``--rounds``)."""
    results = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    faults: dict[str, list[int]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            gc.collect()
            f0 = _minor_faults()
            c0 = time.thread_time()
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
            faults[name].append(_minor_faults() - f0)
    median = statistics.median
    rounds = {n: list(zip(times[n], cpu[n], faults[n])) for n in fns}
    return {n: median(t) for n, t in times.items()}, {n: median(t) for n, t in cpu.items()}, results, rounds


def _minor_faults() -> int:
    """Minor page faults of the process so far (0 where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def worker(which: str, case: str, params: dict, repeats: int, out_path: str, floor: bool = False) -> None:
    """Time ``which`` on ``case``; write seconds and results.

    ``"1.2.11"`` (the 1.x package first on ``sys.path``), ``"current"`` (legacy and 2.x) or
    ``"all"`` (the three interleaved; 1.2.11 imported as ``sparse3d_1x``).
    """
    s = make_scene(**params)
    roi = case == "roiscene"
    if which == "all":
        import sparse3d_1x

        import sparse3d
        import sparse3d.legacy

        if sparse3d_1x.Sparse3D.__module__ != "sparse3d_1x.sparse3d" or sparse3d.__version__.startswith("1."):
            raise SystemExit("expected sparse3d_1x to be 1.2.11 and sparse3d this repository")
        fns = {
            "1.2.11": loop_1x(sparse3d_1x, s, roi),
            "legacy": loop_1x(sparse3d.legacy, s, roi),
            "2.x": loop_2x(sparse3d, s, roi),
        }
    elif which == "1.2.11":
        import sparse3d

        if not sparse3d.__version__.startswith("1."):
            raise SystemExit(f"expected sparse3d 1.2.11, imported {sparse3d.__version__}")
        fns = {"1.2.11": loop_1x(sparse3d, s, roi)}
    else:
        import sparse3d
        import sparse3d.legacy

        fns = {"legacy": loop_1x(sparse3d.legacy, s, roi), "2.x": loop_2x(sparse3d, s, roi)}
    if floor and which != "1.2.11":
        fns["loop arithmetic"] = loop_floor(s, roi)
    seconds, cpu_seconds, results, rounds = _time(fns, repeats)
    results.pop("loop arithmetic", None)
    path = Path(out_path)
    np.savez(path.with_suffix(".npz"), **results)
    path.write_text(json.dumps({"seconds": seconds, "cpu_seconds": cpu_seconds, "rounds": rounds}))


def _run_worker(
    which: str,
    case: str,
    params: dict,
    repeats: int,
    tmp: Path,
    path_first: str | None,
    extra_path=None,
    floor: bool = False,
) -> dict:
    out = tmp / f"{which}-{case}.json"
    code = (
        "import sys, json; "
        + (f"sys.path.insert(0, {path_first!r}); " if path_first else "")
        + f"sys.path.append({str(REPO_ROOT)!r}); "
        + (f"sys.path.append({extra_path!r}); " if extra_path else "")
        + "from benchmarks.compat import worker; "
        + f"worker({which!r}, {case!r}, json.loads({json.dumps(params)!r}), {repeats}, {str(out)!r}, {floor})"
    )
    cwd = tmp if path_first else REPO_ROOT  # 1.2.11: keep the repository's sparse3d off the path
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{which} worker failed:\n{proc.stderr[-3000:]}")
    info = json.loads(out.read_text())
    with np.load(out.with_suffix(".npz")) as z:
        info["results"] = {k: z[k] for k in z.files}
    return info


def _renamed_1x(tmp: Path) -> Path:
    """A copy of the cached 1.2.11 package named ``sparse3d_1x``; returns its parent directory."""
    from benchmarks.legacy import ensure_legacy

    src = Path(ensure_legacy()) / "sparse3d"
    dest = tmp / "renamed"
    shutil.copytree(src, dest / "sparse3d_1x", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def run_case(
    case: str,
    smoke: bool = False,
    repeats: int = 5,
    with_1x: bool = True,
    interleaved: bool = False,
    floor: bool = False,
) -> dict:
    """One case; returns seconds per implementation, the ratios and the agreement."""
    params = dict((SMOKE if smoke else FULL)[case])
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    rounds: dict[str, list] = {}
    results: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if with_1x and interleaved:
            both = _run_worker(
                "all", case, params, repeats, tmp, None, extra_path=str(_renamed_1x(tmp)), floor=floor
            )
            seconds.update(both["seconds"])
            cpu.update(both["cpu_seconds"])
            rounds.update(both["rounds"])
            results.update(both["results"])
            with_1x = False
        else:
            cur = _run_worker("current", case, params, repeats, tmp, None, floor=floor)
            seconds.update(cur["seconds"])
            cpu.update(cur["cpu_seconds"])
            rounds.update(cur["rounds"])
            results.update(cur["results"])
        if with_1x:
            from benchmarks.legacy import ensure_legacy

            old = _run_worker("1.2.11", case, params, max(1, min(repeats, 3)), tmp, str(ensure_legacy()))
            seconds.update(old["seconds"])
            cpu.update(old["cpu_seconds"])
            rounds.update(old["rounds"])
            results.update(old["results"])
    ref = results["legacy"]
    scale = float(np.abs(ref).max()) or 1.0
    agree = {name: float(np.abs(r - ref).max() / scale) for name, r in results.items()}
    arithmetic = {"wall": seconds.pop("loop arithmetic", None), "cpu": cpu.pop("loop arithmetic", None)}
    ratios = {"legacy / 2.x": seconds["legacy"] / seconds["2.x"]}
    cpu_ratios = {"legacy / 2.x": cpu["legacy"] / cpu["2.x"]}
    if "1.2.11" in seconds:
        ratios["1.2.11 / legacy"] = seconds["1.2.11"] / seconds["legacy"]
        cpu_ratios["1.2.11 / legacy"] = cpu["1.2.11"] / cpu["legacy"]
    how = "interleaved" if interleaved and "1.2.11" in seconds else "own worker"
    return {
        "case": case,
        "scene": params,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "rounds": rounds,
        "max_rel_difference": agree,
        "timing_1x": how,
        "loop_arithmetic_seconds": arithmetic if arithmetic["wall"] is not None else None,
    }


def report(res: dict, rounds: bool = False) -> str:
    """Markdown summary of one case with the targets of issue 14 (``rounds``: also every
    round's wall-clock and CPU milliseconds, to tell stragglers from a slow median)."""
    p = res["scene"]
    where = f"{p['nrois']} windows of {tuple(p['roi_size'])}" if res["case"] == "roiscene" else "full frame"
    lines = [
        f"### {res['case']}: {p['nsources']} sources, {p['stamp']}x{p['stamp']} stamps, image "
        f"{tuple(p['imshape'])}, {where}; {p['noffsets']} offsets x {p['frames_per_offset']} frames; "
        "X + dX0 + dX1",
        "",
        "| implementation | median s | median CPU s |",
        "|---|---|---|",
    ]
    cpu = res.get("cpu_seconds", {})
    lines += [
        f"| {k} | {v:.4f} | {cpu[k]:.4f} |" if k in cpu else f"| {k} | {v:.4f} | |"
        for k, v in res["seconds"].items()
    ]
    if "1.2.11" in res["seconds"]:
        how = res.get("timing_1x", "own worker")
        where_1x = "in the same worker, round by round" if how == "interleaved" else "in its own worker"
        lines += ["", f"1.2.11 timed {where_1x}."]
    lines += ["", "| ratio | value | CPU-time value | target |", "|---|---|---|---|"]
    targets = {
        "1.2.11 / legacy": (">= 10", lambda r: r >= 10),
        "legacy / 2.x": ("<= 1.2", lambda r: r <= 1.2),
    }
    for name, value in res["ratios"].items():
        text, ok = targets[name]
        c = res.get("cpu_ratios", {}).get(name)
        cpu_text = "" if c is None else f"{c:.2f}"
        lines.append(f"| {name} | {value:.2f} | {cpu_text} | {text}: {'met' if ok(value) else 'missed'} |")
    arith = res.get("loop_arithmetic_seconds")
    if arith:
        lines += [
            "",
            f"The loop's own arithmetic (zeros, adds, assignments; no products): {arith['wall']:.4f} s, "
            f"CPU {arith['cpu']:.4f} s. Every implementation pays it; 1.2.11 / legacy >= 10 leaves "
            "legacy's translate + dot calls at most 1.2.11 / 10 minus this.",
        ]
    if rounds and res.get("rounds"):
        lines += ["", "| implementation | every round: wall ms / CPU ms / minor page faults |", "|---|---|"]
        lines += [
            f"| {name} | " + ", ".join(f"{w * 1e3:.0f}/{c * 1e3:.0f}/{f}" for w, c, f in per) + " |"
            for name, per in res["rounds"].items()
        ]
    worst = max(res["max_rel_difference"].values())
    lines += ["", f"models agree to {worst:.1e} (max |difference| / max |model|)", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny scenes, skip 1.2.11")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cases", nargs="+", default=list(FULL), choices=list(FULL))
    ap.add_argument("--no-legacy", action="store_true", help="skip sparse3d==1.2.11")
    ap.add_argument(
        "--interleaved", action="store_true", help="time 1.2.11 in the same worker, round by round"
    )
    ap.add_argument(
        "--floor", action="store_true", help="also time the loop's own arithmetic (no products), interleaved"
    )
    ap.add_argument("--rounds", action="store_true", help="also print every round's times (stragglers)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    results = []
    for case in args.cases:
        res = run_case(
            case,
            smoke=args.smoke,
            repeats=args.repeats,
            with_1x=not (args.smoke or args.no_legacy),
            interleaved=args.interleaved,
            floor=args.floor,
        )
        print(report(res, rounds=args.rounds), flush=True)
        results.append(res)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if max(max(r["max_rel_difference"].values()) for r in results) > 1e-12:
        raise SystemExit("the implementations disagree")


if __name__ == "__main__":
    main()
