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
    args = p.parse_args(argv)

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
