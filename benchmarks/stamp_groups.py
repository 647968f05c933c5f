"""Mixed stamp sizes: one grouped array against its groups done separately and one big size.

The scene of issue 13: a 1024² image, 49,000 faint sources on 11 × 11 stamps and 1,000
bright ones on 41 × 41. Three ways to compute the tutorial pipeline (construct ``X`` and
``Y``, the Gaussian expression for ``L``, ``L.dot(w)``) and a fit of the model image:

* ``grouped``: ``X``, ``Y`` of each size concatenated into one array with two stamp groups
  (``np.concatenate``, which shares the pieces' values, or ``Sparse3D.from_groups``, which
  copies them into one block), then the pipeline and ``L.fit(image)`` on it, exactly as for
  a single-shape array;
* ``separate``: the pipeline and the fit on each size's sources alone, times summed
  (the target: ``grouped`` costs at most 1.1× this);
* ``all41``: every source on 41 × 41 stamps (what one shape for everyone costs).

The fit is also split into its two big steps, each grouped against separate: the normal
matrix ``A^T A`` (the grouped one has the cross-group block on top of the groups' own blocks)
and its factorisation. The joint factorisation is the inherent extra cost of fitting the
groups together: its matrix has the cross terms (bright stamps overlap the faint ones), so its
factor has more fill-in and more flops than the two separate factors together.

Best of ``--repeat`` runs, all in one process, so ratios are side by side; ``--clock cpu``
times with the process's CPU time (``time.process_time``, all threads) instead of the wall
clock: on a shared, busy machine the steadier measure. The fit runs on one thread, except the
grouped fit's cross-group block, which runs in a worker thread beside the groups' own row
counts when a core is free (it saves wall time, not CPU time)::

    python -m benchmarks.stamp_groups                  # the issue's scene
    python -m benchmarks.stamp_groups --small 4900 --big 100 --repeat 2
    python -m benchmarks.stamp_groups --repeat 5 --no-all41 --clock cpu
    python -m benchmarks.stamp_groups --repeat 5 --no-all41 --noise 0.01   # a near-perfect fit

The fitted image is the grouped model with the seed tutorial's noise (``--noise tutorial``, the
default; until 2026-11-29 the benchmark used ``--noise 0.01``: see ``_noisy``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.scene import tutorial_noise

#: the clock of every timing (``--clock``)
_clock = time.perf_counter


def _interleaved(grouped, parts, repeat: int) -> tuple[float, float, float]:
    """``(best grouped, best sum of parts, median per-round ratio)``, rounds interleaved.

    Each round times ``grouped`` and then every function of ``parts``, so load changes on a
    shared machine hit both sides alike; the ratio of each round is grouped / sum of parts.
    """
    tg, ts = [], []
    for _ in range(repeat):
        t0 = _clock()
        grouped()
        tg.append(_clock() - t0)
        total = 0.0
        for f in parts:
            t0 = _clock()
            f()
            total += _clock() - t0
        ts.append(total)
    return min(tg), min(ts), float(np.median(np.array(tg) / np.array(ts)))


def _best(func, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = _clock()
        func()
        times.append(_clock() - t0)
    return min(times)


def _factor_entries(factor) -> int | None:
    """Entries of a Cholesky factor, diagonal included (``"nd"`` and ``"qdldl"``), else None."""
    if hasattr(factor, "nnz"):  # "nd": its supernodal blocks
        return factor.nnz
    LD = getattr(factor, "_LD", None)  # "qdldl": its strictly lower L, and D
    return None if LD is None else LD[0].nnz + LD[1].size


def _factor_flops(factor) -> int | None:
    """Multiply-adds of a Cholesky factorisation, ``sum_j c_j**2`` over the factor's column counts
    ``c_j`` (diagonal included; ``"nd"``: its supernodal blocks, explicit zeros of relaxed
    supernodes included), else None."""
    blocks = getattr(factor, "_blocks", None)
    if blocks is None:
        return None
    sstart, sptr = blocks[0], blocks[1]
    total = 0
    for k, r in zip(np.diff(sstart).tolist(), np.diff(sptr).tolist()):
        c = np.arange(r + 1, r + k + 1, dtype=np.int64)  # the supernode's columns: r + k, ..., r + 1
        total += int(np.dot(c, c))
    return total


def _inputs(rng, n: int, size: int, imshape, pos=None, w=None):
    """Stamp offsets, positions and phases of ``n`` sources on ``size`` × ``size`` stamps."""
    pos = rng.uniform(0, 1, size=(n, 2)) * np.array(imshape) if pos is None else pos
    ri, ci = np.floor(pos).astype(int).T
    R, C = np.mgrid[:size, :size] - size // 2
    return {
        "row3d": R[:, :, None] + ri,
        "col3d": C[:, :, None] + ci,
        "x3d": R[:, :, None] * np.ones(n),
        "y3d": C[:, :, None] * np.ones(n),
        "rp": pos[:, 0] % 1,
        "cp": pos[:, 1] % 1,
        "w": 10 ** rng.normal(0, 1.5, size=n) if w is None else w,
        "pos": pos,
    }


def _noisy(model: np.ndarray, noise: str) -> np.ndarray:
    """The image fitted: ``model`` with the seed tutorial's noise (``"tutorial"``: Poisson noise
    of the model plus a Gaussian read noise of 3 counts, rounded, as
    :func:`benchmarks.scene.tutorial_noise`) or Gaussian noise of the given sigma (``"0.01"``:
    a near-perfect fit, whose chi-square cancels in the normal equations' identity and is
    recomputed from the residuals; a group fitted alone misses the other group's stars and
    does not need that)."""
    rng = np.random.default_rng(1)
    if noise == "tutorial":
        return tutorial_noise(model, rng)
    return model + rng.normal(0, float(noise), size=model.shape)


def _xy(p, imshape):
    from sparse3d import Sparse3D

    X = Sparse3D(p["x3d"], p["row3d"], p["col3d"], imshape)
    Y = Sparse3D(p["y3d"], p["row3d"], p["col3d"], imshape)
    return X, Y


def _model(X, Y, rp, cp, sigma=1.5):
    return np.exp(-0.5 * ((X - rp) ** 2 / sigma**2 + (Y - cp) ** 2 / sigma**2)) * 1 / (2 * np.pi * sigma**2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imsize", type=int, default=1024)
    parser.add_argument("--small", type=int, default=49_000, help="sources on 11 x 11 stamps")
    parser.add_argument("--big", type=int, default=1_000, help="sources on 41 x 41 stamps")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--no-all41", action="store_true", help="skip every-source-on-41x41 (needs ~6 GB at full size)"
    )
    parser.add_argument(
        "--no-fit41",
        action="store_true",
        help="skip the fit with every source on 41 x 41 (its normal matrix needs several GB at full size)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time by the wall clock (perf_counter) or by this process's CPU time (process_time)",
    )
    parser.add_argument(
        "--noise",
        default="tutorial",
        help="noise of the fitted image: 'tutorial' (Poisson + read noise 3, as the seed tutorial) or a "
        "Gaussian sigma, e.g. 0.01 (a near-perfect fit)",
    )
    args = parser.parse_args(argv)
    if args.noise != "tutorial":
        float(args.noise)  # a clear error for anything else
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    imshape = (args.imsize, args.imsize)
    rng = np.random.default_rng(0)
    small = _inputs(rng, args.small, 11, imshape)
    big = _inputs(rng, args.big, 41, imshape)
    both = {k: np.concatenate([small[k], big[k]], axis=-1) for k in ("rp", "cp", "w")}
    # the same sources, every one on a 41 x 41 stamp
    pos = np.concatenate([small["pos"], big["pos"]])
    everyone41 = _inputs(None, args.small + args.big, 41, imshape, pos=pos, w=both["w"])

    def pipeline_grouped():
        Xs, Ys = _xy(small, imshape)
        Xb, Yb = _xy(big, imshape)
        X = np.concatenate([Xs, Xb], axis=2)
        Y = np.concatenate([Ys, Yb], axis=2)
        return _model(X, Y, both["rp"], both["cp"]).dot(both["w"])

    def pipeline_from_groups():
        from sparse3d import Sparse3D

        parts = (small, big)
        X = Sparse3D.from_groups(
            [p["x3d"] for p in parts], [p["row3d"] for p in parts], [p["col3d"] for p in parts], imshape
        )
        Y = Sparse3D.from_groups(
            [p["y3d"] for p in parts], [p["row3d"] for p in parts], [p["col3d"] for p in parts], imshape
        )
        return _model(X, Y, both["rp"], both["cp"]).dot(both["w"])

    def pipeline_one(p):
        X, Y = _xy(p, imshape)
        return _model(X, Y, p["rp"], p["cp"]).dot(p["w"])

    def pipeline_separate():
        return pipeline_one(small) + pipeline_one(big)

    # the same image from both ways (checked once, outside the timings)
    np.testing.assert_allclose(pipeline_grouped(), pipeline_separate(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pipeline_from_groups(), pipeline_separate(), rtol=1e-10, atol=1e-12)

    Xs, Ys = _xy(small, imshape)
    Xb, Yb = _xy(big, imshape)
    Ls = _model(Xs, Ys, small["rp"], small["cp"])
    Lb = _model(Xb, Yb, big["rp"], big["cp"])
    del Xs, Ys, Xb, Yb
    L = np.concatenate([Ls, Lb], axis=2)
    image = _noisy(L.dot(both["w"]), args.noise)

    pipeline_grouped()  # warm: compiled kernels, buffer pool
    t_pg, t_psb, r_p = _interleaved(
        pipeline_grouped, [lambda: pipeline_one(small), lambda: pipeline_one(big)], args.repeat
    )
    L.fit(image)
    t_fg, t_fsb, r_f = _interleaved(
        lambda: L.fit(image), [lambda: Ls.fit(image), lambda: Lb.fit(image)], args.repeat
    )
    # the fit's two big steps, grouped against separate
    from sparse3d.fit._checks import _check_solver
    from sparse3d.fit.assemble import _scaled_normal_matrix
    from sparse3d.fit.factor import _factorize_or_raise

    solver = _check_solver("auto")
    t_ng, t_nsb, r_n = _interleaved(
        lambda: _scaled_normal_matrix(L, None),
        [lambda: _scaled_normal_matrix(Ls, None), lambda: _scaled_normal_matrix(Lb, None)],
        args.repeat,
    )
    from sparse3d.fit.ordering import stamp_boxes

    arrays = {"g": L, "s": Ls, "b": Lb}
    nm = {k: _scaled_normal_matrix(x, None)[0] for k, x in arrays.items()}
    boxes = {k: stamp_boxes(x, None) for k, x in arrays.items()}  # as a fit passes them ("nd")
    t_cg, t_csb, r_c = _interleaved(
        lambda: _factorize_or_raise(nm["g"], None, solver, None, boxes["g"]),
        [lambda k=k: _factorize_or_raise(nm[k], None, solver, None, boxes[k]) for k in ("s", "b")],
        args.repeat,
    )
    factors = {k: _factorize_or_raise(nm[k], None, solver, None, boxes[k]) for k in ("g", "s", "b")}
    solver = factors["g"].name
    nnz = (nm["g"].nnz, nm["s"].nnz + nm["b"].nnz)
    # the factors' entries: the fill the cross-group coupling adds (see the module docstring)
    lnz = [_factor_entries(factors[k]) for k in ("g", "s", "b")]
    lnz = None if None in lnz else (lnz[0], lnz[1] + lnz[2])
    # multiply-adds of the "nd" factors (the small group's own may be "qdldl": not counted)
    flops = [_factor_flops(factors[k]) for k in ("g", "s", "b")]
    factors.clear()
    nm.clear()
    nbytes = L.nbytes
    L = Ls = Lb = None  # free them before the 41 x 41 arrays
    # everyone on 41 x 41 (the largest arrays: built last, alone)
    t_p41 = t_f41 = np.nan
    nbytes41 = np.nan
    if not args.no_all41:
        t_p41 = _best(lambda: pipeline_one(everyone41), args.repeat)
        X41, Y41 = _xy(everyone41, imshape)
        L41 = _model(X41, Y41, everyone41["rp"], everyone41["cp"])
        del X41, Y41
        nbytes41 = L41.nbytes
        image41 = _noisy(L41.dot(everyone41["w"]), args.noise)
        if not args.no_fit41:
            t_f41 = _best(lambda: L41.fit(image41), args.repeat)
    pipeline_from_groups()
    t_pf, t_psb2, r_pf = _interleaved(
        pipeline_from_groups, [lambda: pipeline_one(small), lambda: pipeline_one(big)], args.repeat
    )
    rows = [
        ("pipeline (np.concatenate)", t_pg, t_psb, r_p, t_p41),
        ("pipeline (Sparse3D.from_groups)", t_pf, t_psb2, r_pf, t_p41),
        ("fit", t_fg, t_fsb, r_f, t_f41),
        ("fit: normal matrix", t_ng, t_nsb, r_n, np.nan),
        (f"fit: factorisation ({solver})", t_cg, t_csb, r_c, np.nan),
    ]
    print(
        f"{args.small:,} sources on 11x11 + {args.big:,} on 41x41, image {imshape}; best of {args.repeat} "
        f"({'CPU time' if args.clock == 'cpu' else 'wall clock'}); fitted image's noise: {args.noise}\n"
    )
    print(
        "| step | grouped | separate (sum) | grouped / separate (best; median of rounds) "
        "| all on 41x41 | grouped / all41 |"
    )
    print("|---|---|---|---|---|---|")
    for name, g, s, r, a in rows:
        print(
            f"| {name} | {g * 1e3:.0f} ms | {s * 1e3:.0f} ms | {g / s:.2f}; {r:.2f} "
            f"| {a * 1e3:.0f} ms | {g / a:.2f} |"
        )
    print("(nan: skipped with --no-all41 / --no-fit41)")
    print(f"normal matrix (lower triangle): {nnz[0]:,} entries grouped, {nnz[1]:,} in the two separate ones")
    if lnz is not None:
        print(f"Cholesky factor ({solver}): {lnz[0]:,} entries grouped, {lnz[1]:,} in the two separate ones")
    if flops[0] is not None and flops[1] is not None:
        sep = flops[1] + (flops[2] or 0)
        note = "" if flops[2] else " (the big group's own, not nd, not counted)"
        print(
            f"Cholesky factorisation (nd), multiply-adds (sum of squared column counts): {flops[0]:.3g} "
            f"grouped, {sep:.3g} in the two separate ones{note}"
        )
    print(f"\nmemory of L: grouped {nbytes / 2**20:.0f} MiB, all on 41x41 {nbytes41 / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
