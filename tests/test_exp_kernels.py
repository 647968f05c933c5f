"""NumPy's float32 exp inside compiled chains (sparse3d._exp_kernels): the same bits as np.exp.

The reference is NumPy's ``np.exp`` on float32 arrays (what the eager path computes), compared
bit for bit; chains are also compared with the dense NumPy tutorial expression.
"""

from __future__ import annotations

import numpy as np
import pytest

from sparse3d import Sparse3D, _deferred, _kernels, _segments
from sparse3d.testing import random_scene

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")


def _exp_kernels():
    from sparse3d import _exp_kernels

    return _exp_kernels


def _simd_cpu() -> bool:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as f
    except ImportError:
        return False
    return bool(f.get("AVX512F") or (f.get("AVX2") and f.get("FMA3")))


def _np_exp_bits(x):
    with np.errstate(all="ignore"):
        return np.exp(x).view(np.uint32)


def _mine_bits(x):
    E = _exp_kernels()
    out = np.empty_like(x)
    E._exp_loop(x, out)
    return out.view(np.uint32)


@pytest.mark.skipif(not _simd_cpu(), reason="NumPy's float32 exp is not its SIMD loop here")
def test_matches_numpy_on_simd_cpus():
    assert _exp_kernels().matches_numpy()


def _inputs(seed):
    rng = np.random.default_rng(seed)
    E = _exp_kernels()
    return np.concatenate(
        [
            rng.uniform(-110.0, 95.0, 200_000).astype(np.float32),
            rng.uniform(-1.0, 1.0, 50_000).astype(np.float32),
            rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
            E.probe_inputs()[::7],
            # the thresholds, results near the subnormal range and overflow, 0, specials
            np.array([E._XMAX, E._XMIN]),
            np.nextafter(np.array([E._XMAX, E._XMIN]), np.float32(0)),
            np.array(
                [-87.3, -87.4, -100.0, -103.9, 88.72, 88.5, 0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45],
                dtype=np.float32,
            ),
        ]
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_npexp32_is_numpys_exp_bit_for_bit(seed):
    if not _exp_kernels().matches_numpy():
        pytest.skip("NumPy's float32 exp is not its SIMD loop here: npexp32 is not used")
    x = _inputs(seed)
    np.testing.assert_array_equal(_mine_bits(x), _np_exp_bits(x))


def test_probe_detects_a_different_exp(monkeypatch):
    """The probe compares with NumPy's exp: another exp (here one that differs in one input)
    is refused, so segments keep NumPy's exp."""
    E = _exp_kernels()
    real = np.exp

    def other_exp(x, *args, **kwargs):
        out = real(x, *args, **kwargs)
        if isinstance(out, np.ndarray) and out.dtype == np.float32 and out.size > 10:
            out[10] = np.nextafter(out[10], np.float32(np.inf))
        return out

    monkeypatch.setattr(E.np, "exp", other_exp)
    assert not E._probe()


def _tutorial(X, Y, rp, cp, sigma=1.3):
    return np.exp(-0.5 * ((X - rp) ** 2 / sigma**2 + (Y - cp) ** 2 / sigma**2)) * 1 / (2 * np.pi * sigma**2)


@pytest.fixture
def compiled(monkeypatch):
    monkeypatch.setattr(_deferred, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(_deferred, "COMPILED_MIN_ELEMENTS", 0)


@pytest.mark.parametrize("with_exp", [True, False])
@pytest.mark.parametrize("pieces", [4, 1000])  # 1000: chunks split along the sources
@pytest.mark.parametrize("nsources", [0, 1, 9, 60])
def test_float32_tutorial_chain_is_one_loop_with_numpys_bits(
    compiled, monkeypatch, with_exp, pieces, nsources
):
    """The float32 tutorial chain (stamps over the image edges, a non-zero image corner) is one
    compiled loop with exp inside it (or, where exp is refused, around NumPy's exp): the
    values are NumPy's tutorial expression on the raw stamps, bit for bit, and the image of
    ``dot`` matches the dense reference."""
    E = _exp_kernels()
    if with_exp and not E.matches_numpy():
        pytest.skip("NumPy's float32 exp is not its SIMD loop here")
    monkeypatch.setattr(E, "_MATCHES", with_exp)
    monkeypatch.setattr(_deferred, "PIECES_PER_THREAD", pieces)
    monkeypatch.setattr(_deferred, "CHUNK", 16)
    sc = random_scene(nsources + 5, dtype=np.float32, nsources=nsources, imcorner=(4, -7), stamp=(5, 6))
    rng = np.random.default_rng(nsources)
    y = rng.uniform(-3, 3, size=sc.data.shape).astype(np.float32)
    X = sc.build()
    Y = Sparse3D(y, sc.row, sc.col, sc.imshape, sc.imcorner)
    rp, cp = rng.random(nsources).astype(np.float32), rng.random(nsources).astype(np.float32)
    L = _tutorial(X, Y, rp, cp)
    assert L._lazy is not None
    if nsources:
        funcs = [nd.func for nd in _deferred._postorder(_segments.fused(L._lazy))]
        if with_exp:  # the whole chain: one compiled loop
            assert len(funcs) == 1 and isinstance(funcs[0], _segments._Segment)
        else:  # NumPy's exp between compiled runs
            assert np.exp in funcs and any(isinstance(f, _segments._Segment) for f in funcs)
    ref = _tutorial(sc.data, y, rp, cp)
    assert L.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(np.ascontiguousarray(L.data).view(np.uint32), ref.view(np.uint32))
    dense = sc.dense(ref)
    np.testing.assert_array_equal(L.todense(), dense)
    w = rng.uniform(0.5, 2.0, nsources).astype(np.float32)
    np.testing.assert_allclose(L.dot(w), (dense * w).sum(axis=2), rtol=2e-5, atol=1e-6)


def test_float32_exp_of_specials_in_a_chain(compiled):
    """Overflow, underflow to zero and subnormal results, NaN and inf inside one compiled
    float32 chain with exp (errors ignored, as the caller asked): NumPy's bits."""
    if not _exp_kernels().matches_numpy():
        pytest.skip("NumPy's float32 exp is not its SIMD loop here")
    sc = random_scene(3, dtype=np.float32, nsources=30, imcorner=(2, 3), stamp=(4, 4))
    data = sc.data.copy()
    flat = data.reshape(-1)
    flat[:8] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 3e38, -3e38]
    flat[8:40] = np.linspace(-55, -45, 32)  # results through the subnormal range (x * 2 - 1)
    X = Sparse3D(data, sc.row, sc.col, sc.imshape, sc.imcorner)
    with np.errstate(all="ignore"):
        Z = np.exp(X * 2.0 - 1.0) * 3.0
        ref = np.exp(data * np.float32(2.0) - np.float32(1.0)) * np.float32(3.0)
        got = np.ascontiguousarray(Z.data)
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


def test_float64_exp_stays_numpys(compiled):
    """float64 exp is never compiled (NumPy's float64 loop is another algorithm)."""
    sc = random_scene(4, dtype=np.float64, nsources=12, stamp=(3, 3))
    X = sc.build()
    L = np.exp(-0.5 * (X - 0.25) ** 2) * 2.0
    fused = _segments.fused(L._lazy)
    exps = [a for a in fused.args if isinstance(a, _deferred.Node)]
    assert exps and exps[0].func is np.exp
    np.testing.assert_array_equal(L.data, np.exp(-0.5 * (sc.data - 0.25) ** 2) * 2.0)
