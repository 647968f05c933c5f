"""The cost of the first fit in a fresh environment (numba compilation) and with a warm cache.

    python -m benchmarks.fit_firstcall [--nsources 2000] [--imsize 256]

Each case runs in a fresh interpreter with its own empty ``NUMBA_CACHE_DIR``: ``cold`` fits once
(compiling whatever the fit needs), ``warm`` fits once more in a new interpreter on the same
cache directory, ``precompile`` times ``sparse3d.precompile()`` on a fresh cache. Reported: the
wall time of the first ``L.fit(image)`` with ``weights_err`` (imports excluded) and whether
``numba`` was imported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_CHILD = """
import json, sys, time
import numpy as np
t0 = time.perf_counter()
import sparse3d
t_import = time.perf_counter() - t0
n, size = {n}, {size}
rng = np.random.default_rng(1)
r = rng.uniform(0, size, n); c = rng.uniform(0, size, n)
R, C = np.mgrid[:7, :7] - 3
row = R[:, :, None] + np.floor(r).astype(int); col = C[:, :, None] + np.floor(c).astype(int)
v = np.exp(-0.5 * ((R[:, :, None] - r % 1) ** 2 + (C[:, :, None] - c % 1) ** 2))
S = sparse3d.Sparse3D(v, row, col, imshape=(size, size))
img = np.asarray(S.dot(rng.uniform(1, 10, n))) + rng.normal(0, 0.1, (size, size))
t0 = time.perf_counter()
if {precompile}:
    sparse3d.precompile()
else:
    res = S.fit(img, errors=np.full((size, size), 0.1))
    res.weights_err
dt = time.perf_counter() - t0
print(json.dumps({{"seconds": dt, "import": t_import, "numba": "numba" in sys.modules}}))
"""


def _run(n: int, size: int, cache: str, precompile: bool = False) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    code = _CHILD.format(n=n, size=size, precompile=precompile)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.fit_firstcall", description=__doc__.splitlines()[0]
    )
    p.add_argument("--nsources", type=int, default=2000)
    p.add_argument("--imsize", type=int, default=256)
    p.add_argument("--precompile", action="store_true", help="also time sparse3d.precompile() cold and warm")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        cold = _run(args.nsources, args.imsize, cache)
        warm = _run(args.nsources, args.imsize, cache)
    print(f"{args.nsources} sources on {args.imsize}^2, first fit + weights_err (imports excluded):")
    print(f"  cold cache: {cold['seconds']:.2f} s (numba imported: {cold['numba']})")
    print(f"  warm cache: {warm['seconds']:.2f} s (numba imported: {warm['numba']})")
    if args.precompile:
        with tempfile.TemporaryDirectory() as cache:
            pc = _run(args.nsources, args.imsize, cache, precompile=True)
            pw = _run(args.nsources, args.imsize, cache, precompile=True)
        print(f"  precompile() on an empty cache: {pc['seconds']:.2f} s; cached: {pw['seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
