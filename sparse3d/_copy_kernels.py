"""Compiled copy of a values block with its bounds (:func:`sparse3d._deferred.copy_with_bounds`).

One pass: every value is copied, and the minimum, the maximum and whether any value is NaN or
infinite are kept in registers, instead of the copy followed by two NumPy reductions of each
cached chunk. The loop reads and writes the values through integer views of the same memory
(an exact copy of the bits), so that it vectorises (numba's float ``min``/``max`` do not):

* the order of finite floats is the order of the signed integer keys
  ``b ^ ((b >> (w - 1)) & (2**(w - 1) - 1))`` of their bits ``b`` (negative floats have their
  magnitude bits flipped), so the minimum and maximum keys give the minimum and maximum values
  exactly (``-0.0`` orders before ``0.0``; they compare equal);
* NaN and infinities have all exponent bits set: the largest ``b & exponent`` tells whether
  one is present (then the caller's bounds are ``None``).

Imported lazily (numba costs ~0.3 s to import); compiled once per dtype (~0.6 s for the first,
~0.15 s for the second) and cached on disk (``cache=True``); :func:`sparse3d.precompile` runs
:func:`precompile_kernels`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["copy_bounds", "precompile_kernels"]

#: Per float type: its integer type, the exponent bits, the magnitude bits, the sign shift.
_BITS = {
    np.dtype(np.float64): (np.int64, np.int64(0x7FF0000000000000), np.int64(2**63 - 1), np.int64(63)),
    np.dtype(np.float32): (np.int32, np.int32(0x7F800000), np.int32(2**31 - 1), np.int32(31)),
}


@njit(cache=True, nogil=True)
def _copy_bounds_loop(bits, out, exponent, magnitude, shift):  # pragma: no cover - runs compiled
    first = bits[0] ^ ((bits[0] >> shift) & magnitude)
    kmin = first
    kmax = first
    ex = bits[0] & exponent
    for i in range(bits.shape[0]):
        b = bits[i]
        out[i] = b
        key = b ^ ((b >> shift) & magnitude)  # ordered like the float b holds (not NaN)
        kmin = min(kmin, key)
        kmax = max(kmax, key)
        ex = max(ex, b & exponent)
    return kmin, kmax, ex == exponent


def _value(key: int, itype, magnitude, shift, dtype) -> float:
    k = np.array(key, dtype=itype)
    return float((k ^ ((k >> shift) & magnitude)).view(dtype))  # the key map is its own inverse


def copy_bounds(src: np.ndarray, dst: np.ndarray):
    """Copy the 1-D float array ``src`` into ``dst``; ``(lo, hi)`` of its values, or None if
    one is NaN or infinite. ``src`` must be non-empty, contiguous, float32 or float64."""
    itype, exponent, magnitude, shift = _BITS[src.dtype]
    bits = src.view(itype)
    if bits.flags.writeable:  # one compiled type per dtype: read-only input
        bits = bits.view()
        bits.flags.writeable = False
    kmin, kmax, bad = _copy_bounds_loop(bits, dst.view(itype), exponent, magnitude, shift)
    if bad:
        return None
    dtype = src.dtype
    return _value(kmin, itype, magnitude, shift, dtype), _value(kmax, itype, magnitude, shift, dtype)


def precompile_kernels() -> None:
    """Compile (or load) the loop for float64 and float32 values."""
    for dtype in (np.float64, np.float32):
        copy_bounds(np.ones(2, dtype), np.empty(2, dtype))
