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


def pipeline_bytes(scene: Scene) -> int:
    """Minimum bytes the tutorial pipeline moves: inputs read once, ``L`` and the image written once."""
    s = scene
    inputs = (s.x3d, s.y3d, s.row3d, s.col3d, s.row_phase, s.col_phase, s.brightness)
    read = sum(np.asarray(a).nbytes for a in inputs)
    H, W = scene.imshape
    itemsize = np.result_type(scene.x3d, scene.row_phase).itemsize
    write = scene.x3d.size * itemsize + H * W * itemsize
    return int(read + write)


def measure_bandwidth(repeats: int = 5, nbytes: int = BANDWIDTH_BYTES) -> dict:
    """Memory bandwidth of this machine (bytes/s): the best rate of four streaming kernels.

    Read (``max``), write (``fill``), copy (counted as read + write, STREAM's convention) and
    ``a + b -> c`` (two reads, one write) over arrays of ``nbytes``, touched beforehand so
    that no page fault is timed; each is run ``repeats`` times and the fastest run of the
    fastest kernel is the bandwidth. Taking the best makes the limit strict: it is what the
    hardware can do, not what a loaded, shared machine did.
    """
    a = np.ones(nbytes // 8)
    b = np.ones_like(a)
    c = np.zeros_like(a)
    kernels = {
        "read": (lambda: a.max(), nbytes),
        "write": (lambda: c.fill(1.0), nbytes),
        "copy": (lambda: np.copyto(c, a), 2 * nbytes),
        "add": (lambda: np.add(a, b, out=c), 3 * nbytes),
    }
    rates = {}
    for name, (fn, moved) in kernels.items():
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        rates[name] = moved / best
    return {"bytes_per_s": max(rates.values()), "rates": rates, "array_bytes": nbytes}
