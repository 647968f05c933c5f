"""Cost of the fit's sky terms and diagnostics, as ratios to the plain fit, on the tutorial scene.

``python -m benchmarks.fit_sky [--smoke] [--repeats N]`` times, side by side in one process:
``L.fit(image)`` (no background), with ``background="plane"``, with
``BilinearGrid(tile=(64, 64))``, and the first access of each lazy diagnostic of a
plane-background fit (``weights_err``, ``residuals``, ``source_chi2``, ``flags``,
``covariance()``), and prints each as a ratio to the plain fit, plus the sky's recovery.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .scene import SMOKE, TUTORIAL, make_scene


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny scene, 1 repeat")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    spec = SMOKE if args.smoke else TUTORIAL
    repeats = 1 if args.smoke else args.repeats

    from sparse3d import Sparse3D
    from sparse3d.fit import BilinearGrid

    sc = make_scene(spec)
    r2 = (sc.x3d - sc.row_phase) ** 2 + (sc.y3d - sc.col_phase) ** 2
    L = Sparse3D(np.exp(-0.5 * r2 / sc.sigma**2), sc.row3d, sc.col3d, spec.imshape)
    H, W = spec.imshape
    R, C = np.mgrid[:H, :W]
    sky = 20.0 + 5.0 * (R / H) - 3.0 * (C / W)
    rng = np.random.default_rng(0)
    model = L.dot(sc.brightness) + sky
    err = np.sqrt(np.abs(model) + 25.0)
    data = model + rng.normal(size=model.shape) * err

    L.fit(data, errors=err)  # warm caches (CSC form, numba kernels)
    t_plain = _median_time(lambda: L.fit(data, errors=err), repeats)
    t_plane = _median_time(lambda: L.fit(data, errors=err, background="plane"), repeats)
    grid = BilinearGrid(tile=(64, 64))
    t_grid = _median_time(lambda: L.fit(data, errors=err, background=grid), repeats)

    rows = [
        ("L.fit(image, errors)", t_plain),
        ('  background="plane"', t_plane),
        ("  BilinearGrid(64)", t_grid),
    ]
    res = L.fit(data, errors=err, background="plane")
    for name, get in [
        ("  .weights_err", lambda r: r.weights_err),
        ("  .residuals", lambda r: r.residuals),
        ("  .source_chi2", lambda r: r.source_chi2),
        ("  .flags", lambda r: r.flags),
        ("  .covariance()", lambda r: r.covariance()),
    ]:
        t0 = time.perf_counter()
        get(res)
        rows.append((name, time.perf_counter() - t0))
    print(f"scene: {spec.imshape[0]}x{spec.imshape[1]}, {spec.nsources} sources, stamp {spec.stamp}")
    print(f"{'what':32s} {'seconds':>9s} {'ratio to L.fit':>15s}")
    for name, t in rows:
        print(f"{name:32s} {t:9.3f} {t / t_plain:15.2f}")
    sky_err = np.abs(res.background_image - sky)
    print(
        f"sky recovery (plane): max |fitted - true| = {sky_err.max():.3g} (noise per pixel ~{err.min():.1f})"
    )


if __name__ == "__main__":
    main()
