"""A small pool of value buffers that died unreferenced, reused for the next array's values.

Every array is immutable, so every result is a new buffer; a new buffer of tens of MB costs
more in first-touch page faults (zeroing fresh pages, ~6 µs per 4 KiB page on a VM) than
the arithmetic that fills it, and how much more depends on the kernel's state: that is the
run-to-run bimodality of a pipeline. Buffers of arrays that die are therefore kept here
(already faulted in) and handed to the next array of the same shape and dtype.

Safety: a buffer is taken in only when the dying :class:`~sparse3d.Sparse3D` is its only
holder — its reference count says no view (``S.data``), no other array (``translate``
shares values), no cache and no user holds it — and it owns its memory. A buffer is handed
out only to be overwritten completely (``out=`` of a ufunc, ``np.copyto``) before the new
array is built on it, so no value of a dead array can show through.

The pool is bounded by the option ``buffer_pool_bytes`` (default 256 MiB; 0 disables it);
buffers larger than a quarter of it are never pooled, so at scale nothing extra stays
resident.
"""

from __future__ import annotations

import sys
import threading
import weakref

import numpy as np

from ._options import get_options

__all__ = ["take", "give_back", "clear", "pooled_bytes"]

#: Buffers smaller than this are left to the allocator (their page-fault cost is small).
MIN_BYTES = 1 << 20

_LOCK = threading.Lock()
_BUFFERS: list[np.ndarray] = []  # oldest first


def pooled_bytes() -> int:
    """Bytes currently held by the pool."""
    with _LOCK:
        return sum(b.nbytes for b in _BUFFERS)


def clear() -> None:
    """Release every pooled buffer."""
    with _LOCK:
        _BUFFERS.clear()


def empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A pooled buffer (see :func:`take`) when one fits, else a new ``np.empty``; overwrite all of it."""
    dtype = np.dtype(dtype)
    buf = take(shape, dtype) if int(np.prod(shape)) * dtype.itemsize >= MIN_BYTES else None
    return np.empty(shape, dtype=dtype) if buf is None else buf


def take(shape: tuple[int, ...], dtype) -> np.ndarray | None:
    """A writeable pooled C-contiguous array of ``shape`` and ``dtype``, or ``None``.

    The caller must overwrite all of it before anyone else can see it.
    """
    dtype = np.dtype(dtype)
    with _LOCK:
        for i, buf in enumerate(_BUFFERS):
            if buf.shape == shape and buf.dtype == dtype:
                del _BUFFERS[i]
                break
        else:
            return None
    buf.flags.writeable = True
    return buf


def give_back(values: np.ndarray, extra_refs: int) -> None:
    """Offer the buffer of a dying array; kept only if no one else can reach it.

    ``extra_refs`` is the number of references the caller itself holds (its attribute and
    locals); one more is ``getrefcount``'s own argument.
    """
    if values.nbytes < MIN_BYTES or values.base is not None or not values.flags.owndata:
        return
    if not values.flags.c_contiguous or sys.getrefcount(values) != extra_refs + 2:
        return  # +2: this function's argument and getrefcount's
    if weakref.getweakrefcount(values):
        return  # someone could still reach it through a weak reference
    cap = get_options().get("buffer_pool_bytes", 0)
    if values.nbytes > cap // 4:
        return
    with _LOCK:
        _BUFFERS.append(values)
        total = sum(b.nbytes for b in _BUFFERS)
        while total > cap and _BUFFERS:
            total -= _BUFFERS.pop(0).nbytes
