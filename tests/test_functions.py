"""The NEP 18 registry: completeness, and every handled function against dense NumPy."""

import numpy as np
import numpy.fft
import numpy.lib.recfunctions
import numpy.lib.scimath
import numpy.polynomial.polynomial
import numpy.strings  # noqa: F401  (importing registers their overridable functions)
import pytest
from numpy.testing.overrides import get_overridable_numpy_array_functions

from sparse3d import Sparse3D
from sparse3d._functions import HANDLED_FUNCTIONS
from sparse3d._unsupported import UNSUPPORTED_FUNCTIONS, function_key
from sparse3d.testing import assert_equal_dense, dense_reference, random_scene

AXES = [None, 0, 1, 2, -1, (0, 1), (1, 0), (0, 2), (1, 2), (0, 1, 2)]


def _dense(x):
    return x.todense() if hasattr(x, "todense") else np.asarray(x)


def test_every_overridable_function_is_classified():
    overridable = {function_key(f) for f in get_overridable_numpy_array_functions()}
    handled = {function_key(f) for f in HANDLED_FUNCTIONS}
    unclassified = overridable - handled - set(UNSUPPORTED_FUNCTIONS)
    assert not unclassified, f"classify these NumPy functions: {sorted(unclassified)}"
    assert not handled & set(UNSUPPORTED_FUNCTIONS)
    stale = {
        k
        for k in set(UNSUPPORTED_FUNCTIONS) - overridable
        if not k.startswith(("numpy.char", "numpy.strings"))
    }
    assert not stale, f"stale names in UNSUPPORTED_FUNCTIONS: {sorted(stale)}"


@pytest.mark.parametrize("func", [np.sort, np.reshape, np.linalg.solve, np.cumsum, np.unique])
def test_unsupported_functions_name_themselves_and_the_way_out(func):
    S = random_scene(0).build()
    args = (S, S) if func is np.linalg.solve else ((S, (-1,)) if func is np.reshape else (S,))
    with pytest.raises(TypeError) as info:
        func(*args)
    msg = str(info.value)
    assert func.__name__ in msg and "not supported" in msg
    assert any(w in msg for w in ("to_sparse", "tocsr", "todense", "np.sum"))


# ---- reductions --------------------------------------------------------------------------
REDUCTIONS = [np.sum, np.mean, np.max, np.min, np.prod, np.any, np.all, np.count_nonzero]


