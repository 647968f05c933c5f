"""Every NumPy ufunc and Python operator against a dense NumPy reference (stamp semantics)."""

import operator
import pickle

import numpy as np
import pytest

from sparse3d import Sparse3D
from sparse3d.testing import assert_equal_dense, dense_reference, random_scene

ALL_UFUNCS = sorted(
    (u for u in vars(np).values() if isinstance(u, np.ufunc) and u.signature is None),
    key=lambda u: u.__name__,
)


def _input_dtype(ufunc):
    """A dtype the ufunc's loops accept for every input (float64, then int64, then bool)."""
    for code in "dlD?":
        if any(t.split("->")[0] == code * ufunc.nin for t in ufunc.types):
            return np.dtype(code)
    return None


def _scene_for(ufunc, **kw):
    dtype = _input_dtype(ufunc)
    sc = random_scene(7, dtype=dtype, **kw)
    if ufunc.__name__ in ("left_shift", "right_shift", "ldexp", "power", "float_power"):
        data = np.abs(sc.data) if dtype.kind in "iu" else sc.data
        sc = type(sc)(data, sc.row, sc.col, sc.imshape, sc.imcorner)
    return sc


def _check(result, expected_data, sc):
    if isinstance(expected_data, tuple):
        assert isinstance(result, tuple) and len(result) == len(expected_data)
        for r, e in zip(result, expected_data):
            _check(r, e, sc)
        return
    assert isinstance(result, Sparse3D)
    assert result._structure is not None and result.stamp_shape == sc.data.shape
    assert_equal_dense(result, dense_reference(expected_data, sc.row, sc.col, sc.imshape, sc.imcorner))


# isnat (datetimes only) and ldexp (float, int) have no loop with one input dtype: ldexp and
# frexp have their own test below; every other ufunc is covered by these two loops
SIMPLE_UFUNCS = [u for u in ALL_UFUNCS if _input_dtype(u) is not None]
assert {u.__name__ for u in ALL_UFUNCS} - {u.__name__ for u in SIMPLE_UFUNCS} <= {"isnat", "ldexp"}


# np.logical_not (and ~ on booleans) negates a mask, implicit zeros included: tested below
STAMP_UNARY = [u for u in SIMPLE_UFUNCS if u.nin == 1 and u is not np.logical_not]


@pytest.mark.parametrize("ufunc", STAMP_UNARY, ids=lambda u: u.__name__)
def test_unary_ufunc_acts_on_stamp_values(ufunc):
    sc = _scene_for(ufunc, imcorner=(-3, 5))
    with np.errstate(all="ignore"):
        expected = ufunc(sc.data)
        result = ufunc(sc.build())
    _check(result, expected, sc)


@pytest.mark.parametrize("ufunc", [u for u in SIMPLE_UFUNCS if u.nin == 2], ids=lambda u: u.__name__)
@pytest.mark.parametrize(
    "operand", ["scalar", "scalar_left", "sparse", "per_source", "per_source_3d", "image"]
)
def test_binary_ufunc_with_every_operand_kind(ufunc, operand):
    sc = _scene_for(ufunc, imcorner=(2, -4))
    S = sc.build()
    n = sc.data.shape[2]
    H, W = sc.imshape
    rng = np.random.default_rng(3)
    kind = sc.data.dtype
    make = (
        (lambda shape: rng.integers(1, 4, size=shape).astype(kind))
        if kind.kind in "iub"
        else (lambda shape: rng.uniform(0.5, 2, size=shape).astype(kind))
    )
    if operand == "scalar":
        other = make(()).item()
        args, dense_args = (S, other), (sc.data, other)
    elif operand == "scalar_left":
        other = make(()).item()
        args, dense_args = (other, S), (other, sc.data)
    elif operand == "sparse":
        other_data = make(sc.data.shape)
        args = (S, S.with_data(other_data))
        dense_args = (sc.data, other_data)
    elif operand == "per_source":
        v = make((n,))
        args, dense_args = (S, v), (sc.data, v)
    elif operand == "per_source_3d":
        v = make((1, 1, n))
        args, dense_args = (v, S), (v, sc.data)
    else:
        img = make((H, W, 1))
        r = np.clip(sc.row - sc.imcorner[0], 0, H - 1)
        c = np.clip(sc.col - sc.imcorner[1], 0, W - 1)
        args, dense_args = (S, img), (sc.data, img[r, c, 0])
    with np.errstate(all="ignore"):
        try:
            expected = ufunc(*dense_args)
        except (TypeError, np._core._exceptions._UFuncNoLoopError) as exc:
            with pytest.raises(type(exc)):
                ufunc(*args)
            return
        result = ufunc(*args)
    _check(result, expected, sc)


BINARY_OPERATORS = [
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.mod,
    operator.pow,
    operator.lt,
    operator.le,
    operator.eq,
    operator.ne,
    operator.gt,
    operator.ge,
]
INT_OPERATORS = [operator.and_, operator.or_, operator.xor, operator.lshift, operator.rshift]


