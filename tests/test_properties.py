"""Property-based tests: random scenes against an independent dense NumPy computation.

Every expected value is built with :func:`sparse3d.testing.dense_reference` (``np.add.at``
into a plain ndarray) applied to stamp values transformed with plain NumPy, i.e. with
*stamp semantics*: an elementwise operation acts on every stored stamp element, and the
logical array holds the transformed in-image elements (positions within a stamp are
distinct: construction refuses repeats).

Profiles (``tests/conftest.py``): ``HYPOTHESIS_PROFILE=long pytest tests/test_properties.py``.
"""

from __future__ import annotations

import operator
import pickle
import warnings

import numpy as np
import pytest
import sparse
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sparse3d import Sparse3D
from sparse3d._functions import HANDLED_FUNCTIONS
from sparse3d.testing import Scene, dense_reference

DTYPES = ["float64", "float32", "int64", "bool"]
MAX_SOURCES = 40


# ---- strategies ---------------------------------------------------------------------------
@st.composite
def scenes(draw, dtypes=DTYPES, nonfinite=True, irregular=True, imshape=None, imcorner=None, stamp=None):
    """A random scene: sizes, corner, layout and value kinds are drawn by hypothesis; the
    values themselves come from a drawn seed (fast to generate, still reproducible).

    Layouts: ``grid`` (a plain rectangular stamp), ``flipped`` (the grid upside down, so not
    the grid fast path) and ``scattered`` (every stamp pixel at a distinct random place in a
    box a little larger than the stamp).
    Stamps are placed anywhere from fully off the image (any side) to fully inside.
    """
    H, W = imshape or (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    nr, nc = stamp or (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    n = draw(st.integers(0, MAX_SOURCES))
    r0, c0 = imcorner or (draw(st.integers(-70, 70)), draw(st.integers(-70, 70)))
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    layout = draw(st.sampled_from(["grid", "flipped", "scattered"] if irregular else ["grid"]))
    special = nonfinite and dtype.kind == "f" and draw(st.booleans())
    zeros = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    top = rng.integers(-nr - 3, H + 4, size=n) + r0
    left = rng.integers(-nc - 3, W + 4, size=n) + c0
    R, C = np.mgrid[:nr, :nc]
    if layout == "scattered":
        # nr*nc distinct cells of an (nr+1) x (nc+2) box, independently per source
        box = (nr + 1) * (nc + 2)
        cells = np.argsort(rng.random((box, n)), axis=0)[: nr * nc].reshape(nr, nc, n)
        row, col = cells // (nc + 2) + top, cells % (nc + 2) + left
    else:
        row = R[:, :, None] + top
        col = C[:, :, None] + left
        if layout == "flipped":
            row = row[::-1].copy()
    shape = (nr, nc, n)
    if dtype.kind == "f":
        data = rng.uniform(-2, 2, size=shape).astype(dtype)
        if special:
            u = rng.random(shape)
            data[u < 0.05] = np.nan
            data[(u >= 0.05) & (u < 0.1)] = np.inf
            data[(u >= 0.1) & (u < 0.15)] = -np.inf
    elif dtype.kind == "b":
        data = rng.random(shape) < 0.5
    else:
        # small integers: sums/products below never overflow int64 (where they could, the
        # property restricts further and says so)
        data = rng.integers(-5, 6, size=shape).astype(dtype)
    if zeros:
        data[rng.random(shape) < 0.2] = 0
    return Scene(data, row, col, (H, W), (r0, c0))


def _ref(sc: Scene, values=None) -> np.ndarray:
    return dense_reference(sc.data if values is None else values, sc.row, sc.col, sc.imshape, sc.imcorner)


def _gather(sc: Scene, image: np.ndarray) -> np.ndarray:
    """An (H, W, 1) operand at every stamp pixel (0 where the stamp pixel is off the image)."""
    r = np.broadcast_to(sc.row, sc.data.shape) - sc.imcorner[0]
    c = np.broadcast_to(sc.col, sc.data.shape) - sc.imcorner[1]
    H, W = sc.imshape
    m = (r >= 0) & (r < H) & (c >= 0) & (c < W)
    out = np.zeros(sc.data.shape, dtype=image.dtype)
    out[m] = image[r[m], c[m], 0]
    return out


def _tol(dtype, n_terms: int = 1) -> dict:
    kind = np.dtype(dtype)
    if kind.kind != "f":
        return {}
    if kind == np.float32:
        return {"rtol": 2e-5, "atol": 1e-6 * max(n_terms, 1)}
    return {"rtol": 1e-11, "atol": 1e-13 * max(n_terms, 1)}


def _least_precise(*dtypes):
    return np.dtype(np.float32) if np.dtype(np.float32) in map(np.dtype, dtypes) else None


def _dense(x):
    if isinstance(x, Sparse3D):
        return x.todense()
    return x.todense() if hasattr(x, "todense") else np.asarray(x)


def _assert_same(actual, expected, *, dtype=True, n_terms: int = 1, tol_dtype=None) -> None:
    """Shape, dtype and NaN-aware values of ``actual`` (any result type) vs an ndarray.

    ``tol_dtype``: the least precise dtype of the inputs (float32 stamps summed before a
    float64 product round differently in the reference).
    """
    expected = np.asarray(expected)
    got = _dense(actual)
    assert got.shape == expected.shape, f"shape {got.shape} != {expected.shape}"
    if dtype:
        assert got.dtype == expected.dtype, f"dtype {got.dtype} != {expected.dtype}"
    if expected.dtype.kind in "fc":
        np.testing.assert_allclose(
            got, expected, equal_nan=True, **_tol(tol_dtype or expected.dtype, n_terms)
        )
    else:
        np.testing.assert_array_equal(got, expected)


def _expect_or_raise(compute):
    """``(ok, value_or_exception_type)`` of a plain-NumPy computation."""
    try:
        with np.errstate(all="ignore"):
            return True, compute()
    except (TypeError, ValueError) as exc:
        return False, type(exc)


# ---- unary ufuncs -------------------------------------------------------------------------
UNARY = [
    np.exp,
    np.abs,
    np.negative,
    np.isnan,
    np.isfinite,
    np.sqrt,
    np.sin,
    np.square,
    np.sign,
    np.floor,
]


@given(sc=scenes(), ufunc=st.sampled_from(UNARY))
def test_unary_ufuncs(sc, ufunc):
    S = sc.build()
    ok, expected_vals = _expect_or_raise(lambda: ufunc(sc.data))
    if not ok:  # NumPy has no loop for this dtype (e.g. negative on bool): neither do we
        with pytest.raises(expected_vals), np.errstate(all="ignore"):
            ufunc(S)
        return
    with np.errstate(all="ignore"):
        result = ufunc(S)
    assert isinstance(result, Sparse3D)
    assert result.shape == S.shape
    _assert_same(result, _ref(sc, expected_vals), n_terms=sc.data.shape[0])
    # stored values: exactly the ufunc of the stored values (off-image pixels included)
    np.testing.assert_array_equal(result.data, expected_vals)


# ---- binary ufuncs and operators ------------------------------------------------------------
BINARY = [operator.add, operator.sub, operator.mul, operator.truediv, np.maximum, np.greater_equal]
OPERAND_KINDS = ["scalar", "vector", "image", "sparse3d"]


def _operand(kind, sc, rng):
    H, W = sc.imshape
    n = sc.data.shape[2]
    if kind == "scalar":
        return 1.5, 1.5
    if kind == "vector":
        v = rng.uniform(-2, 2, size=n)
        return v, v
    if kind == "image":
        img = rng.uniform(-2, 2, size=(H, W, 1))
        return img, _gather(sc, img)
    other = rng.uniform(-2, 2, size=sc.data.shape).astype(sc.data.dtype)
    # built separately from copies of the positions: structures equal, not identical
    S2 = Sparse3D(other, sc.row.copy(), sc.col.copy(), sc.imshape, sc.imcorner)
    return S2, other


@given(
    sc=scenes(),
    op=st.sampled_from(BINARY),
    kind=st.sampled_from(OPERAND_KINDS),
    reflected=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_binary_ufuncs_and_operators(sc, op, kind, reflected, seed):
    S = sc.build()
    operand, at_stamps = _operand(kind, sc, np.random.default_rng(seed))
    if reflected and kind == "sparse3d":
        reflected = False  # symmetric case; covered by the unreflected order

    def numpy_side():
        return op(at_stamps, sc.data) if reflected else op(sc.data, at_stamps)

    ok, expected_vals = _expect_or_raise(numpy_side)
    with np.errstate(all="ignore"):
        if not ok:
            with pytest.raises(expected_vals):
                op(operand, S) if reflected else op(S, operand)
            return
        result = op(operand, S) if reflected else op(S, operand)
    assert isinstance(result, Sparse3D)
    _assert_same(result, _ref(sc, expected_vals), n_terms=sc.data.shape[0])


# ---- reductions -----------------------------------------------------------------------------
REDUCTION_AXES = [None, 0, 1, 2, (0, 1)]


def _check_reduction_type(result, axis, S):
    """The return types of the ``sparse3d._functions`` docstring: what NumPy returns."""
    H, W, n = S.shape
    if axis is None:
        assert isinstance(result, np.generic), type(result)
    else:
        expected_shape = {0: (W, n), 1: (H, n), 2: (H, W), (0, 1): (n,)}[axis]
        assert isinstance(result, np.ndarray), type(result)
        assert result.shape == expected_shape


@given(
    sc=scenes(),
    func=st.sampled_from([np.sum, np.mean, np.max, np.min, np.nansum, np.nanmean, np.nanmax, np.nanmin]),
    axis=st.sampled_from(REDUCTION_AXES),
)
def test_reductions(sc, func, axis):
    S = sc.build()
    dense = _ref(sc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices, empty means
        ok, expected = _expect_or_raise(lambda: func(dense, axis=axis))
    if not ok:  # e.g. max of a zero-size array
        with pytest.raises(expected):
            func(S, axis=axis)
        return
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = func(S, axis=axis)
    _check_reduction_type(result, axis, S)
    reduced = dense.size // max(np.size(expected), 1)
    _assert_same(result, expected, n_terms=reduced * 4)


@given(
    sc=scenes(),
    func=st.sampled_from([np.prod, np.any, np.all, np.count_nonzero]),
    axis=st.sampled_from(REDUCTION_AXES),
)
def test_logical_reductions(sc, func, axis):
    # np.prod on the signs of the values only: products of many stamp values overflow, and
    # whether an overflow to inf meets a 0 first (inf * 0 = nan) depends on the order.
    values = sc.data if sc.data.dtype == bool else np.sign(sc.data)
    sc = Scene(values, sc.row, sc.col, sc.imshape, sc.imcorner)
    S = sc.build()
    dense = _ref(sc)
    with np.errstate(all="ignore"):
        expected = func(dense, axis=axis)
        result = func(S, axis=axis)
    _check_reduction_type(result, axis, S)
    _assert_same(result, expected)


# ---- products ------------------------------------------------------------------------------
@given(
    sc=scenes(),
    k=st.sampled_from([None, 1, 3, 6]),
    wdtype=st.sampled_from(["float64", "same"]),
    seed=st.integers(0, 2**16),
)
def test_dot_and_matmul(sc, k, wdtype, seed):
    S = sc.build()
    n = sc.data.shape[2]
    rng = np.random.default_rng(seed)
    wshape = (n,) if k is None else (n, k)
    wd = sc.data.dtype if wdtype == "same" else np.dtype(wdtype)
    w = rng.uniform(-1, 1, size=wshape) if wd.kind == "f" else rng.integers(-3, 4, size=wshape)
    w = w.astype(wd)
    rt = np.result_type(sc.data.dtype, wd)
    dense = _ref(sc).astype(rt)
    with np.errstate(all="ignore"):
        if k is None:
            expected = (dense * w.astype(rt)).sum(axis=2, dtype=rt)
        else:
            expected = (dense[..., None] * w.astype(rt)).sum(axis=2, dtype=rt)
        result = S.dot(w)
        result_mm = S @ w
        result_np = np.dot(S, w)
    for r in (result, result_mm, result_np):
        assert isinstance(r, np.ndarray)
        _assert_same(r, expected, n_terms=4 * max(n, 1), tol_dtype=_least_precise(sc.data.dtype, rt))


@given(sc=scenes(), seed=st.integers(0, 2**16))
def test_tensordot_projection(sc, seed):
    S = sc.build()
    H, W = sc.imshape
    image = np.random.default_rng(seed).uniform(-1, 1, size=(H, W))
    rt = np.result_type(sc.data.dtype, image.dtype)
    with np.errstate(all="ignore"):
        expected = (_ref(sc).astype(rt) * image[..., None]).sum(axis=(0, 1))
        result = np.tensordot(S, image, axes=([0, 1], [0, 1]))
    assert isinstance(result, np.ndarray)
    _assert_same(result, expected, n_terms=4 * H * W, tol_dtype=_least_precise(sc.data.dtype, rt))


@given(
    sc=scenes(),
    seed=st.integers(0, 2**16),
    pattern=st.sampled_from(["ijk,k->ij", "ijk,ij->k", "ijk,kl->ijl"]),
)
def test_einsum(sc, seed, pattern):
    S = sc.build()
    H, W, n = S.shape
    rng = np.random.default_rng(seed)
    other = {"ijk,k->ij": (n,), "ijk,ij->k": (H, W), "ijk,kl->ijl": (n, 2)}[pattern]
    b = rng.uniform(-1, 1, size=other)
    rt = np.result_type(sc.data.dtype, b.dtype)
    with np.errstate(all="ignore"):
        expected = np.einsum(pattern, _ref(sc).astype(rt), b)
        result = np.einsum(pattern, S, b)
    _assert_same(result, expected, n_terms=4 * H * W * max(n, 1), tol_dtype=_least_precise(sc.data.dtype))


# ---- indexing ------------------------------------------------------------------------------
@given(sc=scenes(), data=st.data())
def test_cutouts(sc, data):
    S = sc.build()
    H, W = sc.imshape
    a = data.draw(st.integers(-H - 2, H + 2))
    b = data.draw(st.integers(-H - 2, H + 2) | st.none())
    c = data.draw(st.integers(-W - 2, W + 2) | st.none())
    d = data.draw(st.integers(-W - 2, W + 2))
    dense = _ref(sc)
    expected = dense[a:b, c:d]
    result = S[a:b, c:d]
    if 0 in expected.shape[:2]:
        assert not isinstance(result, Sparse3D)
    else:
        assert isinstance(result, Sparse3D)
        # the cutout keeps every stamp, positions unchanged
        np.testing.assert_array_equal(result.row, S.row)
        np.testing.assert_array_equal(result.data, S.data)
    _assert_same(result, expected)


@given(sc=scenes(), data=st.data())
def test_source_selection(sc, data):
    S = sc.build()
    n = sc.data.shape[2]
    dense = _ref(sc)
    kind = data.draw(st.sampled_from(["slice", "ints", "mask", "int"]))
    if kind == "slice":
        key = slice(data.draw(st.integers(-n - 1, n + 1)), data.draw(st.integers(-n - 1, n + 1)), None)
    elif kind == "ints":
        key = np.array(data.draw(st.lists(st.integers(-n, n - 1), max_size=8)) if n else [], dtype=np.int64)
    elif kind == "mask":
        key = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    else:
        assume(n > 0)
        key = data.draw(st.integers(-n, n - 1))
    result = S[:, :, key]
    expected = dense[:, :, key]
    if kind == "int":  # the source axis is dropped: no stamp structure left
        assert not isinstance(result, Sparse3D)
    else:
        assert isinstance(result, Sparse3D)
    _assert_same(result, expected)


def _index_component(data, n: int, axis_len_key: str):
    """One key element for an axis of length ``n``: int, slice, int list/array, 1-D mask."""
    kind = data.draw(st.sampled_from(["int", "slice", "ints", "empty", "mask"]), label=axis_len_key)
    if kind == "int":
        assume(n > 0)
        return data.draw(st.integers(-n, n - 1))
    if kind == "slice":
        lo = data.draw(st.integers(-n - 2, n + 2) | st.none())
        hi = data.draw(st.integers(-n - 2, n + 2) | st.none())
        step = data.draw(st.sampled_from([None, 1, 2, -1, -3]))
        return slice(lo, hi, step)
    if kind == "ints":
        assume(n > 0)
        return data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=4))
    if kind == "empty":
        return []
    return np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)


@given(sc=scenes(), data=st.data())
def test_indexing_follows_numpy(sc, data):
    """Random keys (ints, slices, int lists, empty lists, 1-D and multi-axis masks, boolean
    scalars, an Ellipsis anywhere) give NumPy's shape, axis order and values, or NumPy's error."""
    S = sc.build()
    dense = _ref(sc)
    H, W, n = dense.shape
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    parts = []
    axis = 0
    while axis < 3 and data.draw(st.booleans()):
        if axis < 2 and data.draw(st.integers(0, 5)) == 0:  # a mask over two axes
            parts.append(rng.random(dense.shape[axis : axis + 2]) < 0.3)
            axis += 2
            continue
        parts.append(_index_component(data, dense.shape[axis], f"axis{axis}"))
        axis += 1
    for extra in data.draw(st.lists(st.sampled_from([True, False, np.True_, Ellipsis]), max_size=2)):
        if extra is Ellipsis and any(p is Ellipsis for p in parts):
            continue
        parts.insert(data.draw(st.integers(0, len(parts))), extra)
    key = tuple(parts)
    try:
        expected = dense[key]
    except IndexError:  # NumPy refuses (e.g. advanced indices not broadcasting): so do we
        with pytest.raises(IndexError):
            S[key]
        return
    result = S[key]
    got = result.todense() if isinstance(result, Sparse3D) else result
    assert got.shape == expected.shape, key
    _assert_same(got, expected)


@given(
    nr=st.integers(1, 4),
    nc=st.integers(1, 4),
    n=st.integers(0, 6),
    box=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
    layout=st.sampled_from(["box", "grid", "grid_with_repeat"]),
)
def test_repeated_positions_refused_exactly_when_present(nr, nc, n, box, seed, layout):
    """Construction refuses a scene iff some source has two stamp pixels on one position
    (checked here with Python sets), on the grid fast path and the general path alike."""
    rng = np.random.default_rng(seed)
    if layout == "box":  # anywhere in a small box: repeats are likely
        row = rng.integers(0, box, size=(nr, nc, n)) + rng.integers(-3, 8, size=n)
        col = rng.integers(0, box, size=(nr, nc, n)) - 2
    else:  # a grid, possibly flipped or transposed (the check's fast path)
        R, C = np.mgrid[:nr, :nc]
        if rng.random() < 0.5:
            R, C = C * 2, R  # row varies along stamp axis 1, with steps of 2
        R = R[::-1] if rng.random() < 0.5 else R
        C = C[:, ::-1] if rng.random() < 0.5 else C
        row = R[:, :, None] + rng.integers(-3, 8, size=n)
        col = C[:, :, None] + rng.integers(-3, 8, size=n)
        if layout == "grid_with_repeat" and n and nr * nc > 1:
            k = rng.integers(n)
            i, j = np.unravel_index(rng.choice(nr * nc, size=2, replace=False), (nr, nc))
            row[i[0], j[0], k], col[i[0], j[0], k] = row[i[1], j[1], k], col[i[1], j[1], k]
    def distinct(k):
        return len({(int(r), int(c)) for r, c in zip(row[..., k].ravel(), col[..., k].ravel())})

    repeats = [k for k in range(n) if distinct(k) < nr * nc]
    data = np.ones((nr, nc, n))
    if repeats:
        with pytest.raises(ValueError, match=f"stamp {repeats[0]} covers pixel"):
            Sparse3D(data, row, col, (6, 6))
    else:
        S = Sparse3D(data, row, col, (6, 6))
        _assert_same(S, dense_reference(data, row, col, (6, 6)))


@given(sc=scenes(), seed=st.integers(0, 2**16), data=st.data())
def test_allclose_across_structures_and_scalars(sc, seed, data):
    """``np.allclose`` against a scalar, and against an array with other stamps, as NumPy's."""
    S = sc.build()
    dense = _ref(sc)
    x = data.draw(st.sampled_from([0, 0.0, 1e-9, 1.5, -np.inf, np.inf, np.nan]))
    kw = {"equal_nan": data.draw(st.booleans()), "atol": data.draw(st.sampled_from([1e-8, 3.0]))}
    with np.errstate(all="ignore"):
        assert np.allclose(S, x, **kw) == np.allclose(dense, x, **kw)
        assert np.allclose(x, S, **kw) == np.allclose(x, dense, **kw)
        dr, dc = data.draw(st.integers(-2, 2)), data.draw(st.integers(-2, 2))
        T = S.translate((dr, dc))
        Tdense = dense_reference(sc.data, sc.row + dr, sc.col + dc, sc.imshape, sc.imcorner)
        assert np.allclose(S, T, **kw) == np.allclose(dense, Tdense, **kw)
        assert np.allclose(T, S, **kw) == np.allclose(Tdense, dense, **kw)


@given(sc=scenes(dtypes=["float64", "float32", "int64", "bool"]), data=st.data())
def test_reduce_over_no_axes_and_product(sc, data):
    """``ufunc.reduce(S, axis=())`` keeps NumPy's dtype rules; ``np.prod`` with implicit zeros."""
    S = sc.build()
    dense = _ref(sc)
    ufunc = data.draw(st.sampled_from([np.add, np.multiply, np.logical_and, np.maximum, np.bitwise_or]))
    try:
        expected = ufunc.reduce(dense, axis=())
    except TypeError:
        with pytest.raises(TypeError):
            ufunc.reduce(S, axis=())
        return
    result = ufunc.reduce(S, axis=())
    assert result.dtype == expected.dtype
    _assert_same(result, expected)
    axis = data.draw(st.sampled_from(REDUCTION_AXES))
    if dense.dtype.kind == "f":  # exact zeros decided from counts: compare where NumPy is exact
        finite = np.isfinite(sc.data).all()
        assume(finite)
    with np.errstate(all="ignore"):
        _assert_same(np.prod(S, axis=axis), np.prod(dense, axis=axis), n_terms=4 * dense.size)


@given(sc=scenes(), dr=st.integers(-80, 80), dc=st.integers(-80, 80))
def test_translate(sc, dr, dc):
    S = sc.build()
    T = S.translate((dr, dc))
    _assert_same(T, dense_reference(sc.data, sc.row + dr, sc.col + dc, sc.imshape, sc.imcorner))
    back = T.translate((-dr, -dc))
    np.testing.assert_array_equal(back.row, S.row)
    np.testing.assert_array_equal(back.col, S.col)
    np.testing.assert_array_equal(back.data, S.data)
    _assert_same(back, _ref(sc))
    # translation does not mutate the original
    _assert_same(S, _ref(sc))


# ---- conversions ---------------------------------------------------------------------------
@given(sc=scenes())
def test_conversions(sc):
    S = sc.build()
    dense = _ref(sc)
    H, W, n = dense.shape
    flat = dense.reshape(H * W, n)
    _assert_same(S.todense(), dense)
    _assert_same(S.to_sparse(), dense)
    coo = S.to_sparse()
    assert coo.fill_value == 0
    for m in (S.tocsr(), S.tocsc(), S.tocoo()):
        assert m.shape == (H * W, n)
        assert m.dtype == sc.data.dtype
        _assert_same(m.toarray(), flat, n_terms=sc.data.shape[0])
    csr = S.tocsr()
    for i in range(csr.shape[0]):
        cols = csr.indices[csr.indptr[i] : csr.indptr[i + 1]]
        assert np.all(np.diff(cols) >= 0)
    assert S.nnz == int(np.count_nonzero(_in_image(sc)))


def _in_image(sc):
    r = sc.row - sc.imcorner[0]
    c = sc.col - sc.imcorner[1]
    H, W = sc.imshape
    return np.broadcast_to((r >= 0) & (r < H) & (c >= 0) & (c < W), sc.data.shape)


@given(
    shape=st.tuples(st.integers(1, 64), st.integers(1, 64)),
    stamp=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    corner=st.tuples(st.integers(-70, 70), st.integers(-70, 70)),
    data=st.data(),
)
def test_concatenate(shape, stamp, corner, data):
    dtype = data.draw(st.sampled_from(DTYPES))
    parts = [
        data.draw(scenes(dtypes=[dtype], imshape=shape, imcorner=corner, stamp=stamp))
        for _ in range(data.draw(st.integers(1, 3)))
    ]
    result = np.concatenate([p.build() for p in parts], axis=data.draw(st.sampled_from([2, -1])))
    assert isinstance(result, Sparse3D)
    expected = np.concatenate([_ref(p) for p in parts], axis=2)
    _assert_same(result, expected)


@given(sc=scenes(), seed=st.integers(0, 2**16))
def test_where_and_clip(sc, seed):
    S = sc.build()
    with np.errstate(all="ignore"):
        cond = sc.data > 0
        _assert_same(np.where(S > 0, S, -1), _ref(sc, np.where(cond, sc.data, -1)))
        other = np.random.default_rng(seed).uniform(-2, 2, size=sc.data.shape).astype(sc.data.dtype)
        S2 = S.with_data(other)
        _assert_same(np.where(S > 0, S, S2), _ref(sc, np.where(cond, sc.data, other)))
        if sc.data.dtype != bool:
            _assert_same(np.clip(S, -1, 1), _ref(sc, np.clip(sc.data, -1, 1)))
            _assert_same(np.clip(S, None, 0), _ref(sc, np.clip(sc.data, None, 0)))


@given(sc=scenes())
def test_pickle_round_trip(sc):
    S = sc.build()
    S.tocsr()  # warm a cache: it must not travel
    U = pickle.loads(pickle.dumps(S))
    assert U.shape == S.shape and U.dtype == S.dtype
    assert U.imcorner == S.imcorner and U.imshape == S.imshape
    np.testing.assert_array_equal(U.data, S.data)
    np.testing.assert_array_equal(U.row, S.row)
    np.testing.assert_array_equal(U.col, S.col)
    assert not U.data.flags.writeable
    assert "_csr" not in U.__dict__
    _assert_same(U, _ref(sc))


# ---- the other registered functions ---------------------------------------------------------
@given(sc=scenes(), seed=st.integers(0, 2**16))
def test_elementwise_functions(sc, seed):
    S = sc.build()
    d = sc.data
    with np.errstate(all="ignore"):
        if d.dtype != bool:
            _assert_same(np.round(S, 1), _ref(sc, np.round(d, 1)))
            _assert_same(np.around(S), _ref(sc, np.around(d)))
        _assert_same(np.nan_to_num(S), _ref(sc, np.nan_to_num(d)))
        _assert_same(np.real(S), _ref(sc, np.real(d)))
        _assert_same(np.imag(S), _ref(sc, np.imag(d)))
        other = np.random.default_rng(seed).uniform(-2, 2, size=d.shape).astype(d.dtype)
        S2 = S.with_data(other)
        _assert_same(np.isclose(S, S2), _ref(sc, np.isclose(d, other)))
        _assert_same(np.isclose(S, S, equal_nan=True), _ref(sc, np.isclose(d, d, equal_nan=True)))
    _assert_same(np.copy(S), _ref(sc))
    assert np.copy(S) is not S
    for like, fill in ((np.zeros_like, 0), (np.ones_like, 1), (np.empty_like, 0)):
        _assert_same(like(S), _ref(sc, np.full_like(d, fill)))
    _assert_same(np.full_like(S, 3), _ref(sc, np.full_like(d, 3)))


@given(sc=scenes(), seed=st.integers(0, 2**16))
def test_comparisons(sc, seed):
    S = sc.build()
    dense = _ref(sc)
    other = np.random.default_rng(seed).uniform(-2, 2, size=sc.data.shape).astype(sc.data.dtype)
    S2 = S.with_data(other)
    dense2 = _ref(sc, other)
    for a, b, da, db in ((S, S, dense, dense), (S, S2, dense, dense2)):
        for equal_nan in (False, True):
            assert np.array_equal(a, b, equal_nan=equal_nan) == np.array_equal(da, db, equal_nan=equal_nan)
            if dense.dtype != bool:
                with np.errstate(all="ignore"):
                    assert np.allclose(a, b, equal_nan=equal_nan) == np.allclose(da, db, equal_nan=equal_nan)


@given(sc=scenes())
def test_nonzero(sc):
    S = sc.build()
    dense = _ref(sc)
    expected = np.nonzero(dense)
    for got in (np.nonzero(S), np.where(S)):
        assert len(got) == 3
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(g, e)


@given(sc=scenes())
def test_array_facts_and_transpose(sc):
    S = sc.build()
    dense = _ref(sc)
    assert np.shape(S) == dense.shape
    assert np.ndim(S) == 3
    assert np.size(S) == dense.size
    assert np.size(S, 2) == dense.shape[2]
    assert np.result_type(S, np.float32) == np.result_type(dense, np.float32)
    assert np.iscomplexobj(S) is False and np.isrealobj(S) is True
    assert np.transpose(S) is not None
    assert np.transpose(S, (0, 1, 2)) is S
    _assert_same(np.transpose(S, (2, 0, 1)), np.transpose(dense, (2, 0, 1)))
    _assert_same(S.T, dense.T)


@given(sc=scenes(nonfinite=False))
def test_stack(sc):
    S = sc.build()
    dense = _ref(sc)
    result = np.stack([S, S], axis=0)
    assert isinstance(result, sparse.COO)
    _assert_same(result, np.stack([dense, dense], axis=0))


# ---- xarray views (sparse3d/xarray.py) -----------------------------------------------------
def _xr():
    return pytest.importorskip("xarray")


@given(sc=scenes(), data=st.data())
def test_xarray_image_view(sc, data):
    _xr()
    S = sc.build()
    dense = _ref(sc)
    H, W, n = dense.shape
    da = S.to_xarray()
    assert da.dims == ("row", "col", "source")
    np.testing.assert_array_equal(da["row"].values, sc.imcorner[0] + np.arange(H))
    np.testing.assert_array_equal(da["col"].values, sc.imcorner[1] + np.arange(W))
    with np.errstate(all="ignore"):
        _assert_same(da.sum("source", skipna=False).data, dense.sum(axis=2), n_terms=4 * max(n, 1))
        # xarray's default skipna: NaN counts as 0 (every stored element is one logical element)
        _assert_same(da.sum("source").data, np.nansum(dense, axis=2), n_terms=4 * max(n, 1))
        # NaN-aware operations count every logical element, off-stamp zeros included
        isnan = np.isnan(dense) if dense.dtype.kind == "f" else np.zeros(dense.shape, bool)
        axis = data.draw(st.sampled_from([None, "source", ("row", "col")]))
        dims = {"source": 2, ("row", "col"): (0, 1)}.get(axis)
        _assert_same(_plain(da.count(axis)), np.sum(~isnan, axis=dims), dtype=False)
        _assert_same(_plain(da.notnull().sum(axis)), np.sum(~isnan, axis=dims), dtype=False)
        _assert_same(_plain(da.isnull().sum(axis)), np.sum(isnan, axis=dims), dtype=False)
        if dense.dtype.kind == "f":
            filled = np.where(isnan, 1.5, dense)
            _assert_same(_plain(da.fillna(1.5).sum(axis)), filled.sum(axis=dims), n_terms=dense.size)
    a, b = sorted(data.draw(st.lists(st.integers(0, H), min_size=2, max_size=2)))
    c, d = sorted(data.draw(st.lists(st.integers(0, W), min_size=2, max_size=2)))
    assume(a < b and c < d)
    cut = da.isel(row=slice(a, b), col=slice(c, d))
    _assert_same(cut.data, dense[a:b, c:d])
    np.testing.assert_array_equal(cut["row"].values, sc.imcorner[0] + np.arange(a, b))
    np.testing.assert_array_equal(cut["col"].values, sc.imcorner[1] + np.arange(c, d))
    if n:
        sel = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=5)))
        _assert_same(da.isel(source=sel).data, dense[:, :, sel])


