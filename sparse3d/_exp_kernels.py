"""NumPy's float32 ``exp``, bit for bit, as a numba function a compiled segment can inline.

A deferred chain such as the tutorial's ``exp(-0.5 * (dx**2 + dy**2)) / c`` runs its cheap
operations in one compiled loop (:mod:`sparse3d._segments`) but had to leave ``exp`` to
NumPy: three calls per chunk, and the argument written to a buffer and read back. On x86-64
with AVX2+FMA3 or AVX-512F, NumPy computes float32 ``exp`` of a contiguous array with one
algorithm (its ``simd_exp_FLOAT``): NaN lanes are replaced by 0 and inputs at or beyond the
thresholds ``xmax`` / ``xmin`` by 0; ``k = rint(x * log2(e))`` by the ``1.5 * 2**23`` add and
subtract; a two-step Cody-Waite reduction with fused multiply-adds (and a third with a zero
constant); a rational approximation ``P5(r) / Q2(r)`` evaluated with fused multiply-adds; the
scaling by ``2**k`` rounded once; then NaN, ``inf`` and ``0`` for the masked lanes.
:func:`npexp32` performs the same IEEE float32 operations in the same order (the fused
multiply-adds through LLVM's ``llvm.fma.f32``, nothing else contracted: numba compiles
without fast-math), so it returns the same bits; ``2**k`` is applied as two exact powers of
two, ``(p * 2**(k//2)) * 2**(k - k//2)``, whose first product is exact (normal) so only the
second rounds, like NumPy's single scaling (subnormal results and overflow included).

This reproduces NumPy's code path, not the mathematical function, so it is used only where
:func:`matches_numpy` has seen NumPy take that path: the CPU has the SIMD extensions and
NumPy's ``exp`` returns the same bits on a probe of :data:`PROBE_SIZE` inputs (specials,
thresholds, a sweep over all float32 bit patterns and the range where ``exp`` is finite).
Everywhere else (another NumPy build or platform, where ``exp`` may be libm's) segments keep
calling NumPy's ``exp``. Checked exhaustively on the development machine (NumPy 2.4, AVX-512):
all 2**32 float32 inputs give identical bits.

Imported lazily by :mod:`sparse3d._segments` (numba is imported here); :func:`precompile_kernels`
is the :func:`sparse3d.precompile` hook.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["npexp32", "matches_numpy", "VERSION", "precompile_kernels"]

#: Part of every generated segment's text that calls :func:`npexp32`: the digest of this file,
#: so that a segment cached on disk with another version of this code is never reused (numba's
#: cache of a segment does not look at the functions it inlines).
VERSION = "npexp32-" + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


@intrinsic
def _fma32(typingctx, a, b, c):
    """``a * b + c`` rounded once (LLVM's ``llvm.fma.f32``; a vector FMA where the CPU has one)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, sig, args):
        f = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f, [f, f, f]), "llvm.fma.f32")
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def _bits_as_f32(typingctx, a):
    """The float32 whose bits are the int32 ``a`` (a bit cast, no conversion)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


def _f32(bits: int) -> np.float32:
    return np.array(bits, dtype=np.uint32).view(np.float32)[()]


# NumPy's constants (npy_simd_data.h, npy_math.h), as float32 bit patterns
_XMAX = _f32(0x42B17218)  # 88.72283935546875
_XMIN = _f32(0xC2CFF1B5)  # -103.97208404541015625
_LOG2E = _f32(0x3FB8AA3B)
_MAGIC = _f32(0x4B400000)  # 1.5 * 2**23: adding and subtracting it rounds to an integer
_C1 = _f32(0xBF317200)  # -ln(2), high part
_C2 = _f32(0xB5BFBE8E)  # -ln(2), low part
_P0, _P1, _P2 = _f32(0x3F800000), _f32(0x3F39CBD5), _f32(0x3E7D4C58)
_P3, _P4, _P5 = _f32(0x3D517D8C), _f32(0x3BDD7159), _f32(0x3A053DD8)
_Q0, _Q1, _Q2 = _f32(0x3F800000), _f32(0xBE8C6857), _f32(0x3CB0E832)
_ZERO = np.float32(0.0)
_INF = np.float32(np.inf)
_NAN = _f32(0x7FC00000)
_ONE_I32, _BIAS, _SHIFT = np.int32(1), np.int32(127), np.int32(23)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def npexp32(x_in):  # pragma: no cover - runs compiled
    """``np.exp`` of one float32 as NumPy's SIMD loop computes it (see the module docstring)."""
    nan = x_in != x_in
    x = _ZERO if nan else x_in
    over = x >= _XMAX
    under = x <= _XMIN
    x = _ZERO if (over or under) else x
    q = x * _LOG2E
    q = q + _MAGIC
    q = q - _MAGIC
    x = _fma32(q, _C1, x)
    x = _fma32(q, _C2, x)
    x = _fma32(q, _ZERO, x)
    num = _fma32(_P5, x, _P4)
    num = _fma32(num, x, _P3)
    num = _fma32(num, x, _P2)
    num = _fma32(num, x, _P1)
    num = _fma32(num, x, _P0)
    den = _fma32(_Q2, x, _Q1)
    den = _fma32(den, x, _Q0)
    poly = num / den
    k = np.int32(q)  # an integer in [-150, 128]
    h = k >> _ONE_I32
    r = (poly * _bits_as_f32((h + _BIAS) << _SHIFT)) * _bits_as_f32((k - h + _BIAS) << _SHIFT)
    r = _NAN if nan else r
    r = _INF if over else r
    return _ZERO if under else r