OPERATOR_CASES = [
    (op, dtype)
    for op in BINARY_OPERATORS + INT_OPERATORS
    for dtype in (np.float64, np.float32, np.int64)
    if op not in INT_OPERATORS or dtype is np.int64  # bitwise operators need integers
]


@pytest.mark.parametrize("op, dtype", OPERATOR_CASES, ids=lambda x: getattr(x, "__name__", str(x)))
@pytest.mark.parametrize("side", ["right", "left", "both"])
def test_python_operators(op, dtype, side):
    sc = random_scene(11, dtype=dtype, imcorner=(1, 1))
    data = np.abs(sc.data) + 1 if op in (operator.pow, operator.lshift, operator.rshift) else sc.data
    sc = type(sc)(data, sc.row, sc.col, sc.imshape, sc.imcorner)
    S = sc.build()
    two = 2 if np.dtype(dtype).kind == "i" else 2.0
    with np.errstate(all="ignore"):
        if side == "right":
            result, expected = op(S, two), op(data, two)
        elif side == "left":
            result, expected = op(two, S), op(two, data)
        else:
            other = data[::-1].copy()
            result, expected = op(S, S.with_data(other)), op(data, other)
    _check(result, expected, sc)


@pytest.mark.parametrize("op", [operator.neg, operator.pos, abs, operator.invert], ids=lambda f: f.__name__)
def test_unary_operators(op):
    dtype = np.int64 if op is operator.invert else np.float64
    sc = random_scene(4, dtype=dtype)
    _check(op(sc.build()), op(sc.data), sc)


def test_comparisons_give_boolean_and_ge_is_not_gt():
    sc = random_scene(5, dtype=np.int64)
    S = sc.build()
    ge = S >= 0
    assert ge.dtype == bool
    _check(ge, sc.data >= 0, sc)
    assert (ge.todense() != (S > 0).todense()).any()  # ties exist, so >= differs from >


def test_subtract_order_and_reflected_operators():
    sc = random_scene(6)
    S = sc.build()
    _check(np.subtract(S, 1), sc.data - 1, sc)
    _check(np.subtract(1, S), 1 - sc.data, sc)
    _check(3.0 / S.with_data(sc.data + 5), 3.0 / (sc.data + 5), sc)
    v = np.arange(1, sc.data.shape[2] + 1, dtype=float)
    _check(v - S, v - sc.data, sc)


def test_off_stamp_stays_zero_unlike_sparse_coo():
    sc = random_scene(8)
    S = sc.build()
    E = np.exp(S)
    dense = E.todense()
    covered = sc.dense(np.ones_like(sc.data)) > 0
    assert np.all(dense[~covered] == 0)
    assert E.to_sparse().fill_value == 0
    assert np.exp(S.to_sparse()).fill_value == 1  # what plain sparse.COO does


def test_float32_stays_float32():
    sc = random_scene(9, dtype=np.float32)
    S = sc.build()
    assert (S * 2.0).dtype == np.float32
    assert np.exp(S).dtype == np.float32
    assert (S + np.float32(1)).dtype == np.float32
    assert (S + np.ones(sc.data.shape[2], dtype=np.float32)).dtype == np.float32
    assert (S + np.ones(sc.data.shape[2])).dtype == np.float64  # NumPy's rule for arrays


def test_ldexp_and_frexp_mixed_dtype_ufuncs():
    sc = random_scene(13)
    S = sc.build()
    exps = np.arange(sc.data.shape[2], dtype=np.int32)
    _check(np.ldexp(S, exps), np.ldexp(sc.data, exps), sc)
    _check(np.frexp(S), np.frexp(sc.data), sc)


def test_multiple_output_ufuncs():
    sc = random_scene(10)
    frac, whole = np.modf(sc.build())
    _check((frac, whole), np.modf(sc.data), sc)


def test_structure_mismatch_and_bad_shapes_are_clear():
    a = random_scene(1)
    b = random_scene(2)
    A, B = a.build(), b.build()
    with pytest.raises(ValueError, match="different stamp structures"):
        A + B
    with pytest.raises(ValueError, match="does not broadcast against the array's logical shape"):
        A + np.ones(a.data.shape[2] + 1)
    with pytest.raises(ValueError, match="with_data"):
        A + np.ones(a.data.shape)  # stamp-shaped: ambiguous, pointed at with_data
    with pytest.raises(TypeError, match="COO"):
        A + A.to_sparse()


def test_out_where_and_other_methods_are_refused():
    S = random_scene(3).build()
    with pytest.raises(TypeError, match="immutable"):
        np.exp(S, out=S)
    with pytest.raises(TypeError, match="where"):
        np.add(S, 1, where=True * np.ones(S.shape[2], bool))
    with pytest.raises(TypeError, match="accumulate"):
        np.add.accumulate(S)
    with pytest.raises(TypeError, match="outer"):
        np.multiply.outer(S, np.ones(2))


def test_dtype_keyword_is_honoured():
    sc = random_scene(12)
    _check(np.add(sc.build(), 1, dtype=np.float32), np.add(sc.data, 1, dtype=np.float32), sc)