def _plain(da):
    """A DataArray's values as an ndarray (densifying sparse.COO results)."""
    x = da.data
    return np.asarray(x.todense() if hasattr(x, "todense") else x)


def _assert_identical(U, S):
    assert isinstance(U, Sparse3D)
    assert U.dtype == S.dtype and U.imshape == S.imshape and U.imcorner == S.imcorner
    np.testing.assert_array_equal(U.data, S.data)
    np.testing.assert_array_equal(U.row, S.row)
    np.testing.assert_array_equal(U.col, S.col)


@given(sc=scenes())
def test_xarray_stamp_round_trip(sc):
    _xr()
    S = sc.build()
    da = S.to_xarray(view="stamps")
    assert da.dims == ("stamp_row", "stamp_col", "source")
    _assert_identical(Sparse3D.from_xarray(da), S)
    _assert_identical(Sparse3D.from_xarray(da.transpose("source", "stamp_col", "stamp_row")), S)


_NC_COUNTER = iter(range(10**9))


# nsources >= 1: netCDF-3 (the scipy engine) reads a zero-length dimension back as the
# unlimited record dimension, which scipy then fails to read.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sc=scenes(dtypes=["float64"]).filter(lambda sc: sc.data.shape[2] > 0))
def test_xarray_netcdf_round_trip(sc, tmp_path):
    xr = _xr()
    S = sc.build()
    path = tmp_path / f"stamps{next(_NC_COUNTER)}.nc"
    S.to_xarray(view="stamps").to_netcdf(path, engine="scipy")
    with xr.open_dataarray(path, engine="scipy") as back:
        back.load()
    _assert_identical(Sparse3D.from_xarray(back), S)


