"""The tutorial pipeline with one thread, the default option and an explicit thread count, in one process.

``python -m benchmarks.pipeline_threads [--repeats 11] [--float32]``: the NumPy baseline, the
library with ``set_options(num_threads=1)``, with the default option (threads, at most the
CPUs other processes leave idle) and with the default count set explicitly are run interleaved (each
repeat runs all four, in turn), after a warm-up; the physical limit is measured in the
same process (:func:`benchmarks.limits.measure_bandwidth`: the best bandwidth over 1 to the
default number of threads). Printed per variant: median wall time, its ratio to NumPy and to
the limit, the spread (max/min over the repeats), and the median process CPU time (all
threads). The results of every variant are checked to be the same bits.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--float32", action="store_true", help="the pipeline on float32 inputs")
    args = parser.parse_args(argv)

    import sparse3d
    from benchmarks.impls.library import build_L, build_xy
    from benchmarks.impls.numpy_baseline import model_image
    from benchmarks.limits import measure_bandwidth, pipeline_bytes
    from benchmarks.scene import TUTORIAL, as_float32, make_scene
    from sparse3d import _threads

    scene = make_scene(TUTORIAL)
    if args.float32:
        scene = as_float32(scene)
    default = _threads.num_threads()

    def library():
        X, Y = build_xy(scene)
        return np.asarray(build_L(scene, X, Y).dot(scene.brightness))

    variants = {
        "numpy": (None, lambda: model_image(scene)),
        "sparse3d 1 thread": (1, library),
        "sparse3d default": (0, library),
        f"sparse3d {default} threads": (default, library),
    }
    results = {}
    for name, (nt, fn) in variants.items():  # warm-up (compiles, fills the buffer pool)
        sparse3d.set_options(num_threads=nt or 0)
        results[name] = fn()
    lib = [r for name, r in results.items() if name != "numpy"]
    same = all(np.array_equal(lib[0], r) for r in lib)
    bw = measure_bandwidth(threads=default)
    limit = pipeline_bytes(scene) / bw["bytes_per_s"]
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (nt, fn) in variants.items():
            sparse3d.set_options(num_threads=nt or 0)
            gc.collect()
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    sparse3d.set_options(num_threads=0)
    base = float(np.median(wall["numpy"]))
    print(f"scene {TUTORIAL}, {'float32' if args.float32 else 'float64'}, {args.repeats} interleaved repeats")
    gbs = bw["bytes_per_s"] / 1e9
    print(
        f"limit {limit * 1e3:.2f} ms ({pipeline_bytes(scene) / 1e6:.0f} MB at {gbs:.1f} GB/s, "
        f"best {bw['best']}); library results the same bits for every thread count: {same}"
    )
    for name in variants:
        med = float(np.median(wall[name]))
        print(
            f"{name:>20}: {med * 1e3:7.2f} ms wall, vs numpy {med / base:.3f}x, "
            f"vs limit {med / limit:.2f}x, spread {max(wall[name]) / min(wall[name]):.2f}x, "
            f"cpu {np.median(cpu[name]) * 1e3:7.2f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
