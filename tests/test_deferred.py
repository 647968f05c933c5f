"""Deferred elementwise chains (sparse3d._deferred): same bits, warnings and errors as NumPy.

Every test lowers the size threshold so that the small random scenes (stamps over every
image edge, non-zero image corners) take the deferred path, and compares with the same
chain computed by NumPy on the raw stamp values (bit for bit) and with the dense reference.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from sparse3d import Sparse3D, _deferred, _kernels, _segments
from sparse3d.testing import dense_reference, random_scene


@pytest.fixture(autouse=True, params=["ufuncs", "compiled"])
def defer_everything(request, monkeypatch):
    """Every test runs twice: NumPy ufuncs only, and runs of cheap operations compiled (numba)."""
    monkeypatch.setattr(_deferred, "MIN_ELEMENTS", 0)
    if request.param == "compiled":
        if not _kernels.available():
            pytest.skip("numba is not installed")
        monkeypatch.setattr(_deferred, "COMPILED_MIN_ELEMENTS", 0)
    else:
        monkeypatch.setattr(_deferred, "COMPILED_MIN_ELEMENTS", 1 << 62)
    return request.param


def _bits(a):
    a = np.ascontiguousarray(a)
    return a.view(np.uint8)


def _gaussian(X, Y, rp, cp, sigma=1.0):
    return np.exp(-0.5 * ((X - rp) ** 2 / sigma**2 + (Y - cp) ** 2 / sigma**2)) * 1 / (2 * np.pi * sigma**2)


def _scene_pair(seed, dtype, nsources, imcorner=(3, -5)):
    sc = random_scene(seed, dtype=dtype, nsources=nsources, imcorner=imcorner, stamp=(4, 5))
    y = np.random.default_rng(seed + 1).uniform(-2, 2, size=sc.data.shape).astype(dtype)
    X = sc.build()
    Y = Sparse3D(y, sc.row, sc.col, sc.imshape, sc.imcorner)
    return sc, X, Y, y


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nsources", [0, 1, 7, 40])
@pytest.mark.parametrize("chunk", [8, 64, 1 << 14])
def test_tutorial_chain_is_deferred_and_bit_identical(monkeypatch, dtype, nsources, chunk):
    monkeypatch.setattr(_deferred, "CHUNK", chunk)
    sc, X, Y, y = _scene_pair(nsources + chunk, dtype, nsources)
    rng = np.random.default_rng(nsources)
    rp, cp = rng.random(nsources).astype(dtype), rng.random(nsources).astype(dtype)
    L = _gaussian(X, Y, rp, cp)
    assert L._lazy is not None
    ref = _gaussian(sc.data, y, rp, cp)
    assert L.dtype == ref.dtype == dtype
    assert L.shape == X.shape and L.nnz == X.nnz and L._lazy is not None  # no evaluation
    np.testing.assert_array_equal(_bits(L.data), _bits(ref))
    assert L._lazy is None
    # stamp semantics: off-stamp stays zero (the dense reference of the stamp values)
    np.testing.assert_array_equal(L.todense(), sc.dense(ref))
    np.testing.assert_allclose(L.dot(np.ones(nsources, dtype)), sc.dense(ref).sum(axis=2), rtol=1e-5)


@pytest.mark.parametrize(
    "chain",
    [
        lambda a, b, v: a * 2 + b / 3.0 - v,
        lambda a, b, v: -(a - 0.5) * (+b) / (v + 3.0),
        lambda a, b, v: np.square(a) + np.exp(b) * 7,
        lambda a, b, v: 2 - a * np.float32(3.5),
        lambda a, b, v: a * (2**24 + 1),  # a Python int NumPy rounds to the result dtype
        lambda a, b, v: (a - np.float64(0.1)) * v.astype(np.float64),  # typed operands promote
        lambda a, b, v: a + np.array(2.5) + 1,  # 0-d arrays
        lambda a, b, v: a / v[None, None, :] + v.reshape(1, -1),  # (1, 1, n), (1, n) per-source
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_chains_match_numpy_bits_and_dtype(chain, dtype):
    sc, X, Y, y = _scene_pair(11, dtype, 9)
    v = np.random.default_rng(1).uniform(1, 2, 9).astype(dtype)
    got, ref = chain(X, Y, v), chain(sc.data, y, v)
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(_bits(got.data), _bits(ref))
    np.testing.assert_array_equal(got.todense(), sc.dense(ref))


def test_shared_subexpressions_and_long_chains():
    sc, X, Y, y = _scene_pair(3, np.float64, 8)
    T = X - 1.0
    A = T * T + T / 2.0 - T  # T used by three operations: evaluated once per chunk
    assert A._lazy is not None
    np.testing.assert_array_equal(A.data, (sc.data - 1) * (sc.data - 1) + (sc.data - 1) / 2.0 - (sc.data - 1))
    S, ref = X, sc.data
    for i in range(3 * _deferred.MAX_NODES):  # longer than one expression: evaluated in parts
        S, ref = S * 1.01 + 0.001 * i, ref * 1.01 + 0.001 * i
        assert S._lazy is None or S._lazy.size <= _deferred.MAX_NODES
    np.testing.assert_array_equal(S.data, ref)
    D = X
    for _ in range(40):  # a DAG that a tree walk would evaluate 2**40 times
        D = D + D
    np.testing.assert_array_equal(D.data, sc.data * 2.0**40)


def test_operands_are_immutable_after_recording():
    sc, X, Y, y = _scene_pair(5, np.float64, 6)
    v = np.linspace(1, 2, 6)
    a = np.array(3.0)
    R = (X - v) * a
    v[:] = 100.0
    a[...] = 100.0
    np.testing.assert_array_equal(R.data, (sc.data - np.linspace(1, 2, 6)) * 3.0)
    np.testing.assert_array_equal(X.data, sc.data)


def test_warnings_and_errors_happen_at_the_operation():
    sc, X, Y, y = _scene_pair(2, np.float64, 10)
    big = X * 1e200
    assert big._lazy is not None  # |values| <= 2e200: no overflow possible
    with pytest.warns(RuntimeWarning, match="overflow"):
        sq = big**2  # may overflow: computed now, and warns here, as NumPy does
    assert sq._lazy is None
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        big * big
    with pytest.warns(RuntimeWarning, match="divide"):
        X / X  # zeros in the values (0/0 and x/0)
    with pytest.warns(RuntimeWarning, match="overflow"):
        np.exp(X * 1000.0)
    with np.errstate(under="warn"):
        assert (X * 2.0)._lazy is None  # underflow reporting: never deferred


def test_ignored_flags_stay_silent_when_evaluated_later():
    sc, X, Y, y = _scene_pair(4, np.float32, 10)
    with np.errstate(all="ignore"):
        Z = np.exp(X * 1000.0) / (X * 0.0)  # overflow, inf/0, 0/0: all ignored here
    assert Z._lazy is not None
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        got = Z.data  # evaluated under other settings: nothing reported
    with np.errstate(all="ignore"):
        ref = np.exp(sc.data * 1000.0) / (sc.data * np.float32(0.0))
    np.testing.assert_array_equal(_bits(got), _bits(ref))


def test_nan_values_are_never_proven_safe():
    sc, X, Y, y = _scene_pair(6, np.float64, 5)
    d = sc.data.copy()
    d[0, 0, 0] = np.nan
    N = Sparse3D(d, sc.row, sc.col, sc.imshape, sc.imcorner)
    assert (N + 1.0)._lazy is None
    with np.errstate(all="ignore"):
        assert (N + 1.0)._lazy is not None


def test_not_deferred_operands_take_the_eager_path():
    sc, X, Y, y = _scene_pair(7, np.float64, 5)
    image = np.arange(np.prod(sc.imshape), dtype=float).reshape(*sc.imshape, 1)
    assert (X + image)._lazy is None  # image-shaped: gathered at the stamp pixels
    assert np.sin(X)._lazy is None  # not a deferred ufunc
    assert (X + 1j)._lazy is None  # complex
    assert np.add(X, 1.0, dtype=np.float32)._lazy is None  # keyword arguments
    with pytest.raises(ValueError, match="does not broadcast"):
        X + np.ones(4)  # the eager path's error
    Xi = Sparse3D(sc.data.astype(int), sc.row, sc.col, sc.imshape, sc.imcorner)
    assert (Xi * 2.0)._lazy is None  # integer values


def test_small_arrays_are_eager(monkeypatch):
    monkeypatch.setattr(_deferred, "MIN_ELEMENTS", 10**6)
    sc, X, Y, y = _scene_pair(8, np.float64, 5)
    assert (X + 1.0)._lazy is None


def test_evaluation_releases_the_leaves():
    """After evaluation nothing but their arrays holds the leaves' buffers (so the buffer pool
    can take them back when the arrays die), and the copy in the constructor kept the bounds."""
    import sys

    sc, X, Y, y = _scene_pair(12, np.float64, 30)
    L = _gaussian(X, Y, np.zeros(30), np.ones(30))
    def holders(S):  # outside an assert: pytest's rewriting would keep ``S._vals`` alive
        return sys.getrefcount(S._vals) - 1

    held = holders(X)
    L.data
    after = holders(X), holders(Y)
    assert held == 2 and after == (1, 1)  # the expression held it; evaluation released it
    assert X.__dict__["_bounds"] == (float(sc.data.min()), float(sc.data.max()))
    d = sc.data.copy()
    d[0, 0, 0] = np.inf
    assert Sparse3D(d, sc.row, sc.col, sc.imshape, sc.imcorner).__dict__["_bounds"] is None


def test_segments_with_many_inputs_and_shared_results(monkeypatch, defer_everything):
    monkeypatch.setattr(_deferred, "CHUNK", 16)
    sc, X, Y, y = _scene_pair(9, np.float64, 5)
    v = [np.random.default_rng(i).uniform(1, 2, 5) for i in range(6)]
    Z = (X - v[0]) * (Y + v[1]) - (X * v[2] + v[3]) / (Y - v[4] + 5.0) * v[5]
    ref = (sc.data - v[0]) * (y + v[1]) - (sc.data * v[2] + v[3]) / (y - v[4] + 5.0) * v[5]
    np.testing.assert_array_equal(_bits(Z.data), _bits(ref))
    E = np.exp(X - 1.0)  # a ufunc between two runs of cheap operations, read three times
    W = E * E - E / 2.0 + np.square(Y)
    ref = np.exp(sc.data - 1.0) * np.exp(sc.data - 1.0) - np.exp(sc.data - 1.0) / 2.0 + np.square(y)
    np.testing.assert_array_equal(_bits(W.data), _bits(ref))
    if defer_everything == "compiled":
        steps = _deferred._postorder(_segments.fused(((X - v[0]) * (Y + v[1]))._lazy))
        assert len(steps) == 1 and isinstance(steps[0].func, _segments._Segment)


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="temporary elision is off on Python >= 3.14")
def test_elision_calibrates_on_the_eager_path_with_deferral_on(monkeypatch):
    from sparse3d import _elision

    monkeypatch.setattr(_elision, "_TEMPORARY_REFCOUNT", None)  # calibrate again, deferral on
    sc, X, Y, y = _scene_pair(13, np.float64, 4)
    Xi = Sparse3D(sc.data.astype(np.float16), sc.row, sc.col, sc.imshape, sc.imcorner)
    (Xi + 1.0) * 2.0  # an eager operator (float16 is never deferred) triggers the calibration
    assert _elision._TEMPORARY_REFCOUNT  # calibrated, not disabled by deferred results


_SOURCE = "\n".join(
    [
        "def kernel(out, a0, s0):",
        "    for i in range(out.shape[0]):",
        "        t0 = a0[i] * s0",
        "        out[i] = t0",
    ]
)


def test_segment_source_file_is_written_once_and_checked(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    func, cached = _segments._segment_function(_SOURCE)
    assert cached and func(np.zeros(3), np.arange(3.0), 2.0) is None
    (path,) = _segments.segment_dir().glob("segment_*.py")
    assert path.read_text() == _SOURCE + "\n"
    # a file that does not hold exactly the kernel's text is never run: compiled in memory
    path.write_text(_SOURCE.replace("a0[i] * s0", "a0[i] + s0") + "\n")
    monkeypatch.delitem(sys.modules, f"sparse3d_segment_{path.stem.split('_')[1]}", raising=False)
    func, cached = _segments._segment_function(_SOURCE)
    out = np.zeros(3)
    func(out, np.arange(3.0), 2.0)
    assert not cached and out.tolist() == [0.0, 2.0, 4.0]


def test_segment_without_a_writable_cache_dir_compiles_in_memory(monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(blocker / "below"))
    func, cached = _segments._segment_function(_SOURCE)
    out = np.zeros(2)
    func(out, np.array([1.5, 2.5]), 2.0)
    assert not cached and out.tolist() == [3.0, 5.0]


def test_segment_kernels_are_loaded_from_numba_cache_in_a_new_process(tmp_path):
    pytest.importorskip("numba")
    import os
    import subprocess

    code = """