@given(
    sc=scenes(dtypes=["float64", "float32", "int64"]),
    axis=st.sampled_from([0, 1, -3, (0, 1)]),
    edge_order=st.sampled_from([1, 2]),
    spacing=st.sampled_from([None, 0.5]),
)
def test_gradient_per_stamp(sc, axis, edge_order, spacing):
    """np.gradient of every stamp block, placed like the stamps (not the logical array's)."""
    axes = (axis,) if isinstance(axis, int) else axis
    assume(all(sc.data.shape[a % 3] > edge_order for a in axes))
    args = () if spacing is None else (spacing,)
    with np.errstate(all="ignore"):
        result = np.gradient(sc.build(), *args, axis=axis, edge_order=edge_order)
        expected = np.gradient(sc.data, *args, axis=tuple(a % 3 for a in axes), edge_order=edge_order)
    if isinstance(axis, int):
        result, expected = (result,), (expected,)
    assert isinstance(result, tuple) and len(result) == len(expected)
    for got, exp in zip(result, expected):
        assert isinstance(got, Sparse3D)
        with np.errstate(all="ignore"):  # inf - inf in the stamps, summed by the dense reference
            _assert_same(got, _ref(sc, exp))


# ---- completeness: every registered NumPy function has a property test ----------------------
PROPERTY_TESTS = {
    np.sum: "test_reductions",
    np.mean: "test_reductions",
    np.max: "test_reductions",
    np.min: "test_reductions",
    np.amax: "test_reductions",
    np.amin: "test_reductions",
    np.prod: "test_logical_reductions",
    np.any: "test_logical_reductions",
    np.all: "test_logical_reductions",
    np.count_nonzero: "test_logical_reductions",
    np.nansum: "test_reductions",
    np.nanmean: "test_reductions",
    np.nanmax: "test_reductions",
    np.nanmin: "test_reductions",
    np.einsum: "test_einsum",
    np.dot: "test_dot_and_matmul",
    np.matmul: "test_dot_and_matmul",
    np.tensordot: "test_tensordot_projection",
    np.concatenate: "test_concatenate",
    np.stack: "test_stack",
    np.where: "test_where_and_clip",
    np.clip: "test_where_and_clip",
    np.nonzero: "test_nonzero",
    np.round: "test_elementwise_functions",
    np.around: "test_elementwise_functions",
    np.nan_to_num: "test_elementwise_functions",
    np.real: "test_elementwise_functions",
    np.imag: "test_elementwise_functions",
    np.isclose: "test_elementwise_functions",
    np.copy: "test_elementwise_functions",
    np.zeros_like: "test_elementwise_functions",
    np.ones_like: "test_elementwise_functions",
    np.empty_like: "test_elementwise_functions",
    np.full_like: "test_elementwise_functions",
    np.allclose: "test_comparisons",  # and test_allclose_across_structures_and_scalars
    np.array_equal: "test_comparisons",
    np.shape: "test_array_facts_and_transpose",
    np.ndim: "test_array_facts_and_transpose",
    np.size: "test_array_facts_and_transpose",
    np.result_type: "test_array_facts_and_transpose",
    np.iscomplexobj: "test_array_facts_and_transpose",
    np.isrealobj: "test_array_facts_and_transpose",
    np.transpose: "test_array_facts_and_transpose",
    np.gradient: "test_gradient_per_stamp",
}


