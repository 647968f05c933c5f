"""The physical limit of the pipeline: its minimum memory traffic over the measured bandwidth.

The tutorial pipeline must at least read its inputs (the ``x``/``y`` offsets and the
``row``/``col`` positions of every stamp pixel, the per-source phases and brightnesses) and
write ``L`` and the model image once. No implementation can finish faster than those bytes
take to stream through memory on this machine, so ``time / limit`` says how far from the
hardware an implementation is, independently of any baseline.
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.scene import Scene

#: Bytes of each array used to measure the bandwidth (well above the last-level cache).
BANDWIDTH_BYTES = 256 * 2**20


def pipeline_bytes(scene: Scene, dtype=None) -> int:
    """Minimum bytes the tutorial pipeline moves: inputs read once, ``L`` and the image written once.

    ``dtype``: the float type of the offsets, phases and brightnesses (default: the scene's;
    ``np.float32`` gives the float32 pipeline's bytes, :func:`benchmarks.scene.as_float32`).
    The positions are the scene's integers in either case.
    """
    s = scene
    floats = (s.x3d, s.y3d, s.row_phase, s.col_phase, s.brightness)
    ints = (s.row3d, s.col3d)
    fsize = lambda a: np.asarray(a).size * (np.dtype(dtype).itemsize if dtype else np.asarray(a).itemsize)  # noqa: E731
    read = sum(fsize(a) for a in floats) + sum(np.asarray(a).nbytes for a in ints)
    H, W = scene.imshape
    itemsize = np.dtype(dtype).itemsize if dtype else np.result_type(scene.x3d, scene.row_phase).itemsize
    write = scene.x3d.size * itemsize + H * W * itemsize
    return int(read + write)


def thread_scaling(bandwidth: dict) -> float | None:
    """Best two-or-more-thread rate over the best one-thread rate of :func:`measure_bandwidth`.

    About 2 on this 2-core machine when the cores have the memory system to themselves; near 1
    when another tenant of the host loads it (then the limit is lower and the memory-bound
    parts of every implementation are slower).
    """
    rates = bandwidth.get("rates_by_threads") or {}
    one = max((v for k, v in rates.items() if k.endswith("/1")), default=None)
    more = max((v for k, v in rates.items() if not k.endswith("/1")), default=None)
    return None if not one or not more else more / one


def measure_bandwidth(repeats: int = 5, nbytes: int = BANDWIDTH_BYTES, threads: int | None = None) -> dict:
    """Memory bandwidth of this machine (bytes/s): the best rate of four streaming kernels.

    Read (``max``), write (``fill``), copy (counted as read + write, STREAM's convention) and
    ``a + b -> c`` (two reads, one write) over arrays of ``nbytes``, touched beforehand so
    that no page fault is timed, each split into ``t`` contiguous slices run in ``t`` threads
    for every ``t`` from 1 to ``threads`` (default: the library's
    ``sparse3d._threads.num_threads()``, the threads its pipeline may use), interleaved;
    each is run ``repeats`` times and the fastest run of the fastest kernel at the best
    thread count is the bandwidth. Taking the best makes the limit strict: it is what the
    hardware can do with as many threads as the library uses (so threads do not make the
    comparison easier), not what a loaded, shared machine did.
    """
    from concurrent.futures import ThreadPoolExecutor

    if threads is None:
        from sparse3d import _threads

        threads = _threads.num_threads()
    threads = max(1, int(threads))
    a = np.ones(nbytes // 8)
    b = np.ones_like(a)
    c = np.zeros_like(a)
    kernels = {
        "read": (lambda s: a[s].max(), nbytes),
        "write": (lambda s: c[s].fill(1.0), nbytes),
        "copy": (lambda s: np.copyto(c[s], a[s]), 2 * nbytes),
        "add": (lambda s: np.add(a[s], b[s], out=c[s]), 3 * nbytes),
    }
    best = {(name, t): float("inf") for name in kernels for t in range(1, threads + 1)}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(repeats):
            for name, (fn, _) in kernels.items():
                for t in range(1, threads + 1):
                    edges = [a.size * i // t for i in range(t + 1)]
                    slices = [slice(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]
                    t0 = time.perf_counter()
                    futures = [pool.submit(fn, s) for s in slices[1:]]
                    fn(slices[0])  # the first slice in this thread, the others in the pool
                    for f in futures:
                        f.result()
                    best[name, t] = min(best[name, t], time.perf_counter() - t0)
    rates_by_threads = {f"{name}/{t}": kernels[name][1] / dt for (name, t), dt in best.items()}
    rates = {name: max(kernels[name][1] / best[name, t] for t in range(1, threads + 1)) for name in kernels}
    top = max(rates_by_threads, key=rates_by_threads.get)
    return {
        "bytes_per_s": max(rates.values()),
        "rates": rates,
        "rates_by_threads": rates_by_threads,
        "best": top,
        "threads": threads,
        "array_bytes": nbytes,
    }