@njit(cache=True, nogil=True, error_model="numpy")
def _exp_loop(x, out):  # pragma: no cover - runs compiled
    for i in range(x.shape[0]):
        out[i] = npexp32(x[i])


#: Inputs :func:`matches_numpy` compares (about 1.3 M float32: ~15 ms once per process).
PROBE_SIZE = 1 << 20
_MATCHES: bool | None = None


def probe_inputs() -> np.ndarray:
    """The float32 inputs :func:`matches_numpy` compares: a sweep over all bit patterns, the
    range where ``exp`` is finite and non-zero, neighbours of the thresholds, specials."""
    sweep = (np.arange(PROBE_SIZE, dtype=np.uint64) * 4099 % 2**32).astype(np.uint32).view(np.float32)
    dense = np.linspace(-104.5, 89.0, PROBE_SIZE // 4, dtype=np.float32)
    steps = np.arange(-64, 65, dtype=np.int64)
    near = [(np.int64(np.array(t, np.float32).view(np.uint32)) + steps).astype(np.uint32).view(np.float32)
            for t in (_XMAX, _XMIN, np.float32(1.0), np.float32(-1.0))]
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38],
                        dtype=np.float32)
    return np.concatenate([sweep, dense, *near, specials])


def matches_numpy() -> bool:
    """Whether :func:`npexp32` returns NumPy's bits here (checked once per process).

    True only on x86-64 CPUs where NumPy's float32 ``exp`` has its AVX2+FMA3 / AVX-512F loop,
    and when NumPy's ``exp`` equals :func:`npexp32` bit for bit on :func:`probe_inputs`.
    """
    global _MATCHES
    if _MATCHES is None:
        _MATCHES = _probe()
    return _MATCHES


def _probe() -> bool:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # pragma: no cover - NumPy < 2
        return False
    if not (features.get("AVX512F") or (features.get("AVX2") and features.get("FMA3"))):
        return False
    x = probe_inputs()
    mine = np.empty_like(x)
    _exp_loop(x, mine)
    with np.errstate(all="ignore"):
        ref = np.exp(x)
    return bool(np.array_equal(mine.view(np.uint32), ref.view(np.uint32)))


def precompile_kernels() -> None:
    """Compile (or load) :func:`npexp32` through its probe loop."""
    _exp_loop(np.zeros(1, np.float32), np.empty(1, np.float32))