def test_every_registered_function_has_a_property_test():
    missing = sorted(f.__name__ for f in HANDLED_FUNCTIONS if f not in PROPERTY_TESTS)
    assert not missing, f"add a property test for these registered functions: {missing}"
    for func, name in PROPERTY_TESTS.items():
        assert callable(globals().get(name)), f"{func.__name__} maps to a missing test {name!r}"


# ---- stamp groups (several stamp shapes in one array) ---------------------------------------
from sparse3d.testing import GroupedScene  # noqa: E402


@st.composite
def grouped_scenes(draw, dtypes=DTYPES, nonfinite=True):
    """2-3 random scenes in one image (equal bounds and dtype), each with its own stamp shape
    (equal shapes and empty parts happen too: equal shapes form one group, wherever they are)."""
    H, W = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    corner = (draw(st.integers(-70, 70)), draw(st.integers(-70, 70)))
    dtype = draw(st.sampled_from(dtypes))
    k = draw(st.integers(2, 3))
    parts = tuple(
        draw(scenes(dtypes=[dtype], nonfinite=nonfinite, imshape=(H, W), imcorner=corner)) for _ in range(k)
    )
    return GroupedScene(parts)


def _gref(gs: GroupedScene, values=None) -> np.ndarray:
    values = [None] * len(gs.parts) if values is None else values
    return np.concatenate([_ref(p, v) for p, v in zip(gs.parts, values)], axis=2)


