"""Peak-memory measurement of one call, for use in a fresh process.

Two numbers are taken, because neither is complete alone:

* **peak RSS increase**: the kernel's high-water mark (``VmHWM``) is reset
  through ``/proc/self/clear_refs`` just before the call and read after it;
  the resident size before the call is subtracted.  This sees every
  allocation (NumPy, SciPy's C++ code, numba's runtime).  Before measuring,
  :func:`fix_mmap_threshold` makes glibc serve every allocation above 64 KiB
  with ``mmap``, so freed buffers return to the kernel and memory left in the
  heap by an earlier call cannot hide part of the peak.
* **tracemalloc peak**: allocations reported to :mod:`tracemalloc` (Python
  objects and NumPy data buffers; *not* numba-runtime or C++ ``new``).
"""

from __future__ import annotations

import gc
import tracemalloc

from benchmarks.cases import Prepared


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def fix_mmap_threshold(nbytes: int = 65536) -> bool:
    """Ask glibc to ``mmap`` every allocation above ``nbytes`` (no dynamic threshold).

    Returns
    -------
    bool
        ``False`` where ``mallopt`` is unavailable (non-glibc platforms).
    """
    import ctypes
    import ctypes.util

    M_MMAP_THRESHOLD = -3
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, nbytes))
    except (OSError, AttributeError):
        return False


def trim_heap() -> None:
    """Return free heap memory to the kernel (``malloc_trim``), so that it is
    not already resident when the measured call allocates it again."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process.

    Returns
    -------
    bool
        ``False`` if the platform does not allow it.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def measure_peak(prepared: Prepared) -> dict:
    """Peak memory of one call of a case (result included, inputs excluded).

    Parameters
    ----------
    prepared : Prepared
        The case; it should already be warm.  Its ``setup`` runs before the
        measurement starts.

    Returns
    -------
    dict
        ``rss_peak_bytes`` (``None`` if unsupported), ``traced_peak_bytes``
        and ``rss_before_bytes``.
    """
    arg = prepared.setup() if prepared.setup is not None else None
    gc.collect()
    trim_heap()
    can_reset = reset_peak_rss()
    before = _status_kb("VmRSS")
    result = prepared.run() if arg is None else prepared.run(arg)
    peak = _status_kb("VmHWM")
    del result, arg
    gc.collect()
    rss = None
    if can_reset and before is not None and peak is not None:
        rss = max(0, peak - before) * 1024

    arg = prepared.setup() if prepared.setup is not None else None
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    result = prepared.run() if arg is None else prepared.run(arg)
    _, traced_peak = tracemalloc.get_traced_memory()
    del result, arg
    tracemalloc.stop()
    return {
        "rss_peak_bytes": rss,
        "traced_peak_bytes": traced_peak - base,
        "rss_before_bytes": None if before is None else before * 1024,
    }
