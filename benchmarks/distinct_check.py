"""Cost of refusing repeated positions within a stamp, against building the array.

Every ``Sparse3D`` built from user positions checks once (per structure) that no stamp
covers a pixel twice. Grid stamps (the tutorial's ``R[:, :, None] + row_int`` layout, also
flipped or transposed) take a vectorised fast path; any other layout numbers each source's
positions within its bounding box and sorts them per source. This script times both paths
on the tutorial's scene next to the full constructor (which includes the check), best of
``--repeat`` runs, in one process::

    python benchmarks/distinct_check.py                    # 1024², 50,000 sources, 10 × 10
    python benchmarks/distinct_check.py --nsources 5000
"""

from __future__ import annotations

import argparse
import time


def _best(func, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv=None) -> None:
    from sparse3d import Sparse3D
    from sparse3d._structure import as_position_array, check_distinct
    from sparse3d.testing import gaussian_scene

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imsize", type=int, default=1024)
    parser.add_argument("--nsources", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    sc = gaussian_scene(imshape=(args.imsize, args.imsize), nsources=args.nsources)
    shape = sc["x3d"].shape
    row = as_position_array(sc["row3d"], "row", shape)
    col = as_position_array(sc["col3d"], "col", shape)
    scattered = row.copy()  # distinct, but not a grid: the general path
    scattered[[0, 1]] = scattered[[1, 0]]  # swap two stamp rows (rows no longer monotone)

    def build():  # fresh position arrays each time, so the interning cache cannot help
        Sparse3D(sc["x3d"], sc["row3d"].copy(), sc["col3d"].copy(), sc["imshape"])

    t_build = _best(build, args.repeat)
    t_grid = _best(lambda: check_distinct(row, col), args.repeat)
    t_general = _best(lambda: check_distinct(scattered, col), args.repeat)
    print(f"scene: {args.imsize}² image, {args.nsources} sources, stamps {shape[:2]}")
    print(f"construct X (check included): {t_build * 1e3:8.1f} ms")
    print(f"check, grid fast path:        {t_grid * 1e3:8.1f} ms  ({t_grid / t_build:.1%} of construction)")
    print(f"check, general path:          {t_general * 1e3:8.1f} ms  ({t_general / t_build:.2f}x of it)")


if __name__ == "__main__":
    main()