def _offsets(gs: GroupedScene) -> np.ndarray:
    return np.cumsum([0] + [p.data.shape[2] for p in gs.parts])


@given(gs=grouped_scenes())
def test_grouped_structure_and_dense(gs):
    S = gs.build()
    dense = _gref(gs)
    _assert_same(S, dense)
    assert S.nnz == sum(p.build().nnz for p in gs.parts)
    shapes = [p.data.shape[:2] for p in gs.parts if p.data.shape[2]] or [gs.parts[0].data.shape[:2]]
    merged = list(dict.fromkeys(shapes))  # one group per stamp shape, in order of appearance
    assert list(S.stamp_shapes) == merged
    assert len(S.groups) == len(merged)
    assert S.nsources == dense.shape[2]
    assert np.array_equal(np.sort(np.concatenate(S.group_sources)), np.arange(S.nsources))
    for g, idx in zip(S.groups, S.group_sources):
        _assert_same(g, dense[:, :, idx])
    if len(merged) > 1:
        for attr in ("data", "row", "col", "stamp_shape", "in_image"):
            with pytest.raises(ValueError, match=r"S\.groups"):
                getattr(S, attr)


@given(gs=grouped_scenes(), ufunc=st.sampled_from(UNARY))
def test_grouped_unary_ufuncs(gs, ufunc):
    S = gs.build()
    ok, _ = _expect_or_raise(lambda: ufunc(gs.parts[0].data))
    if not ok:
        return
    with np.errstate(all="ignore"):
        expected = [ufunc(p.data) for p in gs.parts]
        result = ufunc(S)
    assert isinstance(result, Sparse3D) and result.stamp_shapes == S.stamp_shapes
    _assert_same(result, _gref(gs, expected), n_terms=9)