@pytest.mark.parametrize("func", REDUCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("axis", AXES, ids=str)
def test_reductions_match_dense(scene, func, axis):
    S = scene.build()
    dense = scene.dense()
    try:
        expected = func(dense, axis=axis)
    except ValueError:  # zero-size reduction without identity: NumPy's error, ours too
        with pytest.raises(ValueError, match="zero-size"):
            func(S, axis=axis)
        return
    result = func(S, axis=axis)
    assert np.shape(result) == np.shape(expected)
    assert _dense(result).dtype == np.asarray(expected).dtype
    np.testing.assert_allclose(_dense(result), expected, rtol=1e-6 if S.dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("func", [np.sum, np.max, np.min, np.mean], ids=lambda f: f.__name__)
@pytest.mark.parametrize("axis", [None, 2, (0, 1), 0])
def test_reductions_keepdims(func, axis):
    sc = random_scene(21, imcorner=(3, -2))
    S = sc.build()
    expected = func(sc.dense(), axis=axis, keepdims=True)
    result = func(S, axis=axis, keepdims=True)
    assert np.shape(result) == expected.shape
    np.testing.assert_allclose(_dense(result), expected, rtol=1e-12)


def test_reduction_return_types():
    S = random_scene(1).build()
    assert isinstance(np.sum(S), np.generic)
    assert isinstance(np.sum(S, axis=2), np.ndarray) and np.sum(S, axis=2).shape == S.imshape
    assert isinstance(np.sum(S, axis=(0, 1)), np.ndarray)
    assert isinstance(np.sum(S, axis=0), np.ndarray) and np.sum(S, axis=0).shape == (17, 6)
    assert isinstance(np.max(S, axis=1), np.ndarray)


@pytest.mark.parametrize("ufunc", [np.add, np.maximum, np.minimum, np.multiply, np.logical_or])
@pytest.mark.parametrize("axis", [0, 2, (0, 1), None])
def test_ufunc_reduce_agrees_with_functions(ufunc, axis):
    sc = random_scene(13)
    S = sc.build()
    expected = ufunc.reduce(sc.dense(), axis=axis)
    np.testing.assert_allclose(_dense(ufunc.reduce(S, axis=axis)), expected)
    if ufunc is np.add:
        np.testing.assert_allclose(_dense(np.add.reduce(S, axis=axis)), _dense(np.sum(S, axis=axis)))


def test_sum_dtypes_and_initial():
    for dtype in (np.int32, np.int64, bool, np.float32, np.complex128):
        sc = random_scene(14, dtype=dtype)
        S, dense = sc.build(), sc.dense()
        for axis in (None, 2, (0, 1)):
            r, e = np.sum(S, axis=axis), np.sum(dense, axis=axis)
            assert _dense(r).dtype == e.dtype, (dtype, axis)
            np.testing.assert_allclose(_dense(r), e, rtol=1e-6)
    sc = random_scene(15)
    np.testing.assert_allclose(np.sum(sc.build(), initial=5.0), np.sum(sc.dense(), initial=5.0))
    np.testing.assert_allclose(
        np.max(sc.build(), axis=2, initial=1.5), np.max(sc.dense(), axis=2, initial=1.5)
    )


def test_max_min_with_nan_and_all_negative_values():
    sc = random_scene(16)
    data = -np.abs(sc.data) - 1
    S = Sparse3D(data, sc.row, sc.col, sc.imshape)
    dense = dense_reference(data, sc.row, sc.col, sc.imshape)
    for axis in (None, 2, (0, 1), 0):
        np.testing.assert_array_equal(_dense(np.max(S, axis=axis)), np.max(dense, axis=axis))
        np.testing.assert_array_equal(_dense(np.min(S, axis=axis)), np.min(dense, axis=axis))
    data = data.copy()
    data[0, 0, :] = np.nan
    S = Sparse3D(data, sc.row, sc.col, sc.imshape)
    dense = dense_reference(data, sc.row, sc.col, sc.imshape)
    for axis in (None, 2, (0, 1)):
        np.testing.assert_array_equal(_dense(np.max(S, axis=axis)), np.max(dense, axis=axis))


def test_bad_axis():
    S = random_scene(0).build()
    with pytest.raises(np.exceptions.AxisError):
        np.sum(S, axis=3)
    with pytest.raises(ValueError, match="duplicate"):
        np.sum(S, axis=(0, 0))


# ---- products -----------------------------------------------------------------------------
@pytest.mark.parametrize("k", [None, 1, 3, 10])
def test_dot_matmul_follow_numpy_shapes(scene, k):
    S, dense = scene.build(), scene.dense()
    n = dense.shape[2]
    rng = np.random.default_rng(0)
    w = rng.normal(size=(n,) if k is None else (n, k)).astype(scene.data.dtype)
    expected = np.dot(dense, w)
    for result in (S.dot(w), np.dot(S, w), S @ w, np.matmul(S, w)):
        assert isinstance(result, np.ndarray)
        assert result.shape == expected.shape and result.dtype == expected.dtype
        np.testing.assert_allclose(
            result, expected, rtol=1e-5 if w.dtype == np.float32 else 1e-12, atol=1e-12
        )


def test_dot_integer_and_complex_exact():
    sc = random_scene(17, dtype=np.int64)
    w = np.arange(sc.data.shape[2])
    np.testing.assert_array_equal(sc.build().dot(w), np.dot(sc.dense(), w))
    assert sc.build().dot(w).dtype == np.int64
    sc = random_scene(18, dtype=np.complex128)
    w = np.arange(sc.data.shape[2]) * (1 - 1j)
    np.testing.assert_allclose(sc.build().dot(w), np.dot(sc.dense(), w))


def test_dot_errors_and_scalar():
    sc = random_scene(19)
    S = sc.build()
    n = sc.data.shape[2]
    with pytest.raises(ValueError, match="nsources=6"):
        S.dot(np.ones(n + 1))
    with pytest.raises(ValueError, match="nsources"):
        S.dot(np.ones((n, 2, 2)))
    with pytest.raises(TypeError, match="tensordot"):
        np.dot(np.ones(sc.imshape[1]), S)
    with pytest.raises(TypeError, match="two Sparse3D"):
        S.dot(S)
    with pytest.raises(ValueError, match="scalar"):
        S @ 2.0
    for bad in ("abc", np.array(["a"] * n), np.array([None] * n)):
        with pytest.raises(TypeError, match="weights must be numeric"):
            S.dot(bad)
    assert_equal_dense(S.dot(2.0), sc.dense() * 2.0)


class FakeQuantity:
    """Enough of astropy's Quantity for the unit protocol (no astropy import)."""

    def __init__(self, value, unit):
        self.value, self.unit = np.asarray(value), unit


class FakeUnit:
    __array_ufunc__ = None  # like astropy units: ndarray * unit defers to __rmul__

    def __rmul__(self, other):
        return ("with-unit", other)


def test_dot_with_quantity_weights_keeps_the_unit():
    sc = random_scene(20)
    w = np.arange(sc.data.shape[2], dtype=float)
    tag, image = sc.build().dot(FakeQuantity(w, FakeUnit()))
    assert tag == "with-unit"
    np.testing.assert_allclose(image, np.dot(sc.dense(), w))


@pytest.mark.parametrize("m", [None, 1, 4])
def test_tensordot_projection_both_orders(scene, m):
    S, dense = scene.build(), scene.dense()
    H, W = scene.imshape
    rng = np.random.default_rng(1)
    img = rng.normal(size=(H, W) if m is None else (H, W, m))
    for a, b, axes in [(S, img, ([0, 1], [0, 1])), (img, S, ([0, 1], [0, 1])), (S, img, ([1, 0], [1, 0]))]:
        da = dense if a is S else a
        db = dense if b is S else b
        expected = np.tensordot(da, db, axes=axes)
        result = np.tensordot(a, b, axes=axes)
        assert np.shape(result) == expected.shape
        np.testing.assert_allclose(_dense(result), expected, rtol=1e-6, atol=1e-9)


def test_tensordot_other_axes():
    sc = random_scene(22, imcorner=(-2, -2))
    S, dense = sc.build(), sc.dense()
    n = dense.shape[2]
    w = np.arange(n, dtype=float)
    np.testing.assert_allclose(np.tensordot(S, w, axes=1), np.tensordot(dense, w, axes=1))
    np.testing.assert_allclose(np.tensordot(S, w, axes=([2], [0])), np.dot(dense, w))
    w3 = np.arange(2 * n * 3, dtype=float).reshape(2, n, 3)
    np.testing.assert_allclose(np.tensordot(S, w3, axes=([2], [1])), np.tensordot(dense, w3, axes=([2], [1])))
    full = np.ones(dense.shape)
    np.testing.assert_allclose(_dense(np.tensordot(S, full, axes=3)), np.tensordot(dense, full, axes=3))
    v = np.arange(sc.imshape[1], dtype=float)
    np.testing.assert_allclose(
        _dense(np.tensordot(S, v, axes=([1], [0]))), np.tensordot(dense, v, axes=([1], [0]))
    )


# ---- joining ------------------------------------------------------------------------------
def test_concatenate_and_stack():
    a = random_scene(23, imcorner=(1, 2))
    b = random_scene(24, nsources=3, imcorner=(1, 2))
    A, B = a.build(), b.build()
    C = np.concatenate([A, B], axis=2)
    assert isinstance(C, Sparse3D)
    assert_equal_dense(C, np.concatenate([a.dense(), b.dense()], axis=2))
    assert_equal_dense(np.concatenate([A, B], axis=-1), np.concatenate([a.dense(), b.dense()], axis=-1))
    with pytest.raises(ValueError, match="source axis"):
        np.concatenate([A, B])
    other = random_scene(25, imcorner=(0, 0)).build()
    with pytest.raises(ValueError, match="imcorner"):
        np.concatenate([A, other], axis=2)
    st = np.stack([A, np.exp(A)], axis=2)
    np.testing.assert_allclose(_dense(st), np.stack([a.dense(), a.dense(np.exp(a.data))], axis=2))


# ---- elementwise functions ----------------------------------------------------------------
def test_elementwise_functions(scene):
    S = scene.build()
    d = scene.data
    ref = scene.dense
    assert_equal_dense(np.where(S > 0, S, -1.0), ref(np.where(d > 0, d, -1.0)))
    assert_equal_dense(np.clip(S, -0.5, 0.5), ref(np.clip(d, -0.5, 0.5)))
    assert_equal_dense(np.clip(S, None, 0.5), ref(np.clip(d, None, 0.5)))
    assert_equal_dense(np.round(S * 10, 1), ref(np.round(d * 10, 1)), rtol=1e-6)
    assert_equal_dense(np.around(S), ref(np.around(d)))
    assert_equal_dense(np.isclose(S, 0.5, atol=0.3), ref(np.isclose(d, 0.5, atol=0.3)))
    with np.errstate(invalid="ignore", divide="ignore"):
        assert_equal_dense(np.nan_to_num(S / S), ref(np.nan_to_num(d / d)))
    assert_equal_dense(np.copy(S), ref())
    assert_equal_dense(np.zeros_like(S), ref(np.zeros_like(d)))
    assert_equal_dense(np.ones_like(S), ref(np.ones_like(d)))
    assert_equal_dense(np.full_like(S, 3.0), ref(np.full_like(d, 3.0)))
    assert_equal_dense(np.real(S), ref(np.real(d)))
    assert_equal_dense(S.imag, ref(np.imag(d)))
    assert np.shape(S) == S.shape and np.ndim(S) == 3 and np.size(S) == S.size
    assert np.size(S, 2) == S.shape[2]
    assert np.result_type(S, np.float32) == np.result_type(d, np.float32)
    assert not np.iscomplexobj(S) and np.isrealobj(S)


def test_where_single_argument_and_nonzero():
    sc = random_scene(26)
    S = sc.build()
    expected = np.nonzero(sc.dense())
    for got in (np.where(S), np.nonzero(S)):
        assert len(got) == 3
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)


def test_allclose_and_array_equal_on_logical_arrays():
    sc = random_scene(27)
    S = sc.build()
    dense = sc.dense()
    assert np.allclose(S, S * (1 + 1e-9))
    assert not np.allclose(S, S + 1)
    assert np.array_equal(S, S.copy())
    assert not np.array_equal(S, S * 2)
    assert np.allclose(S, dense) and np.array_equal(S, dense)
    dense2 = dense.copy()
    dense2[dense == 0] = 1  # differs only off the stamps
    assert not np.allclose(S, dense2) and not np.array_equal(S, dense2)
    T = S.translate((1, 0))  # different structure, compared logically
    moved = dense_reference(sc.data, sc.row + 1, sc.col, sc.imshape)
    assert np.array_equal(T, moved) and np.allclose(T, moved)
    assert np.array_equal(S, S.translate((0, 0)))
    assert np.array_equal(S, T) == np.array_equal(dense, moved)
    assert np.allclose(S, T) == np.allclose(dense, moved)
    assert not np.array_equal(S, S[:, :, :-1])
    nan = S.with_data(np.full(sc.data.shape, np.nan))
    assert not np.array_equal(nan, nan) and np.array_equal(nan, nan, equal_nan=True)
    assert np.allclose(nan, nan, equal_nan=True)
