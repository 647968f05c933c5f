"""Factorisations of the tutorial's normal matrix side by side: qdldl, SciPy SuperLU, CHOLMOD.

    python -m benchmarks.fit_solvers [--reps 5] [--nsources 50000 --imsize 1024]

Each repetition runs every solver once on the same matrix (interleaved, in a shuffled order),
timing: the factorisation (ordering included), one solve, a 100-column solve and the exact
``diag(N^-1)`` (selected inversion, supernodal blocks included). Reported: medians and the
median of the per-repetition ratios to qdldl.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fit_solvers", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--nsources", type=int, default=50_000)
    p.add_argument("--imsize", type=int, default=1024)
    args = p.parse_args(argv)

    import sparse3d
    from benchmarks.scene import SceneSpec, make_scene
    from sparse3d.fit import available_solvers, normal_matrix
    from sparse3d.fit.factor import _factorize

    spec = SceneSpec(nsources=args.nsources, imshape=(args.imsize, args.imsize))
    sc = make_scene(spec)
    v = np.exp(-0.5 * ((sc.x3d - sc.row_phase) ** 2 + (sc.y3d - sc.col_phase) ** 2))
    S = sparse3d.Sparse3D(v, sc.row3d, sc.col3d, imshape=spec.imshape)
    N = normal_matrix(S)
    keep = N.diagonal() > 0
    N = N[keep][:, keep].tocsr()
    n = N.shape[0]
    rng = np.random.default_rng(0)
    b1, b100 = rng.normal(size=n), rng.normal(size=(n, 100))
    solvers = [s for s in ("qdldl", "superlu", "cholmod") if s in available_solvers()]
    stages = ("factor", "solve 1", "solve 100", "diag(N^-1)")
    times: dict[str, dict[str, list[float]]] = {s: {st: [] for st in stages} for s in solvers}
    x_ref = None
    for rep in range(args.reps + 1):  # the first repetition warms up (numba cache, imports)
        for s in rng.permutation(solvers):
            t0 = time.perf_counter()
            f = _factorize(N, s)
            t1 = time.perf_counter()
            x = f.solve(b1)
            t2 = time.perf_counter()
            f.solve(b100)
            t3 = time.perf_counter()
            d = f.inv_diag()
            t4 = time.perf_counter()
            if x_ref is None:
                x_ref, d_ref = x, d
            assert np.allclose(x, x_ref, rtol=1e-8, atol=1e-10 * np.abs(x_ref).max())
            assert np.allclose(d, d_ref, rtol=1e-8)
            if rep:
                for st, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    times[s][st].append(dt)
            del f
    print(f"normal matrix n = {n}, lower nnz = {N.nnz}; {args.reps} interleaved repetitions")
    print("| solver | " + " | ".join(stages) + " |")
    print("|---" * (len(stages) + 1) + "|")
    for s in solvers:
        cells = []
        for st in stages:
            med = np.median(times[s][st])
            ratio = np.median(np.array(times[s][st]) / np.array(times["qdldl"][st]))
            cells.append(f"{med * 1e3:.0f} ms ({ratio:.2f}x)")
        print(f"| {s} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