@given(
    gs=grouped_scenes(),
    op=st.sampled_from(BINARY),
    kind=st.sampled_from(OPERAND_KINDS),
    reflected=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_grouped_binary_ufuncs_and_operators(gs, op, kind, reflected, seed):
    S = gs.build()
    rng = np.random.default_rng(seed)
    o = _offsets(gs)
    if kind == "scalar":
        operand, at = 1.5, [1.5] * len(gs.parts)
    elif kind == "vector":
        operand = rng.uniform(-2, 2, size=o[-1])
        at = [operand[o[i] : o[i + 1]] for i in range(len(gs.parts))]
    elif kind == "image":
        operand = rng.uniform(-2, 2, size=(*gs.imshape, 1))
        at = [_gather(p, operand) for p in gs.parts]
    else:
        at = [rng.uniform(-2, 2, size=p.data.shape).astype(p.data.dtype) for p in gs.parts]
        operand = GroupedScene(
            tuple(Scene(v, p.row.copy(), p.col.copy(), p.imshape, p.imcorner) for v, p in zip(at, gs.parts))
        ).build()
        reflected = False
    with np.errstate(all="ignore"):
        ok, _ = _expect_or_raise(
            lambda: [op(a, p.data) if reflected else op(p.data, a) for a, p in zip(at, gs.parts)]
        )
        if not ok:
            return
        expected = [op(a, p.data) if reflected else op(p.data, a) for a, p in zip(at, gs.parts)]
        result = op(operand, S) if reflected else op(S, operand)
    assert isinstance(result, Sparse3D)
    _assert_same(result, _gref(gs, expected), n_terms=9)


@given(
    gs=grouped_scenes(),
    func=st.sampled_from([np.sum, np.mean, np.max, np.min, np.nansum, np.nanmax, np.count_nonzero, np.any]),
    axis=st.sampled_from([*REDUCTION_AXES, (1, 2), (0, 2)]),
)
def test_grouped_reductions(gs, func, axis):
    S = gs.build()
    dense = _gref(gs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ok, expected = _expect_or_raise(lambda: func(dense, axis=axis))
        if not ok:
            with pytest.raises(expected):
                func(S, axis=axis)
            return
        with np.errstate(all="ignore"):
            result = func(S, axis=axis)
    reduced = dense.size // max(np.size(expected), 1)
    _assert_same(result, expected, n_terms=reduced * 4)


@given(gs=grouped_scenes(nonfinite=False), k=st.sampled_from([None, 1, 3, 6]), seed=st.integers(0, 2**16))
def test_grouped_products(gs, k, seed):
    S = gs.build()
    n = S.nsources
    rng = np.random.default_rng(seed)
    w = rng.uniform(-1, 1, size=(n,) if k is None else (n, k))
    dense = _gref(gs)
    rt = np.result_type(dense.dtype, w.dtype)
    expected = np.tensordot(dense.astype(rt), w, axes=([2], [0]))
    for r in (S.dot(w), S @ w, np.dot(S, w), np.tensordot(S, w, axes=([2], [0]))):
        _assert_same(r, expected, n_terms=4 * max(n, 1), tol_dtype=_least_precise(dense.dtype))
    image = rng.uniform(-1, 1, size=gs.imshape)
    proj = np.tensordot(S, image, axes=([0, 1], [0, 1]))
    _assert_same(
        proj,
        np.tensordot(dense.astype(rt), image, axes=([0, 1], [0, 1])),
        n_terms=4 * dense.shape[0] * dense.shape[1],
        tol_dtype=_least_precise(dense.dtype),
    )
    if dense.dtype.kind == "f":
        gram = np.tensordot(S, S, axes=([0, 1], [0, 1]))
        _assert_same(
            gram,
            np.tensordot(dense, dense, axes=([0, 1], [0, 1])),
            n_terms=4 * dense.shape[0] * dense.shape[1],
        )


@given(gs=grouped_scenes())
def test_grouped_conversions_and_pickle(gs):
    S = gs.build()
    dense = _gref(gs)
    H, W, n = dense.shape
    flat = dense.reshape(H * W, n)
    if dense.dtype.kind == "f":
        for m in (S.tocsr(), S.tocsc(), S.tocoo()):
            np.testing.assert_array_equal(m.toarray(), flat)
    np.testing.assert_array_equal(S.to_sparse().todense(), dense)
    back = pickle.loads(pickle.dumps(S))
    assert back.stamp_shapes == S.stamp_shapes
    np.testing.assert_array_equal(back.todense(), dense)
    assert np.array_equal(back, S, equal_nan=True)


@given(gs=grouped_scenes(), data=st.data())
def test_grouped_indexing(gs, data):
    S = gs.build()
    dense = _gref(gs)
    H, W, n = dense.shape
    idx = data.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=12)) if n else []
    sub = S[:, :, np.asarray(idx, dtype=np.intp)]
    assert isinstance(sub, Sparse3D)
    _assert_same(sub, dense[:, :, idx])
    r0 = data.draw(st.integers(0, H - 1))
    r1 = data.draw(st.integers(r0 + 1, H))
    c0 = data.draw(st.integers(0, W - 1))
    c1 = data.draw(st.integers(c0 + 1, W))
    a = data.draw(st.integers(0, n))
    b = data.draw(st.integers(a, n))
    _assert_same(S[r0:r1, c0:c1, a:b], dense[r0:r1, c0:c1, a:b])
    if n:
        k = data.draw(st.integers(0, n - 1))
        _assert_same(S[:, :, k], dense[:, :, k])
        mask = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        _assert_same(S[..., mask], dense[..., mask])