import numpy as np
from sparse3d import _deferred, _segments
from sparse3d.testing import random_scene
_deferred.MIN_ELEMENTS = _deferred.COMPILED_MIN_ELEMENTS = 1
X = random_scene(5, nsources=30, imshape=(40, 40), stamp=(5, 5)).build()
L = np.exp(-0.5 * ((X - 0.25) ** 2 + (X + 0.5) ** 2))
ref = np.exp(-0.5 * ((X.data - 0.25) ** 2 + (X.data + 0.5) ** 2))
assert np.array_equal(L.data, ref)
(k,) = _segments._SEGMENT_KERNELS.values()
print(sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values()))
"""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    runs = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    assert runs[0].stdout.split() == ["0", "1"]  # compiled and cached
    assert runs[1].stdout.split() == ["1", "0"]  # loaded


def test_computed_temporaries_take_results_in_place_instead_of_deferring(monkeypatch):
    """A chain whose first operation is eager (an image operand here; broadcast inputs at scale)
    continues in the temporary's own buffer: deferring would keep that block alive beside a
    new one (peak memory of the 10M-source pipeline)."""
    monkeypatch.setattr(_deferred, "MIN_ELEMENTS", 1)
    sc = random_scene(11, nsources=25, imshape=(20, 18), stamp=(4, 5))
    X, dense = sc.build(), sc.dense()
    img = np.random.default_rng(3).normal(size=(20, 18))
    T = (X - img[:, :, None]) ** 2  # the subtraction gathers the image (eager); the square reuses its block
    assert T._lazy is None
    r = np.broadcast_to(sc.row, sc.data.shape) - sc.imcorner[0]
    c = np.broadcast_to(sc.col, sc.data.shape) - sc.imcorner[1]
    inside = (r >= 0) & (r < 20) & (c >= 0) & (c < 18)
    at = np.where(inside, img[np.clip(r, 0, 19), np.clip(c, 0, 17)], 0.0)  # the image at each stamp pixel
    ref = dense_reference((sc.data - at) ** 2, sc.row, sc.col, sc.imshape, sc.imcorner)
    np.testing.assert_allclose(T.todense(), ref, rtol=1e-13, atol=1e-13)
    assert dense.shape == ref.shape
    L = np.exp(-0.5 * (X - 0.25) ** 2)  # named leaves: deferred as before
    assert L._lazy is not None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 70_000, -1])
def test_copy_with_bounds_matches_numpy(dtype, bad, where):
    """The chunked copy and its bounds: every chunk size boundary, NaN/inf in any chunk."""
    rng = np.random.default_rng(1)
    a = rng.uniform(-3, 5, size=(3, 2, 50_001)).astype(dtype)  # not a whole number of chunks
    if bad is not None:
        a.reshape(-1)[where] = bad
    out, bounds = _deferred.copy_with_bounds(a)
    np.testing.assert_array_equal(out, a)
    assert out.flags.c_contiguous and not out.flags.writeable and out.dtype == a.dtype
    if bad is None:
        assert bounds == (float(a.min()), float(a.max()))
    else:
        assert bounds is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 3, -1])
@pytest.mark.parametrize("size", [1, 2, 17, 4099])
@pytest.mark.parametrize("sign", [1, -1])
def test_copy_with_bounds_compiled_matches_numpy(sign, monkeypatch, dtype, bad, where, size):
    """The compiled copy (sparse3d._copy_kernels): the same copy and bounds as NumPy, NaN and
    infinities anywhere (the first value seeds the bounds), signed zeros, one value."""
    if not _kernels.available():
        pytest.skip("numba is not installed")
    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)
    rng = np.random.default_rng(size)
    a = (sign * rng.uniform(-1e30, 7, size=(1, 1, size))).astype(dtype)
    a.reshape(-1)[size // 2] = -0.0
    if size > 100:  # subnormals, the largest finite values, all-negative runs
        tiny = np.finfo(dtype).smallest_subnormal
        a.reshape(-1)[10:20] = [tiny, -tiny, 3 * tiny, -5 * tiny, np.finfo(dtype).max, -np.finfo(dtype).max,
                                -1e-3, -2.5, 0.0, -0.0]
    if bad is not None:
        a.reshape(-1)[where % size] = bad
    out, bounds = _deferred.copy_with_bounds(a)
    np.testing.assert_array_equal(_bits(out), _bits(a))
    assert not out.flags.writeable
    assert bounds == (None if bad is not None else (float(a.min()), float(a.max())))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("divisor", [1.0, 4, 0.5, -8.0, 2.0**-100, 2.0**100, 3.0, 0.1, 2.0**-140])
def test_division_by_powers_of_two_same_bits(dtype, divisor):
    """Compiled segments multiply by the inverse of a power-of-two divisor: the same bits as
    NumPy's division for every value (zeros, subnormal results, infinities, NaN, huge)."""
    tiny = np.finfo(dtype).tiny
    special = np.array([0.0, -0.0, tiny, -tiny * 3, tiny / 4, np.inf, -np.inf, np.nan,
                        np.finfo(dtype).max, 1.5, -2.75, 1e-30], dtype=dtype)
    sc, X, Y, y = _scene_pair(9, dtype, 12)
    data = sc.data.copy()
    data.reshape(-1)[: special.size] = special
    S = Sparse3D(data, sc.row, sc.col, sc.imshape, sc.imcorner)
    with np.errstate(all="ignore"):
        Z = (S - 0.5) / divisor + (S * 3.0) / dtype(divisor)
        assert Z._lazy is not None
        got = Z.data
        ref = (data - 0.5) / divisor + (data * 3.0) / dtype(divisor)
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(_bits(got), _bits(ref))
