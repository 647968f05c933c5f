"""Per-step time per stored element of the tutorial pipeline, in one process, steady state.

``python -m benchmarks.scaling_steps 100000 1000000`` builds the Gaussian scene on a
4096 x 4096 image for each source count and prints the nanoseconds per stored stamp element
of every step (the fastest warm repetition): construct X, construct Y, build L, the in-image
mask, the flat pixel index and ``L.dot(w)``. Growth that is linear in the number of elements
shows as a flat ns/element across sizes. (The main suite's scaling series runs each size in
a fresh worker and so also measures first-touch page faults, which are bimodal on a shared
machine.)
"""

from __future__ import annotations

import gc
import sys
import time

import numpy as np

from sparse3d import Sparse3D
from sparse3d.testing import gaussian_scene


def steps(nsources: int, imsize: int = 4096, repeats: int = 4) -> dict[str, float]:
    """Nanoseconds per stored element of each pipeline step: the fastest of ``repeats``
    runs after the first (the first pays one-off costs; the machine's memory system is
    bimodal under load, so the fastest run is the steady state)."""
    sc = gaussian_scene(imshape=(imsize, imsize), nsources=nsources, seed=1)
    shape = sc["imshape"]
    out: dict[str, float] = {}
    for rep in range(repeats):
        gc.collect()
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        X = Sparse3D(sc["x3d"], sc["row3d"], sc["col3d"], shape)
        t["construct X"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        Y = Sparse3D(sc["y3d"], sc["row3d"], sc["col3d"], shape)
        t["construct Y"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        L = np.exp(-0.5 * ((X - sc["row_phase"]) ** 2 + (Y - sc["col_phase"]) ** 2)) / (2 * np.pi)
        t["build L"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _ = L._structure.in_image
        t["mask"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _ = L._structure.pixel
        t["pixel index"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        L.dot(sc["brightness"])
        t["dot"] = time.perf_counter() - t0
        elements = sc["x3d"].size
        if rep > 0:
            out = {k: min(v * 1e9 / elements, out.get(k, np.inf)) for k, v in t.items()}
        del X, Y, L
    out["total"] = sum(out.values())
    return out


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [100_000, 1_000_000]
    for n in sizes:
        row = steps(n)
        print(f"{n:>9,} sources: " + "  ".join(f"{k} {v:.1f}" for k, v in row.items()) + "  ns/element")


if __name__ == "__main__":
    main(sys.argv[1:])