@given(gs=grouped_scenes(), dr=st.integers(-50, 50), dc=st.integers(-50, 50), seed=st.integers(0, 2**16))
def test_grouped_translate_and_whole_pixel_shift(gs, dr, dc, seed):
    S = gs.build()
    moved = GroupedScene(
        tuple(Scene(p.data, p.row + dr, p.col + dc, p.imshape, p.imcorner) for p in gs.parts)
    )
    _assert_same(S.translate((dr, dc)), _gref(moved))
    _assert_same(S.translate((dr, dc)).translate((-dr, -dc)), _gref(gs))
    rng = np.random.default_rng(seed)
    o = _offsets(gs)
    d = rng.integers(-4, 5, size=(2, o[-1]))
    per = GroupedScene(
        tuple(
            Scene(p.data, p.row + d[0, o[i] : o[i + 1]], p.col + d[1, o[i] : o[i + 1]], p.imshape, p.imcorner)
            for i, p in enumerate(gs.parts)
        )
    )
    _assert_same(S.shift((d[0].astype(float), d[1].astype(float))), _gref(per))


@given(gs=grouped_scenes(dtypes=["float64", "float32"]), seed=st.integers(0, 2**16))
def test_grouped_elementwise_functions(gs, seed):
    S = gs.build()
    rng = np.random.default_rng(seed)
    with np.errstate(all="ignore"):
        _assert_same(np.clip(S, -1, 1), _gref(gs, [np.clip(p.data, -1, 1) for p in gs.parts]))
        _assert_same(np.round(S, 1), _gref(gs, [np.round(p.data, 1) for p in gs.parts]))
        _assert_same(np.nan_to_num(S), _gref(gs, [np.nan_to_num(p.data) for p in gs.parts]))
        _assert_same(np.where(S > 0, S, 0), _gref(gs, [np.where(p.data > 0, p.data, 0) for p in gs.parts]))
        _assert_same(np.zeros_like(S), np.zeros_like(_gref(gs)))
        _assert_same(np.ones_like(S), _gref(gs, [np.ones_like(p.data) for p in gs.parts]))
        v = rng.uniform(-1, 1, size=S.nsources)
        o = _offsets(gs)
        _assert_same(
            np.where(S > 0, S, v),
            _gref(gs, [np.where(p.data > 0, p.data, v[o[i] : o[i + 1]]) for i, p in enumerate(gs.parts)]),
        )
        if all(min(p.data.shape[:2]) > 1 for p in gs.parts):  # np.gradient needs 2 samples
            for axis in (0, 1):
                expected = _gref(gs, [np.gradient(p.data, axis=axis) for p in gs.parts])
                _assert_same(np.gradient(S, axis=axis), expected)
    _assert_same(np.logical_not(S > 0), np.logical_not(_gref(gs) > 0))
    assert np.allclose(S, S, equal_nan=True)
