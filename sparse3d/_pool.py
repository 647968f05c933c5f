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

Results handed out as plain ``ndarray`` (a model image or cube from ``dot``) die without
telling anyone, so they are *lent* instead (:func:`lend`): the pool keeps a reference to the
buffer it handed out and gives it out again once that reference is the only one left (the
caller dropped the result and every view of it). A jitter loop's models then land in the
same few already-faulted buffers instead of a fresh ``mmap`` per call. Lent buffers are
bounded by half of ``buffer_pool_bytes``; beyond that the oldest are forgotten (their
holders keep them, the pool no longer reuses them).
"""

from __future__ import annotations

import math
import sys
import threading
import weakref

import numpy as np

from ._options import get_options

__all__ = ["take", "give_back", "clear", "pooled_bytes", "lend", "lent_bytes", "aligned_empty"]

#: Buffers smaller than this are left to the allocator (their page-fault cost is small).
MIN_BYTES = 1 << 20

_LOCK = threading.Lock()
_BUFFERS: list[np.ndarray] = []  # oldest first
_LENT: list[np.ndarray] = []  # buffers handed out by lend(), least recently lent first
#: Whether ``sys.getrefcount`` counts every holder (what :func:`lend` relies on).
_EXACT_REFCOUNTS = sys.implementation.name == "cpython" and sys.version_info < (3, 14)


def pooled_bytes() -> int:
    """Bytes currently held by the pool."""
    with _LOCK:
        return sum(b.nbytes for b in _BUFFERS)


def lent_bytes() -> int:
    """Bytes of the buffers :func:`lend` keeps track of (held by callers or free for reuse)."""
    with _LOCK:
        return sum(b.nbytes for b in _LENT)


def clear() -> None:
    """Release every pooled buffer and forget every lent one."""
    with _LOCK:
        _BUFFERS.clear()
        _LENT.clear()


def empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A pooled buffer (see :func:`take`) when one fits, else a new ``np.empty``; overwrite all of it."""
    dtype = np.dtype(dtype)
    buf = take(shape, dtype) if math.prod(shape) * dtype.itemsize >= MIN_BYTES else None
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


def lend(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A writeable C-contiguous array to return to a caller as a result; overwrite all of it.

    Re-uses a buffer lent before when no one but the pool holds it any more (its reference
    count and its memory owner's say no result, view or memoryview of it is alive, and no
    weak reference points at either); otherwise a new :func:`aligned_empty` buffer, which
    the pool keeps track of. Buffers below ``MIN_BYTES`` or above a quarter of
    ``buffer_pool_bytes`` are not tracked (a plain ``np.empty``), and nothing is on
    interpreters whose reference counts can omit holders (CPython 3.14's borrowed stack
    references, PyPy): there a buffer could look free while it is held.
    """
    # called once per model in a loop, with caches cold from the model before: plain Python
    # (np.prod of a tuple costs ~20 us there, math.prod ~2 us)
    if not isinstance(dtype, np.dtype):
        dtype = np.dtype(dtype)
    shape = tuple(int(n) for n in shape)
    nbytes = math.prod(shape) * dtype.itemsize
    cap = get_options().get("buffer_pool_bytes", 0)
    if nbytes < MIN_BYTES or nbytes > cap // 4 or not _EXACT_REFCOUNTS:
        return np.empty(shape, dtype=dtype)
    with _LOCK:
        for i in range(len(_LENT)):  # no enumerate: its cached tuple would hold a reference
            buf = _LENT[i]
            # 3 references: the list, ``buf`` and getrefcount's argument
            if buf.shape == shape and buf.dtype == dtype and sys.getrefcount(buf) == 3:
                # views of ``buf`` name its memory's owner as their base, not ``buf``:
                # 3 references to the owner are ``buf.base``, ``owner`` and the argument
                owner = buf.base
                if owner is not None and (sys.getrefcount(owner) != 3 or weakref.getweakrefcount(owner)):
                    continue
                del owner
                if not weakref.getweakrefcount(buf):
                    del _LENT[i]
                    _LENT.append(buf)  # most recently lent last
                    buf.flags.writeable = True
                    return buf
        buf = aligned_empty(shape, dtype)
        _LENT.append(buf)
        total = sum(b.nbytes for b in _LENT)
        while total > cap // 2 and len(_LENT) > 1:
            total -= _LENT.pop(0).nbytes  # forgotten, not freed: its holder may still use it
    return buf


#: :func:`aligned_empty` starts buffers of at least two of these at such a boundary (a
#: transparent huge page on x86-64 Linux).
HUGE_PAGE_BYTES = 2 << 20


def aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """A new C-contiguous ``np.empty``-like array whose data start at a 64-byte boundary, and
    at a 2 MiB one (:data:`HUGE_PAGE_BYTES`) from 4 MiB on, with the rest of its last 2 MiB
    page its own. Its ``base`` is the ``uint8`` array that owns the memory.

    ``np.empty`` data start 16 bytes past a page boundary: every 4 KiB image row of a model
    then begins and ends in the middle of a cache line, which the non-temporal stores of the
    model kernels cannot write whole (the partial lines are read from memory first), and
    the first and last 2 MiB of the buffer are not inside a huge page NumPy asks the kernel
    for (``madvise``), so writing 4 KiB rows costs a TLB miss each. Measured on a jitter
    loop's 6 MB models: -15 to -20% time per planes product.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    align = HUGE_PAGE_BYTES if nbytes >= 2 * HUGE_PAGE_BYTES else 64
    raw = np.empty(-(-nbytes // align) * align + align, dtype=np.uint8)
    start = -raw.__array_interface__["data"][0] % align
    return raw[start : start + nbytes].view(dtype).reshape(shape)