@pytest.mark.parametrize("dtype", [bool, np.float64, np.int64])
@pytest.mark.parametrize("negate", [np.logical_not, operator.invert], ids=["logical_not", "invert"])
def test_negating_a_mask_negates_its_implicit_zeros(dtype, negate):
    sc = random_scene(8, dtype=dtype, imcorner=(-2, 3))
    S, dense = sc.build(), sc.dense()
    if negate is operator.invert and dtype is np.float64:
        with pytest.raises(TypeError):  # NumPy has no invert for floats
            ~S
        return
    if negate is operator.invert and dtype is not bool:
        _check(~S, ~sc.data, sc)  # bitwise on numbers: stamp semantics, like np.negative
        return
    result = negate(S)
    assert result.dtype == bool and result.fill_value  # a sparse.COO that is True off the stamps
    assert pickle.loads(pickle.dumps(result)).fill_value  # picklable (Dask ships it)
    np.testing.assert_array_equal(result.todense(), np.logical_not(dense))
    assert int(np.sum(result)) == int(np.logical_not(dense).sum())


def test_integer_power_error_only_from_array_contents():
    # an off-image stamp pixel holds a negative exponent: it is not array content, so it must
    # not make the operation fail; the contents are computed as NumPy does
    data = np.array([[[2], [3]], [[-1], [2]]])
    row = np.array([[[0], [0]], [[-5], [1]]])  # the -1 sits off the image
    col = np.array([[[0], [1]], [[0], [1]]])
    E = Sparse3D(data, row, col, (2, 2))
    result = np.power(2, E)
    np.testing.assert_array_equal(result.todense()[:, :, 0], [[4, 8], [0, 4]])
    with pytest.raises(ValueError, match="negative integer powers"):  # content: NumPy's error
        np.power(2, E.translate((5, 0)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128, np.int64])
def test_power_operator_follows_numpy_arrays(dtype):
    """``S ** 2`` is NumPy's ``a ** 2`` (``np.square`` for float/complex: other bits than
    ``np.power`` for complex), while ``np.power(S, 2)`` stays ``np.power``."""
    sc = random_scene(11, dtype=dtype, nsources=30)
    S, v = sc.build(), sc.data
    for got, ref in ((S**2, v**2), (np.power(S, 2), np.power(v, 2)), (S**3, v**3), (S**2.0, v**2.0)):
        assert got.dtype == ref.dtype
        np.testing.assert_array_equal(got.data.view(np.uint8), ref.view(np.uint8))
    x = S
    x **= 2  # rebinds through the same operator
    np.testing.assert_array_equal(x.data.view(np.uint8), (v**2).view(np.uint8))


def test_power_operator_warns_as_numpy_does():
    sc = random_scene(2, nsources=10, zeros=False)
    S, v = sc.build() * 1e200, sc.data * 1e200
    for op in (lambda a: a**2, lambda a: np.power(a, 2)):
        with pytest.warns(RuntimeWarning) as got:
            op(S)
        with pytest.warns(RuntimeWarning) as ref:
            op(v)
        assert [str(w.message) for w in got] == [str(w.message) for w in ref]
    with np.errstate(over="raise"), pytest.raises(FloatingPointError, match="square"):
        S**2


@pytest.mark.parametrize(
    "dtype", [np.float64, np.float32, np.float16, np.int64, np.int8, np.uint16, bool, complex]
)
@pytest.mark.parametrize(
    "one",
    [1, 1.0, True, np.float64(1), np.float32(1), np.int8(1), np.array(1.0), np.array([1.0]), 1 + 0j, 1.5],
    ids=repr,
)
@pytest.mark.parametrize("form", ["S*one", "one*S", "S/one"])
def test_products_with_one_follow_numpy_bit_for_bit(dtype, one, form):
    """``S * 1`` / ``1 * S`` / ``S / 1`` share S's values when that is exact: the result must be
    NumPy's, bit for bit and dtype for dtype, whatever the operand and dtype (NaN, inf, -0.0
    among the values); the shortcut must never apply to complex values or change a dtype."""
    sc = random_scene(5, dtype=np.dtype(dtype), nsources=12)
    v = sc.data.copy()
    if v.dtype.kind == "f":
        v.flat[:4] = [np.nan, np.inf, -np.inf, -0.0]
    elif v.dtype.kind == "c":
        v.flat[:2] = [complex(np.inf, 1.0), complex(1.0, np.inf)]
    S = type(sc)(v, sc.row, sc.col, sc.imshape, sc.imcorner).build()
    with np.errstate(all="ignore"):
        ref = eval(form, {}, {"S": v, "one": one})
        got = eval(form, {}, {"S": S, "one": one})
    assert got.dtype == ref.dtype
    np.testing.assert_array_equal(got.data.view(np.uint8), np.ascontiguousarray(ref).view(np.uint8))
    shared = np.shares_memory(got._values, S._values)
    real_one = (
        not isinstance(one, (bool, complex)) and np.ndim(one) == 0 and np.asarray(one).dtype.kind in "fiu"
    )
    exact = np.dtype(dtype).kind in "fiu" and real_one and one == 1 and ref.dtype == v.dtype
    assert shared == exact
