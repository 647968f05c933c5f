"""The fit's issue-15 ratios measured interleaved in one process (robust to a drifting load).

    python -m benchmarks.fit_interleaved [--reps 5]

Each repetition times, back to back on the tutorial scene: the tutorial's recipe
(``Lc.T @ Lc`` + ``spsolve``, CSR build included), ``L.fit(image)`` on a fresh ``L``,
``weights_err`` of that fit, ``L.fit`` of 100 frames on a fresh ``L`` and, if installed, the fit
with ``solver="cholmod"``. Reported: medians and the median of the per-repetition ratios of
wall-clock times, and the process CPU times (all threads) of the fit of one image and of 100
frames: the many-frame fit runs its kernels in ``sparse3d._threads.num_threads()`` threads
(``SPARSE3D_NUM_THREADS``, ``sparse3d.set_options(num_threads=...)``), so on a machine whose
cores are busy its wall time is up to its CPU time. Also reported: the main thread's CPU time
(``time.thread_time``), which is what the wall time of the many-frame fit comes to when a core is
free for each worker (the workers finish within the main thread's own work: measured <= 5 ms of
waiting at the joins, on a busy machine).

With ``--phases``, the many-frame fit's phases are timed too (wrapped functions, in whichever
thread runs them: the normal matrix and factorisation, the right-hand sides and square sums
made ahead, the waits for them, the block solve, the chi-square), as medians of wall and thread
CPU time per repetition, next to the one-image fit's.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fit_interleaved", description=__doc__.splitlines()[0]
    )
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--phases", action="store_true", help="also time the fits' phases")
    args = p.parse_args(argv)
    phases = _Phases() if args.phases else None

    import scipy.sparse
    import scipy.sparse.linalg

    import sparse3d
    from benchmarks.scene import TUTORIAL, add_fake_data, make_scene
    from sparse3d import _threads
    from sparse3d.fit import available_solvers, fit_design

    sc = make_scene(TUTORIAL)
    v = np.exp(-0.5 * ((sc.x3d - sc.row_phase) ** 2 + (sc.y3d - sc.col_phase) ** 2))
    S0 = sparse3d.Sparse3D(v, sc.row3d, sc.col3d, imshape=TUTORIAL.imshape)
    data = add_fake_data(sc, np.asarray(S0.dot(sc.brightness)))
    frames = data[:, :, None] + np.random.default_rng(7).normal(0, 1.0, size=(*data.shape, 100))
    H, W = TUTORIAL.imshape
    keep = (sc.row3d >= 0) & (sc.row3d < H) & (sc.col3d >= 0) & (sc.col3d < W)
    pix = (sc.row3d * W + sc.col3d)[keep]
    src = np.broadcast_to(np.arange(TUTORIAL.nsources), sc.row3d.shape)[keep]

    def fresh():
        return sparse3d.Sparse3D(S0.data, S0.row, S0.col, S0.imshape)  # same structure, no caches

    def recipe():
        Lc = scipy.sparse.csr_matrix((v[keep], (pix, src)), shape=(H * W, TUTORIAL.nsources))
        rhs = scipy.sparse.csc_matrix(Lc.T.dot(data.ravel())).T
        return scipy.sparse.linalg.spsolve(Lc.T.dot(Lc), rhs)

    cases = ["recipe", "fit", "weights_err", "fit100"]
    if "cholmod" in available_solvers():
        cases.append("fit_cholmod")
    t: dict[str, list[float]] = {c: [] for c in cases}
    cpu: dict[str, list[float]] = {"fit": [], "fit100": []}
    main_cpu: dict[str, list[float]] = {"fit": [], "fit100": []}
    for rep in range(args.reps + 1):  # the first repetition warms up
        out = {}
        out_cpu = {}
        out_main = {}
        gc.collect()
        t0 = time.perf_counter()
        recipe()
        out["recipe"] = time.perf_counter() - t0
        L = fresh()
        gc.collect()
        t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
        with _Phases.case(phases, "fit", rep):
            res = L.fit(data)
        out["fit"] = time.perf_counter() - t0
        out_cpu["fit"] = time.process_time() - c0
        out_main["fit"] = time.thread_time() - m0
        t0 = time.perf_counter()
        _ = res.weights_err
        out["weights_err"] = time.perf_counter() - t0
        del res
        L = fresh()
        gc.collect()
        t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
        with _Phases.case(phases, "fit100", rep):
            L.fit(frames)
        out["fit100"] = time.perf_counter() - t0
        out_cpu["fit100"] = time.process_time() - c0
        out_main["fit100"] = time.thread_time() - m0
        if "fit_cholmod" in t:
            L = fresh()
            gc.collect()
            t0 = time.perf_counter()
            fit_design(L, data, imshape=L.imshape, solver="cholmod")
            out["fit_cholmod"] = time.perf_counter() - t0
        if rep:
            for c in cases:
                t[c].append(out[c])
            for c in cpu:
                cpu[c].append(out_cpu[c])
                main_cpu[c].append(out_main[c])
    med = {c: float(np.median(v)) for c, v in t.items()}

    def ratio(a: str, b: str) -> float:
        return float(np.median(np.array(t[a]) / np.array(t[b])))

    print(f"{args.reps} interleaved repetitions; medians: " + ", ".join(f"{c} {med[c]:.3f} s" for c in cases))
    print("| case | ratio (median of per-repetition ratios) | target |")
    print("|---|---|---|")
    r = ratio("fit", "recipe")
    print(f"| `L.fit(image)` / recipe | {r:.3f}x ({1 / r:.1f}x faster) | <= 0.2x |")
    print(f"| `weights_err` / `L.fit(image)` | {ratio('weights_err', 'fit'):.3f}x | <= 0.5x |")
    print(f"| `L.fit(100 frames)` / `L.fit(image)` | {ratio('fit100', 'fit'):.3f}x | <= 1.5x |")
    for what, times in (("process CPU (all threads)", cpu), ("main-thread CPU", main_cpu)):
        r = float(np.median(np.array(times["fit100"]) / np.array(times["fit"])))
        print(
            f"{what}, medians: fit {np.median(times['fit']):.3f} s, "
            f"fit100 {np.median(times['fit100']):.3f} s, fit100/fit {r:.3f}x; "
            f"threads: {_threads.num_threads()}"
        )
    if "fit_cholmod" in t:
        print(
            f"| `fit_design(L, image, solver='cholmod')` / recipe | {ratio('fit_cholmod', 'recipe'):.3f}x | |"
        )
    if phases is not None:
        phases.report()
    return 0


class _Phases:
    """Wall and thread CPU time of the fit's phases (functions wrapped while a case runs)."""

    WRAPPED = (
        ("normal", "NormalEquations", "_build", "normal matrix + factorisation"),
        ("supernodal", "_NDFactor", "__init__", "  of which factorisation"),
        ("rhs", "_Ahead", "_compute", "rhs + square sums ahead (worker)"),
        ("rhs", "_Ahead", "take", "waits for them"),
        ("normal", "NormalEquations", "solve", "solve (rhs, block solve, chi2)"),
        ("supernodal", "_NDFactor", "solve", "  of which block solve"),
        ("normal_chi2", None, "chi2_from_normal", "  of which chi-square"),
    )

    def __init__(self) -> None:
        import importlib
        import inspect

        self.times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        self.now: dict[str, list[float]] | None = None
        for mod, cls, name, label in self.WRAPPED:
            owner = importlib.import_module(f"sparse3d.fit.{mod}")
            owner = owner if cls is None else getattr(owner, cls)
            raw = inspect.getattr_static(owner, name)
            kind = type(raw) if isinstance(raw, (staticmethod, classmethod)) else None
            timed = self._wrap(raw.__func__ if kind else raw, label)
            setattr(owner, name, kind(timed) if kind else timed)

    def _wrap(self, fn, label: str):
        import functools
        import threading

        @functools.wraps(fn)
        def timed(*a, **k):
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                if self.now is not None:
                    who = "main" if threading.current_thread() is threading.main_thread() else "worker"
                    acc = self.now.setdefault(f"{label} [{who}]", [0.0, 0.0])
                    acc[0] += time.perf_counter() - t0
                    acc[1] += time.thread_time() - c0

        return timed

    @staticmethod
    def case(phases: _Phases | None, name: str, rep: int):
        import contextlib

        if phases is None:
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def timing():
            phases.now = {}
            try:
                yield
            finally:
                if rep:  # the first repetition warms up
                    for label, (wall, cpu) in phases.now.items():
                        phases.times.setdefault((name, label), []).append((wall, cpu))
                phases.now = None

        return timing()

    def report(self) -> None:
        print("| case | phase | wall (median, ms) | thread CPU (median, ms) |")
        print("|---|---|---|---|")
        rank = {w[3]: i for i, w in enumerate(self.WRAPPED)}

        def key(item):
            (name, label), _ = item
            return name, rank[label.rsplit(" [", 1)[0]], label

        for (name, label), v in sorted(self.times.items(), key=key):
            wall, cpu = np.median(np.array(v), axis=0) * 1e3
            print(f"| {name} | {label} | {wall:.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
