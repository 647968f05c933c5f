"""Bad input: every case of one table raises the documented error type and message.

The table ``CASES`` is the single source of ``docs/errors.md``: ``test_docs_table_is_current``
fails when the doc and the table disagree; regenerate the doc with

    PYTHONPATH=. python tests/test_bad_input.py
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import sparse3d
from sparse3d import DenseAllocationError, Sparse3D

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@dataclass(frozen=True)
class Case:
    id: str
    input: str  # what the doc shows in the "input" column
    call: object  # a no-argument callable that must raise
    error: type
    fragment: str  # part of the message; names the offending argument


def _astropy_quantity(value, unit):
    import astropy.units as u

    return value * u.Unit(unit)


def _S(imshape=(10, 10), nsources=2, **kw):
    R, C = np.mgrid[:3, :3]
    row = R[:, :, None] + np.arange(2, 2 + 3 * nsources, 3)
    col = C[:, :, None] + np.arange(2, 2 + 3 * nsources, 3)
    return Sparse3D(np.ones((3, 3, nsources)), row, col, imshape, **kw)


def _other_structure():
    S = _S()
    return Sparse3D(np.ones(S.stamp_shape), S.row + 1, S.col, S.imshape)


def _prepare(**kw):
    from sparse3d.fit import prepare_normal_equations

    return prepare_normal_equations(_S(), imshape=(10, 10), **kw)


def _huge():
    return _S(imshape=(60000, 60000))


ONE = np.ones((1, 1, 1))


def _thread_count_from_env(value):
    """The thread count a large many-frame fit reads, with ``SPARSE3D_NUM_THREADS=value``."""
    import os

    from sparse3d import _threads

    old = os.environ.get(_threads.ENV_VAR)
    os.environ[_threads.ENV_VAR] = value
    try:
        with sparse3d.set_options(num_threads=0):
            return _threads.num_threads()
    finally:
        if old is None:
            del os.environ[_threads.ENV_VAR]
        else:
            os.environ[_threads.ENV_VAR] = old


CASES = [
    # ---- construction -----------------------------------------------------------------
    Case(
        "row-repeated-pixel",
        "`row`/`col` that put two pixels of one stamp on the same position",
        lambda: Sparse3D(np.ones((2, 1, 1)), [[[3]], [[3]]], 4, (5, 5)),
        ValueError,
        "row/col: stamp 0 covers pixel (3, 4) more than once",
    ),
    Case(
        "row-huge",
        "`row=np.uint64(2**63)` (or `1e19`)",
        lambda: Sparse3D(ONE, np.uint64(2**63), 0, (5, 5)),
        ValueError,
        "row holds the position 9223372036854775808, beyond the supported range |position| <= 2**61",
    ),
    Case(
        "imshape-huge",
        "`imshape=(2**33, 2**33)`",
        lambda: Sparse3D(ONE, 0, 0, (2**33, 2**33)),
        ValueError,
        "above the supported 2**62",
    ),
    Case(
        "imcorner-huge",
        "`imcorner=(2**61, 0)`",
        lambda: Sparse3D(ONE, 0, 0, (5, 5), imcorner=(2**61, 0)),
        ValueError,
        "imcorner + imshape holds the position",
    ),
    Case(
        "translate-huge",
        "`S.translate((2**62, 0))`",
        lambda: _S().translate((2**62, 0)),
        ValueError,
        "row translated by 4611686018427387904 holds the position",
    ),
    Case(
        "data-longdouble",
        "`data` of dtype `np.longdouble` (or `S.astype(np.longdouble)`)",
        lambda: Sparse3D(ONE.astype(np.longdouble), 0, 0, (5, 5)),
        TypeError,
        "(long double) is not supported",
    ),
    Case(
        "data-2d",
        "`Sparse3D(np.ones((3, 3)), ...)`",
        lambda: Sparse3D(np.ones((3, 3)), 0, 0, (5, 5)),
        ValueError,
        "data must be 3-D",
    ),
    Case(
        "data-ragged",
        "`Sparse3D([[[1, 2]], [[1]]], ...)` (ragged)",
        lambda: Sparse3D([[[1, 2]], [[1]]], 0, 0, (5, 5)),
        ValueError,
        "data must be a regular",
    ),
    Case(
        "data-strings",
        "`data` of strings or objects",
        lambda: Sparse3D(np.array([[["a"]]]), 0, 0, (5, 5)),
        TypeError,
        "data must be a numeric",
    ),
    Case(
        "row-fractional",
        "`row=0.5`",
        lambda: Sparse3D(ONE, 0.5, 0, (5, 5)),
        ValueError,
        "row must hold integer pixel positions",
    ),
    Case(
        "col-bool",
        "`col=True` (bool positions)",
        lambda: Sparse3D(ONE, 0, True, (5, 5)),
        TypeError,
        "col must hold integer pixel positions",
    ),
    Case(
        "row-strings",
        '`row="a"`',
        lambda: Sparse3D(ONE, "a", 0, (5, 5)),
        TypeError,
        "row must hold integer pixel positions",
    ),
    Case(
        "row-ragged",
        "`row` ragged nested lists",
        lambda: Sparse3D(np.ones((2, 1, 1)), [[1, 2], [1]], 0, (5, 5)),
        ValueError,
        "row must be a regular",
    ),
    Case(
        "row-nan",
        "`row=np.nan`",
        lambda: Sparse3D(ONE, np.nan, 0, (5, 5)),
        ValueError,
        "row must hold finite pixel positions",
    ),
    Case(
        "col-inf",
        "`col=np.inf`",
        lambda: Sparse3D(ONE, 0, np.inf, (5, 5)),
        ValueError,
        "col must hold finite pixel positions",
    ),
    Case(
        "row-broadcast",
        "`row` of shape (3, 3, 5) for 2 sources",
        lambda: Sparse3D(np.ones((3, 3, 2)), np.zeros((3, 3, 5)), 0, (5, 5)),
        ValueError,
        "row with shape (3, 3, 5) does not broadcast",
    ),
    Case(
        "col-broadcast",
        "`col` of shape (4,) for stamps (3, 3, 2)",
        lambda: Sparse3D(np.ones((3, 3, 2)), 0, np.zeros(4), (5, 5)),
        ValueError,
        "col with shape (4,) does not",
    ),
    Case(
        "imshape-zero",
        "`imshape=(0, 5)`",
        lambda: Sparse3D(ONE, 0, 0, (0, 5)),
        ValueError,
        "imshape must be two positive integers",
    ),
    Case(
        "imshape-negative",
        "`imshape=(-1, 5)`",
        lambda: Sparse3D(ONE, 0, 0, (-1, 5)),
        ValueError,
        "imshape must be two positive integers",
    ),
    Case(
        "imshape-fractional",
        "`imshape=(2.5, 5)`",
        lambda: Sparse3D(ONE, 0, 0, (2.5, 5)),
        ValueError,
        "imshape must be two positive integers; got non-integer",
    ),
    Case("imshape-scalar", "`imshape=5`", lambda: Sparse3D(ONE, 0, 0, 5), TypeError, "imshape must be"),
    Case(
        "imshape-three",
        "`imshape=(5, 5, 5)`",
        lambda: Sparse3D(ONE, 0, 0, (5, 5, 5)),
        ValueError,
        "imshape must be two positive integers; got 3 values",
    ),
    Case(
        "imcorner-fractional",
        "`imcorner=(1.5, 0)`",
        lambda: Sparse3D(ONE, 0, 0, (5, 5), (1.5, 0)),
        ValueError,
        "imcorner must be two integers",
    ),
    Case(
        "with-data-shape",
        "`S.with_data(values)` of another shape",
        lambda: _S().with_data(np.ones((2, 2, 2))),
        ValueError,
        "data must have the stamp shape",
    ),
    Case(
        "translate-fractional",
        "`S.translate((0.5, 0))`",
        lambda: _S().translate((0.5, 0)),
        ValueError,
        "position must be two integers",
    ),
    # ---- products ---------------------------------------------------------------------
    Case(
        "dot-length",
        "`S.dot(w)` with `len(w) != nsources`",
        lambda: _S().dot(np.ones(3)),
        ValueError,
        "weights must have length nsources=2",
    ),
    Case(
        "dot-2d-length",
        "`S.dot(w)` with `w.shape = (3, 2)`",
        lambda: _S().dot(np.ones((3, 2))),
        ValueError,
        "weights must have length nsources=2",
    ),
    Case(
        "dot-3d",
        "`S.dot(w)` with 3-D `w`",
        lambda: _S().dot(np.ones((2, 2, 2))),
        ValueError,
        "weights must be (nsources,) or (nsources, k)",
    ),
    Case("dot-sparse3d", "`S.dot(S)`", lambda: _S().dot(_S()), TypeError, "product of two Sparse3D"),
    Case(
        "dot-object",
        "`S.dot(w)` with an object array",
        lambda: _S().dot(np.array([None, 1])),
        TypeError,
        "weights must be numeric",
    ),
    Case("matmul-scalar", "`S @ 2`", lambda: _S() @ 2, ValueError, "scalar operand is not allowed"),
    Case(
        "tensordot-image",
        "`np.tensordot(S, image, axes=([0, 1], [0, 1]))`, wrong image shape",
        lambda: np.tensordot(_S(), np.ones((3, 3)), axes=([0, 1], [0, 1])),
        ValueError,
        "image axes have shape (3, 3), expected imshape (10, 10)",
    ),
    Case(
        "tensordot-axis",
        "`np.tensordot(S, w, axes=([5], [0]))`",
        lambda: np.tensordot(_S(), np.ones(2), axes=([5], [0])),
        np.exceptions.AxisError,
        "axis 5 is out of bounds for array of dimension 3",
    ),
    Case(
        "roi-corner-huge",
        "`S.roi([(2**62, 0)], (2, 2))`",
        lambda: _S().roi([(2**62, 0)], (2, 2)),
        ValueError,
        "corners holds the position 4611686018427387904",
    ),
    # ---- elementwise --------------------------------------------------------------------
    Case(
        "structure-mismatch",
        "`S1 + S2` with different stamps",
        lambda: _S() + _other_structure(),
        ValueError,
        "operands have different stamp structures",
    ),
    Case(
        "operand-shape",
        "`S + x` with `x.shape` not broadcasting to `(H, W, n)`",
        lambda: _S() + np.ones((3, 3, 2)),
        ValueError,
        "operand 1 of np.add with shape (3, 3, 2)",
    ),
    Case(
        "operand-sparse",
        "`S + scipy_matrix`",
        lambda: _S() + _S().tocsr(),
        TypeError,
        "operand 1 of np.add of type csr_matrix",
    ),
    Case(
        "operand-fraction",
        "`S + Fraction(1, 3)` (or a `Decimal`)",
        lambda: _S() + __import__("fractions").Fraction(1, 3),
        TypeError,
        "operand 1 of np.add is a Fraction",
    ),
    Case(
        "where-nan-fill",
        "`np.where(S > 0, S, np.nan)`",
        lambda: np.where(_S() > 0, _S(), np.nan),
        ValueError,
        "would be NaN on every off-stamp element",
    ),
    # ---- NumPy protocol -----------------------------------------------------------------
    Case(
        "reduce-empty-axes-initial",
        "`np.add.reduce(S, axis=(), initial=5)`",
        lambda: np.add.reduce(_S(), axis=(), initial=5.0),
        ValueError,
        "would be non-zero on every off-stamp element",
    ),
    Case(
        "concatenate-axis-range",
        "`np.concatenate([S, S], axis=5)`",
        lambda: np.concatenate([_S(), _S()], axis=5),
        np.exceptions.AxisError,
        "axis 5 is out of bounds for array of dimension 3",
    ),
    Case(
        "stack-shapes",
        "`np.stack([S1, S2])` with different shapes",
        lambda: np.stack([_S(), _S(nsources=3)]),
        ValueError,
        "np.stack: all input arrays must have the same shape",
    ),
    Case(
        "index-mask-shape",
        "`S[mask]` with a boolean mask not matching the indexed axes",
        lambda: _S()[np.ones((3, 3), bool)],
        IndexError,
        "boolean index of shape (3, 3) does not match the indexed axes (0, 1)",
    ),
    Case(
        "unsupported-function",
        "`np.sort(S)`",
        lambda: np.sort(_S()),
        TypeError,
        "numpy.sort is not supported on Sparse3D",
    ),
    Case(
        "implicit-dense",
        "`np.asarray(S)`",
        lambda: np.asarray(_S()),
        TypeError,
        "will not be converted to a dense ndarray implicitly",
    ),
    Case(
        "ufunc-method",
        "`np.add.accumulate(S)`",
        lambda: np.add.accumulate(_S()),
        TypeError,
        "np.add.accumulate is not supported",
    ),
    Case(
        "ufunc-out",
        "`np.add(S, 1, out=x)`",
        lambda: np.add(_S(), 1, out=np.zeros(3)),
        TypeError,
        "np.add(..., out=...) is not supported",
    ),
    Case(
        "ufunc-where",
        "`np.add(S, 1, where=mask)`",
        lambda: np.add(_S(), 1, where=np.zeros(2, bool)),
        TypeError,
        "np.add(..., where=...) is not supported",
    ),
    Case(
        "sum-out",
        "`np.sum(S, out=x)`",
        lambda: np.sum(_S(), out=np.zeros(3)),
        TypeError,
        "np.sum(..., out=...) is not supported",
    ),
    Case(
        "dot-out",
        "`np.dot(S, w, out=x)`",
        lambda: np.dot(_S(), np.ones(2), out=np.zeros((10, 10))),
        TypeError,
        "np.dot(..., out=...) is not supported",
    ),
    Case(
        "concatenate-axis",
        "`np.concatenate([S, S], axis=0)`",
        lambda: np.concatenate([_S(), _S()], axis=0),
        ValueError,
        "can only be concatenated along the source axis (axis=2 or -1); got axis=0",
    ),
    Case(
        "source-index",
        "`S[:, :, 5]` with 2 sources",
        lambda: _S()[:, :, 5],
        IndexError,
        "index 5 is out of bounds for axis 2",
    ),
    Case(
        "source-mask",
        "`S[:, :, mask]`, mask of the wrong length",
        lambda: _S()[:, :, np.array([True])],
        IndexError,
        "boolean index",
    ),
    Case("hash", "`hash(S)`", lambda: hash(_S()), TypeError, "unhashable type: 'Sparse3D'"),
    Case("truth", "`bool(S)`, `if S:`", lambda: bool(_S()), ValueError, "truth value of a Sparse3D"),
    Case("iterate", "`for x in S`", lambda: iter(_S()), TypeError, "Sparse3D is not iterable"),
    Case("mutate", "`S.data[...] = v`", lambda: _S().data.__setitem__(0, 1), ValueError, "read-only"),
    # ---- memory -------------------------------------------------------------------------
    Case(
        "todense-huge",
        "`S.todense()`, 60000 x 60000 image",
        lambda: _huge().todense(),
        DenseAllocationError,
        "todense() of a (60000, 60000, 2) array would allocate 53.6 GiB",
    ),
    Case(
        "dot-huge",
        "`S.dot(w)`, 60000 x 60000 image",
        lambda: _huge().dot(np.ones(2)),
        DenseAllocationError,
        "an image of shape (60000, 60000) would allocate 26.8 GiB",
    ),
    Case(
        "tocsr-huge",
        "`S.tocsr()`, 60000 x 60000 image",
        lambda: _huge().tocsr(),
        DenseAllocationError,
        "the CSR row pointer of an image with 3600000000 pixels would allocate",
    ),
    Case(
        "sum-huge",
        "`np.sum(S, axis=2)`, 60000 x 60000 image",
        lambda: np.sum(_huge(), axis=2),
        DenseAllocationError,
        "an image of shape (60000, 60000) would allocate",
    ),
    Case(
        "options-unknown",
        "`sparse3d.set_options(foo=1)`",
        lambda: sparse3d.set_options(foo=1),
        TypeError,
        "set_options() got an unexpected keyword argument 'foo'",
    ),
    Case(
        "options-negative",
        "`sparse3d.set_options(max_dense_bytes=-1)`",
        lambda: sparse3d.set_options(max_dense_bytes=-1),
        ValueError,
        "max_dense_bytes must be a non-negative",
    ),
    Case(
        "options-pool",
        "`sparse3d.set_options(buffer_pool_bytes=1.5)`",
        lambda: sparse3d.set_options(buffer_pool_bytes=1.5),
        ValueError,
        "buffer_pool_bytes must be a non-negative int; got 1.5",
    ),
    Case(
        "options-threads",
        "`sparse3d.set_options(num_threads=2.5)`",
        lambda: sparse3d.set_options(num_threads=2.5),
        ValueError,
        "num_threads must be a non-negative int; got 2.5",
    ),
    Case(
        "threads-env",
        "environment `SPARSE3D_NUM_THREADS=two`, then a large many-frame fit",
        lambda: _thread_count_from_env("two"),
        ValueError,
        "the environment variable SPARSE3D_NUM_THREADS must be a positive integer, got 'two'",
    ),
]

if importlib.util.find_spec("sparse3d.xarray") is not None and importlib.util.find_spec("xarray") is not None:
    CASES += [
        Case(
            "xarray-view",
            '`S.to_xarray(view="foo")`',
            lambda: _S().to_xarray(view="foo"),
            ValueError,
            "view must be 'image' or 'stamps'",
        ),
        Case(
            "xarray-sources",
            "`S.to_xarray(sources=labels)`, wrong length",
            lambda: _S().to_xarray(sources=[1]),
            ValueError,
            "sources must have one label per source",
        ),
        Case(
            "xarray-not-dataarray",
            "`Sparse3D.from_xarray(ndarray)`",
            lambda: Sparse3D.from_xarray(np.ones(3)),
            TypeError,
            "from_xarray needs an xarray.DataArray",
        ),
        Case(
            "xarray-dims",
            "`Sparse3D.from_xarray(da)`, a dim renamed",
            lambda: Sparse3D.from_xarray(_S().to_xarray(view="stamps").rename(stamp_row="y")),
            ValueError,
            "from_xarray needs a stamp view with dims",
        ),
        Case(
            "xarray-coords",
            "`Sparse3D.from_xarray(da)`, `row` coordinate dropped",
            lambda: Sparse3D.from_xarray(_S().to_xarray(view="stamps").drop_vars("row")),
            ValueError,
            "lacks the coordinate(s) ['row']",
        ),
        Case(
            "xarray-attrs",
            "`Sparse3D.from_xarray(da)`, `imshape` attribute dropped",
            lambda: Sparse3D.from_xarray(_without_attr(_S().to_xarray(view="stamps"), "imshape")),
            ValueError,
            "lacks the attribute(s) ['imshape']",
        ),
        Case(
            "xarray-fractional-attrs",
            "`Sparse3D.from_xarray(da)`, `imshape` attribute `[10.5, 10]`",
            lambda: Sparse3D.from_xarray(_with_attr(_S().to_xarray(view="stamps"), "imshape", [10.5, 10])),
            ValueError,
            "the imshape attribute must be two positive integers; got non-integer 10.5",
        ),
        Case(
            "xarray-where-nan",
            "`da.where(da > 0)` on an image view (NaN fill off the stamps)",
            lambda: (lambda da: da.where(da > 0))(_S().to_xarray()),
            ValueError,
            "with NaN in the branch that off-stamp elements take",
        ),
    ]


def _without_attr(da, name):
    da = da.copy()
    del da.attrs[name]
    return da


def _with_attr(da, name, value):
    da = da.copy()
    da.attrs[name] = value
    return da


if importlib.util.find_spec("sparse3d.fit") is not None:

    def _twins():
        S = _S()
        return Sparse3D(S.data, S.row[:, :, [0, 0]], S.col[:, :, [0, 0]], S.imshape)

    def _singular_error():
        from sparse3d.fit import SingularNormalMatrixError

        return SingularNormalMatrixError

    CASES += [
        Case(
            "fit-data-shape",
            "`S.fit(data)`, data not `(H, W)`",
            lambda: _S().fit(np.ones((3, 3))),
            ValueError,
            "data must have shape (H, W) = (10, 10)",
        ),
        Case(
            "fit-errors",
            "`S.fit(data, errors=e)` with `e <= 0`",
            lambda: _S().fit(np.ones((10, 10)), errors=-np.ones((10, 10))),
            ValueError,
            "errors must be positive",
        ),
        Case(
            "fit-mask",
            "`S.fit(data, mask=m)`, wrong shape",
            lambda: _S().fit(np.ones((10, 10)), mask=np.ones((3, 3), bool)),
            ValueError,
            "mask must have shape",
        ),
        Case(
            "fit-prior",
            "`S.fit(data, prior_mu=mu)` without `prior_sigma`",
            lambda: _S().fit(np.ones((10, 10)), prior_mu=[1, 1]),
            ValueError,
            "prior_mu requires prior_sigma",
        ),
        Case(
            "fit-return-errors",
            "`fit_design(A, data, return_errors='no')` (anything but True or False)",
            lambda: _no_errors_fit(return_errors="no"),
            TypeError,
            "return_errors must be True or False, got 'no'",
        ),
        Case(
            "fit-singular",
            "`S.fit(data)`, two identical sources, no prior",
            lambda: _twins().fit(np.ones((10, 10))),
            _singular_error(),
            "source(s) [0] are linearly dependent on the other parameters",
        ),
        Case(
            "fit-complex-data",
            "`S.fit(data)`, complex `data`",
            lambda: _S().fit(np.ones((10, 10)) * (1 + 1j)),
            TypeError,
            "data must be real; got complex dtype complex128",
        ),
        Case(
            "fit-complex-design",
            "`S.fit(data)`, complex stamp values",
            lambda: (_S() * 1j).fit(np.ones((10, 10))),
            TypeError,
            "A must be real; got complex dtype complex128",
        ),
        Case(
            "fit-complex-errors",
            "`S.fit(data, errors=e)`, complex `e`",
            lambda: _S().fit(np.ones((10, 10)), errors=np.ones((10, 10)) * (1 + 1j)),
            TypeError,
            "errors must be real",
        ),
        Case(
            "fit-solver",
            "`fit_design(A, data, imshape=..., solver='cholmod')` without `cvxopt`",
            lambda: _missing_solver(),
            ValueError,
            "solver='cholmod' needs the optional dependency cvxopt (GPL-3.0-or-later)",
        ),
        Case(
            "normal-reuse",
            "`prepare_normal_equations(A, imshape=..., reuse=fit_result)` (not a NormalEquations)",
            lambda: _prepare(reuse="previous"),
            ValueError,
            "reuse must be None, True or the NormalEquations of a previous call, got str",
        ),
        Case(
            "normal-solve-rhs-shape",
            "`ne.solve_rhs(b)`, `b` neither `(n_params,)` nor `(n_free,)` long",
            lambda: _prepare().solve_rhs(np.ones(5)),
            ValueError,
            "b must have shape (n_params,) = (2,) or (n_free,) = (2,)",
        ),
    ]

    # ---- the fit on real data: background, masks, uncertainties, units, diagnostics ----------
    def _img():
        return np.ones((10, 10))

    def _duck_nddata(unc_type="std", unit=None, unc_unit=None):
        unc = types.SimpleNamespace(array=np.ones((10, 10)), uncertainty_type=unc_type, unit=unc_unit)
        return types.SimpleNamespace(data=_img(), mask=None, unit=unit, uncertainty=unc)

    def _stack_fit(**kw):
        rng = np.random.default_rng(0)
        return _S().fit(rng.normal(size=(10, 10, 2)), errors=rng.uniform(1, 2, (10, 10, 2)), **kw)

    def _no_errors_fit(return_errors=False):
        from sparse3d.fit import fit_design

        return fit_design(_S(), _img(), imshape=(10, 10), return_errors=return_errors)

    def _polynomial(*args, **kw):
        from sparse3d.fit import Polynomial

        return Polynomial(*args, **kw)

    def _grid(*args, **kw):
        from sparse3d.fit import BilinearGrid

        return BilinearGrid(*args, **kw)

    CASES += [
        Case(
            "fit-background-spec",
            '`S.fit(data, background="sky")`',
            lambda: _S().fit(_img(), background="sky"),
            ValueError,
            "background must be None, 'constant', 'plane', ('poly', order)",
        ),
        Case(
            "fit-background-order",
            '`Polynomial(order=-1)` (or `background=("poly", -1)`)',
            lambda: _polynomial(-1),
            ValueError,
            "background polynomial order must be an int >= 0",
        ),
        Case(
            "fit-background-tile",
            "`BilinearGrid(tile=0)`",
            lambda: _grid(0),
            ValueError,
            "background tile must be an int or a pair of ints >= 1",
        ),
        Case(
            "fit-background-prior",
            "`Polynomial(1, prior_mu=1)` without `prior_sigma`",
            lambda: _polynomial(1, prior_mu=1.0),
            ValueError,
            "background prior_mu requires prior_sigma",
        ),
        Case(
            "fit-background-prior-shape",
            "`S.fit(data, background=Polynomial(1, prior_sigma=[1, 2]))` (3 coefficients)",
            lambda: _S().fit(_img(), background=_polynomial(1, prior_sigma=[1.0, 2.0])),
            ValueError,
            "background prior_sigma must be a scalar or have shape (ncoefficients,) = (3,)",
        ),
        Case(
            "fit-masks-incompatible",
            "`S.fit(masked_stack, mask=m)`, masks of different frame counts",
            lambda: _S().fit(
                np.ma.MaskedArray(np.ones((10, 10, 2)), mask=False),
                mask=np.zeros((10, 10, 3), bool),
            ),
            ValueError,
            "have incompatible shapes (10, 10, 3) and (10, 10, 2)",
        ),
        Case(
            "fit-dq-shape",
            "`S.fit(stack, dq=dq, bad_bits=1)`, `dq` neither `(H, W)` nor the stack's shape",
            lambda: _S().fit(np.ones((10, 10, 2)), dq=np.zeros((10, 10, 3), int), bad_bits=1),
            ValueError,
            "dq must have shape (H, W) = (10, 10) or the shape of data (10, 10, 2), got (10, 10, 3)",
        ),
        Case(
            "fit-errors-inf-shape",
            "`S.fit(data, errors=e)`, `e` of the wrong shape holding `np.inf`",
            lambda: _S().fit(_img(), errors=np.full((3, 3), np.inf)),
            ValueError,
            "errors must have shape (H, W) = (10, 10), got (3, 3)",
        ),
        Case(
            "fit-errors-bool",
            "`S.fit(data, errors=m)`, `m` boolean (a mask passed as errors)",
            lambda: _S().fit(_img(), errors=np.ones((10, 10), bool)),
            TypeError,
            "errors must hold real numbers (1-sigma uncertainties), got a boolean array",
        ),
        Case(
            "fit-saturation-nan",
            "`S.fit(data, saturation=np.nan)`",
            lambda: _S().fit(_img(), saturation=np.nan),
            ValueError,
            "saturation must not be NaN",
        ),
        Case(
            "fit-covariance-no-errors",
            "`fit_design(..., return_errors=False).covariance()`",
            lambda: _no_errors_fit().covariance(),
            ValueError,
            "covariance() needs the factorisation: fit with return_errors=True",
        ),
        Case(
            "fit-mask-dq-like",
            "`S.fit(data, mask=m)`, `m` integers other than 0/1",
            lambda: _S().fit(_img(), mask=np.full((10, 10), 4)),
            ValueError,
            "look like a data-quality bitmask: pass it as dq=array with bad_bits=",
        ),
        Case(
            "fit-mask-dtype",
            "`S.fit(data, mask=m)`, `m` float",
            lambda: _S().fit(_img(), mask=np.zeros((10, 10))),
            ValueError,
            "mask must be a boolean array",
        ),
        Case(
            "fit-mask-frames",
            "`S.fit(image, mask=m)`, `m` of shape `(H, W, k)` for one image",
            lambda: _S().fit(_img(), mask=np.zeros((10, 10, 3), bool)),
            ValueError,
            "mask must have shape (H, W) = (10, 10)",
        ),
        Case(
            "fit-dq-without-bits",
            "`S.fit(data, dq=dq)` without `bad_bits`",
            lambda: _S().fit(_img(), dq=np.zeros((10, 10), int)),
            ValueError,
            "dq requires bad_bits",
        ),
        Case(
            "fit-bits-without-dq",
            "`S.fit(data, bad_bits=4)` without `dq`",
            lambda: _S().fit(_img(), bad_bits=4),
            ValueError,
            "bad_bits requires dq",
        ),
        Case(
            "fit-dq-dtype",
            "`S.fit(data, dq=dq, bad_bits=1)`, `dq` float",
            lambda: _S().fit(_img(), dq=np.zeros((10, 10)), bad_bits=1),
            ValueError,
            "dq must be an integer data-quality array",
        ),
        Case(
            "fit-bad-bits",
            "`S.fit(data, dq=dq, bad_bits=0)`",
            lambda: _S().fit(_img(), dq=np.zeros((10, 10), int), bad_bits=0),
            ValueError,
            "bad_bits must be a positive int",
        ),
        Case(
            "fit-errors-twice",
            "`S.fit(nddata, errors=e)`, `nddata.uncertainty` set too",
            lambda: _S().fit(_duck_nddata(), errors=_img()),
            ValueError,
            "errors given twice",
        ),
        Case(
            "fit-uncertainty-type",
            "`S.fit(nddata)`, `nddata.uncertainty.uncertainty_type` not std/var/ivar",
            lambda: _S().fit(_duck_nddata("mad")),
            ValueError,
            "uncertainty_type 'std', 'var' or 'ivar'",
        ),
        Case(
            "fit-uncertainty-unit",
            "`S.fit(nddata)`, uncertainty has a unit but data has none",
            lambda: _S().fit(_duck_nddata(unc_unit="adu")),
            ValueError,
            "data.uncertainty has unit adu but data has no unit",
        ),
        Case(
            "fit-saturation",
            '`S.fit(data, saturation="high")`',
            lambda: _S().fit(_img(), saturation="high"),
            ValueError,
            "saturation must be a real number",
        ),
        Case(
            "fit-covariance-frame",
            "`res.covariance()` of a stack fitted with several normal matrices",
            lambda: _stack_fit().covariance(),
            ValueError,
            "pass frame= to covariance()",
        ),
        Case(
            "fit-covariance-frame-range",
            "`res.covariance(frame=5)` of a 2-frame stack",
            lambda: _stack_fit().covariance(frame=5),
            ValueError,
            "frame must be in [0, 2)",
        ),
        Case(
            "fit-covariance-frame-type",
            '`res.covariance(frame="0")` of a 2-frame stack',
            lambda: _stack_fit().covariance(frame="0"),
            ValueError,
            "frame must be in [0, 2) (an int), got '0'",
        ),
        Case(
            "fit-solver-missing-qdldl",
            "`fit_design(A, data, imshape=..., solver='qdldl')` without `qdldl` installed",
            lambda: _missing_qdldl(),
            ValueError,
            "solver='qdldl' needs the package qdldl (a dependency of sparse3d): pip install qdldl",
        ),
        Case(
            "fit-blended-threshold",
            "`res.blended(threshold=1.5)`",
            lambda: _S().fit(_img()).blended(1.5),
            ValueError,
            "threshold must be in [0, 1)",
        ),
        Case(
            "fit-to-xarray-part",
            '`res.to_xarray("frames")`',
            lambda: _S().fit(_img()).to_xarray("frames"),
            ValueError,
            "part must be 'sources' or 'background'",
        ),
        Case(
            "fit-to-xarray-background",
            '`res.to_xarray("background")` of a fit without background',
            lambda: _S().fit(_img()).to_xarray("background"),
            ValueError,
            "this fit has no background model",
        ),
        Case(
            "roi-fit-background",
            '`roi.fit(data, background="constant")`',
            lambda: _S().roi([(0, 0)], (4, 4)).fit(np.ones((1, 4, 4)), background="constant"),
            NotImplementedError,
            "ROISparse3D.fit does not support background",
        ),
    ]

    if importlib.util.find_spec("dask") is not None:

        def _masked_dask():
            import dask.array as da

            return da.from_array(np.ma.MaskedArray(np.ones((10, 10, 2)), mask=False), chunks=(10, 10, 1))

        def _dask_fit(**kw):
            import dask.array as da

            return _S().fit(da.ones((10, 10, 2), chunks=(10, 10, 1)), **kw)

        CASES += [
            Case(
                "dask-fit-background",
                "`S.fit(dask_frames, background=..., dq=..., saturation=...)`",
                lambda: _dask_fit(background="plane", saturation=3.0),
                NotImplementedError,
                "S.fit on Dask frames does not support background, saturation",
            ),
            Case(
                "dask-fit-masked",
                "`S.fit(dask_frames)`, the chunks masked arrays",
                lambda: _S().fit(_masked_dask()),
                NotImplementedError,
                "S.fit on masked Dask frames is not supported",
            ),
        ]

    if importlib.util.find_spec("astropy") is not None:

        def _u():
            import astropy.units as u

            return u

        CASES += [
            Case(
                "fit-units-plain-errors",
                "`S.fit(data * u.adu, errors=e)`, `e` a plain array",
                lambda: _S().fit(_img() * _u().adu, errors=_img()),
                ValueError,
                "data has unit adu but errors is a plain array",
            ),
            Case(
                "fit-units-mismatch",
                "`S.fit(data * u.adu, errors=e * u.s)`",
                lambda: _S().fit(_img() * _u().adu, errors=_img() * _u().s),
                ValueError,
                "errors has unit s, which does not convert to the unit adu",
            ),
            Case(
                "fit-units-errors-only",
                "`S.fit(data, errors=e * u.adu)`, data without unit",
                lambda: _S().fit(_img(), errors=_img() * _u().adu),
                ValueError,
                "errors has unit adu but data has none",
            ),
            Case(
                "fit-units-prior-plain-data",
                "`S.fit(data, prior_sigma=1 * u.adu)`, data without unit",
                lambda: _S().fit(_img(), prior_sigma=1 * _u().adu),
                ValueError,
                "prior_sigma has unit adu but the data has none",
            ),
            Case(
                "fit-units-prior-mismatch",
                "`S.fit(data * u.adu, errors=e * u.adu, prior_sigma=1 * u.s)`",
                lambda: _S().fit(_img() * _u().adu, errors=_img() * _u().adu, prior_sigma=1 * _u().s),
                ValueError,
                "prior_sigma has unit s, which does not convert to the unit adu",
            ),
            Case(
                "fit-saturation-quantity",
                "`S.fit(data * u.adu, saturation=6e4 * u.adu)`",
                lambda: _S().fit(_img() * _u().adu, saturation=6e4 * _u().adu),
                ValueError,
                "saturation must be a plain number in the data's unit",
            ),
        ]

    def _missing_qdldl():
        from sparse3d.fit import factor, fit_design

        saved = factor._has_qdldl
        factor._has_qdldl = lambda: False  # as if qdldl were not installed
        try:
            fit_design(_S().tocsr(), np.ones((10, 10)), imshape=(10, 10), solver="qdldl")
        finally:
            factor._has_qdldl = saved

    def _missing_solver():
        from sparse3d.fit import factor, fit_design

        saved = factor._CHOLMOD_TRIED, factor._cholmod
        factor._CHOLMOD_TRIED, factor._cholmod = True, None  # as if cvxopt were not installed
        try:
            fit_design(_S().tocsr(), np.ones((10, 10)), imshape=(10, 10), solver="cholmod")
        finally:
            factor._CHOLMOD_TRIED, factor._cholmod = saved


# ---- the distributed scene fit (SourceChunked.fit) ------------------------------------------
def _scene_fit(**kw):
    SC = _S().to_dask(source_chunks=1)
    data = kw.pop("data", np.ones((10, 10)))
    return SC.fit(data, **kw)


def _bare_scene_fit():
    from sparse3d.dask import SourceChunked

    SC = _S().to_dask(source_chunks=1)
    return SourceChunked(SC.parts, SC.chunks, SC.imshape).fit(np.ones((10, 10)))


if importlib.util.find_spec("dask") is not None and importlib.util.find_spec("distributed") is not None:
    CASES += [
        Case(
            "scene-halo",
            "`SC.fit(data, halo=1)`, 3 x 3 stamps (`SC` a `SourceChunked`)",
            lambda: _scene_fit(halo=1),
            ValueError,
            "halo must be at least one stamp wide",
        ),
        Case(
            "scene-halo-unknown",
            "`SC.fit(data)`, `SC` built without `stamp_shape` and no `halo`",
            _bare_scene_fit,
            ValueError,
            "halo must be given",
        ),
        Case(
            "scene-tile",
            "`SC.fit(data, tile_size=2)`, 3 x 3 stamps",
            lambda: _scene_fit(tile_size=2),
            ValueError,
            "tile_size must be at least the stamp size",
        ),
        Case(
            "scene-tile-type",
            "`SC.fit(data, tile_size=(8, 8, 8))`",
            lambda: _scene_fit(tile_size=(8, 8, 8)),
            ValueError,
            "tile_size must be an int or a pair of ints",
        ),
        Case(
            "scene-errors",
            "`SC.fit(frames, errors=per_frame_maps)` (errors of shape `(H, W, k)`)",
            lambda: _scene_fit(data=np.ones((10, 10, 2)), errors=np.ones((10, 10, 2))),
            ValueError,
            "errors must have shape (H, W) = (10, 10) (one map shared by every frame)",
        ),
        Case(
            "scene-data",
            "`SC.fit(np.ones((9, 10)))`, image 10 x 10",
            lambda: _scene_fit(data=np.ones((9, 10))),
            ValueError,
            "data must have shape (H, W) = (10, 10) or (H, W, k)",
        ),
        Case(
            "scene-tol",
            "`SC.fit(data, tol=0)`",
            lambda: _scene_fit(tol=0),
            ValueError,
            "tol must be a positive number",
        ),
        Case(
            "scene-max-iter",
            "`SC.fit(data, max_iter=-1)`",
            lambda: _scene_fit(max_iter=-1),
            ValueError,
            "max_iter must be a non-negative int",
        ),
        Case(
            "scene-prior",
            "`SC.fit(data, prior_sigma=np.ones(3))`, 2 sources",
            lambda: _scene_fit(prior_sigma=np.ones(3)),
            ValueError,
            "prior_sigma must be a scalar or have shape (nsources,) = (2,)",
        ),
        Case(
            "scene-client",
            "`SC.fit(data, client=8786)`",
            lambda: _scene_fit(client=8786),
            TypeError,
            "client must be a distributed.Client, a scheduler address or None",
        ),
    ]


# ---- the demo (python -m sparse3d demo; the command line turns these into usage errors) ----
CASES += [
    Case(
        "demo-seed",
        "`run_demo(seed=-1)` (`python -m sparse3d demo --seed -1`)",
        lambda: _run_demo()(imshape=(8, 8), nsources=1, seed=-1, plots=False),
        ValueError,
        "seed must be a non-negative integer",
    ),
    Case(
        "demo-nsources",
        "`run_demo(nsources=0)` (`--nsources 0`)",
        lambda: _run_demo()(imshape=(8, 8), nsources=0, plots=False),
        ValueError,
        "nsources must be a positive integer",
    ),
    Case(
        "demo-imshape",
        "`run_demo(imshape=(64, -3))` (`--imshape 64 -3`)",
        lambda: _run_demo()(imshape=(64, -3), nsources=1, plots=False),
        ValueError,
        "imshape must be two positive integers",
    ),
    Case(
        "demo-output",
        "`run_demo(output=path)`, `path` not creatable or not writable (`--output`)",
        lambda: _run_demo()(imshape=(8, 8), nsources=1, output=Path(__file__) / "figures"),
        OSError,
        "is not writable",
    ),
]


def _run_demo():
    from sparse3d._demo import run_demo

    return run_demo


if importlib.util.find_spec("sparse3d.legacy") is not None:
    from sparse3d import legacy

    def _L():
        S = _S()
        return legacy.ROISparse3D(S.data, S.row, S.col, S.imshape, 1, (4, 4), [(0, 0)])

    def _moved(L):
        L.translate((1, 0))
        return L

    CASES += [
        Case(
            "legacy-2d",
            "`legacy.Sparse3D(np.ones((3, 3)), ...)`",
            lambda: legacy.Sparse3D(np.ones((3, 3)), np.ones((3, 3)), np.ones((3, 3)), (5, 5)),
            ValueError,
            "data, row and col must be 3-D",
        ),
        Case(
            "legacy-nsubimages",
            "`legacy.Sparse3D(data, row, col, ...)`, 2 vs 1 subimages",
            lambda: legacy.Sparse3D(np.ones((3, 3, 2)), np.ones((3, 3, 1)), np.ones((3, 3, 2)), (5, 5)),
            ValueError,
            "data has 2, row 1, col 2",
        ),
        Case(
            "legacy-roi-corners",
            "`legacy.ROISparse3D(..., nROIs=2, ROI_corners=[(0, 0)])`",
            lambda: legacy.ROISparse3D(ONE, ONE, ONE, (5, 5), 2, (2, 2), [(0, 0)]),
            ValueError,
            "ROI_corners has 1 entries for nROIs=2",
        ),
        Case(
            "legacy-operand-shape",
            "`L + np.ones((2, 2, 2))` (not the stamp shape)",
            lambda: _L() + np.ones((2, 2, 2)),
            ValueError,
            "does not broadcast against the stamp shape (3, 3, 2)",
        ),
        Case(
            "legacy-offsets",
            "`L1 + L2`, translated to different offsets",
            lambda: _moved(_L()) + _L(),
            ValueError,
            "operands are translated to different offsets",
        ),
        Case(
            "legacy-stack-offsets",
            "`legacy.stack([L1, L2])`, different offsets",
            lambda: legacy.stack([_moved(_L()), _L()]),
            ValueError,
            "Can only stack arrays translated to the same offset",
        ),
        Case(
            "legacy-dot-type",
            '`L.to_Sparse3D().dot("w")`',
            lambda: _L().to_Sparse3D().dot("w"),
            NotImplementedError,
            "pass the weights as a numpy.ndarray",
        ),
        Case(
            "legacy-index",
            "`L[0, :, 1]`",
            lambda: _L()[0, :, 1],
            IndexError,
            "Only full slices (:) are allowed for the first two dimensions",
        ),
    ]


# ---- sub-pixel models: sparse3d.psf, S.shift, np.gradient -----------------------------------
def _transposed():
    """Stamps whose axis 0 runs along image columns."""
    return Sparse3D(np.ones((3, 3, 1)), np.arange(3)[None, :, None], np.arange(3)[:, None, None], (5, 5))


def _psf_cases():
    from sparse3d.psf import EllipticalGaussian, Gaussian, GriddedPSF, ImagePSF, Moffat

    G = Gaussian(1.0)
    img = np.ones((9, 9))
    return [
        Case(
            "psf-nan-position",
            "`Gaussian(1).design([np.nan], [3.0], (10, 10))`",
            lambda: G.design([np.nan], [3.0], (10, 10)),
            ValueError,
            "row must hold finite source positions",
        ),
        Case(
            "psf-row-col-length",
            "`model.design(row, col, ...)`, lengths differ",
            lambda: G.design([1.0, 2.0], [1.0], (10, 10)),
            ValueError,
            "row and col must have the same length",
        ),
        Case(
            "psf-sigma-nonpositive",
            "`Gaussian(sigma=0)` (or any σ ≤ 0 in a per-source array)",
            lambda: Gaussian(sigma=[1.0, 0.0]),
            ValueError,
            "sigma must be > 0",
        ),
        Case(
            "psf-sigma-nan",
            "`Gaussian(sigma=np.nan)`",
            lambda: Gaussian(sigma=np.nan),
            ValueError,
            "sigma must be finite",
        ),
        Case(
            "psf-moffat-beta",
            "`Moffat(alpha=2, beta=1)` (β ≤ 1 does not integrate)",
            lambda: Moffat(2.0, 1.0),
            ValueError,
            "beta must be > 1",
        ),
        Case(
            "psf-param-lengths",
            "`EllipticalGaussian(sigma=[1, 2], ratio=[.5, .5, .5])`",
            lambda: EllipticalGaussian([1.0, 2.0], [0.5, 0.5, 0.5]),
            ValueError,
            "per-source shape parameters must have the same length; sigma has 2, ratio has 3",
        ),
        Case(
            "psf-param-nsources",
            "`Gaussian(sigma=[1, 1, 1]).design(row, col, ...)` with 2 sources",
            lambda: Gaussian([1.0, 1.0, 1.0]).design([1.0, 2.0], [1.0, 2.0], (10, 10)),
            ValueError,
            "sigma has 3 values but row and col give 2 sources",
        ),
        Case(
            "psf-stamp-shape",
            "`model.design(..., stamp_shape=(0, 5))` (or non-integers)",
            lambda: G.design([1.0], [1.0], (10, 10), stamp_shape=(0, 5)),
            ValueError,
            "stamp_shape must be two positive integers",
        ),
        Case(
            "psf-derivative-name",
            '`Gaussian(1).design(..., derivatives=("flux",))`',
            lambda: G.design([1.0], [1.0], (10, 10), derivatives=("flux",)),
            ValueError,
            "derivatives: Gaussian has no derivative 'flux'",
        ),
        Case(
            "image-psf-ndim",
            "`ImagePSF(np.ones(9))`",
            lambda: ImagePSF(np.ones(9)),
            ValueError,
            "data must be a 2-D PSF image",
        ),
        Case(
            "image-psf-nan",
            "`ImagePSF(data)`, data with NaN",
            lambda: ImagePSF(np.full((9, 9), np.nan)),
            ValueError,
            "data must be finite",
        ),
        Case(
            "image-psf-oversampling",
            "`ImagePSF(data, oversampling=2.5)` (or 0)",
            lambda: ImagePSF(img, oversampling=2.5),
            ValueError,
            "oversampling must be a positive integer",
        ),
        Case(
            "gridded-psf-grid",
            "`GriddedPSF(data, grid_positions)`, positions not a full rectangular grid",
            lambda: GriddedPSF(np.ones((3, 9, 9)), [(0, 0), (0, 10), (10, 0)]),
            ValueError,
            "grid_positions must form a full rectangular grid",
        ),
        Case(
            "gridded-psf-positions",
            "`GriddedPSF(data, grid_positions)`, one position per image missing",
            lambda: GriddedPSF(np.ones((2, 9, 9)), [(0, 0)]),
            ValueError,
            "grid_positions must be finite (row, col) pairs, one per PSF image",
        ),
        Case(
            "shift-not-pair",
            "`S.shift(0.5)`",
            lambda: _S().shift(0.5),
            ValueError,
            "shift must be a pair (drow, dcol)",
        ),
        Case(
            "shift-length",
            "`S.shift((drow, dcol))`, `drow` with 3 values for 2 sources",
            lambda: _S().shift((np.zeros(3), 0.0)),
            ValueError,
            "shift: drow must be a number or have one value per source (2)",
        ),
        Case(
            "shift-nan",
            "`S.shift((np.nan, 0))`",
            lambda: _S().shift((np.nan, 0.0)),
            ValueError,
            "shift: drow must be finite",
        ),
        Case(
            "shift-not-upright",
            "`S.shift((0.3, 0))`, stamps not laid out as `R[:, :, None] + row`",
            lambda: _transposed().shift((0.3, 0.0)),
            ValueError,
            "shift: fractional shifts need upright stamps",
        ),
        Case(
            "gradient-axis",
            "`np.gradient(S)` (no axis, or axis=2)",
            lambda: np.gradient(_S()),
            ValueError,
            "np.gradient on a Sparse3D needs axis=0, 1 or (0, 1)",
        ),
        Case(
            "gradient-coordinates",
            "`np.gradient(S, x, axis=0)` with a coordinate array",
            lambda: np.gradient(_S(), np.arange(3.0), axis=0),
            TypeError,
            "np.gradient on a Sparse3D takes scalar spacings only",
        ),
    ]


CASES += _psf_cases()

# ---- scene fits: sparse3d.photometry (positions, jitter) -------------------------------------
def _photometry_cases():
    from sparse3d.fit import check_inputs
    from sparse3d.photometry import fit_jitter, fit_positions
    from sparse3d.psf import Gaussian

    G = Gaussian(1.0)
    img = np.ones((12, 12))
    stack = np.ones((12, 12, 3))
    r, c = np.array([5.0]), np.array([6.0])

    def pos(**kw):
        args = dict(data=img, row=r, col=c)
        args.update(kw)
        return lambda: fit_positions(G, args.pop("data"), args.pop("row"), args.pop("col"), **args)

    nan_img = img.copy()
    nan_img[3, 3] = np.nan
    return [
        Case("positions-data-ndim", "`fit_positions(psf, stack_3d, row, col)`", pos(data=stack),
             ValueError, "data must have shape (H, W)"),
        Case("positions-data-nan", "`fit_positions(psf, image_with_nan, ...)`, NaN not masked",
             pos(data=nan_img), ValueError, "data contains non-finite values in unmasked pixels"),
        Case("positions-row-nan", "`fit_positions(psf, image, [np.nan], col)`", pos(row=np.array([np.nan])),
             ValueError, "row must be finite"),
        Case("positions-row-col-length", "`fit_positions(psf, image, row, col)`, lengths differ",
             pos(col=np.array([1.0, 2.0])), ValueError, "row and col must have the same length"),
        Case("positions-errors", "`fit_positions(..., errors=e)`, `e` with 0, negative or NaN values",
             pos(errors=np.zeros((12, 12))), ValueError,
             "errors must be positive and finite in unmasked pixels"),
        Case("positions-errors-shape", "`fit_positions(..., errors=e)`, `e` of the wrong shape",
             pos(errors=np.ones((3, 3))), ValueError, "errors must have shape (12, 12)"),
        Case("positions-mask-dtype", "`fit_positions(..., mask=m)`, `m` not boolean",
             pos(mask=np.zeros((12, 12))), ValueError, "mask must be a boolean array"),
        Case("positions-fix", "`fit_positions(..., fix=f)`, `f` not boolean `(nsources,)`",
             pos(fix=np.array([1, 0])), ValueError, "fix must be a boolean array of shape (nsources,)"),
        Case("positions-prior", "`fit_positions(..., position_prior_sigma=0)`",
             pos(position_prior_sigma=0.0), ValueError, "position_prior_sigma must be > 0"),
        Case("positions-flux-prior", "`fit_positions(..., flux_prior_mu=m)` without `flux_prior_sigma`",
             pos(flux_prior_mu=1.0), ValueError, "flux_prior_mu requires flux_prior_sigma"),
        *([
            Case("positions-flux-prior-unit", "`fit_positions(image, ..., flux_prior_sigma=1 * u.Jy)`, data "
                 "without unit", lambda: pos(flux_prior_sigma=_astropy_quantity(1.0, "Jy"))(), ValueError,
                 "flux_prior_sigma has unit Jy but the data has none"),
            Case("positions-position-prior-unit", "`fit_positions(..., position_prior_sigma=0.1 * u.pix)`",
                 lambda: pos(position_prior_sigma=_astropy_quantity(0.1, "pix"))(), ValueError,
                 "position_prior_sigma must be plain numbers (pixels), got a Quantity"),
        ] if importlib.util.find_spec("astropy") is not None else []),
        Case("positions-tol", "`fit_positions(..., tol=0)` (also `max_step`; `min_snr`, `rtol` < 0)",
             pos(tol=0.0), ValueError, "tol must be a finite positive number"),
        Case("positions-max-iter", "`fit_positions(..., max_iter=-1)`", pos(max_iter=-1),
             ValueError, "max_iter must be a non-negative integer"),
        Case("positions-imshape", "`fit_positions(..., imshape=(H, W))` not the shape of the image",
             pos(imshape=(10, 12)), ValueError, "imshape (10, 12) does not match the shape of data"),
        Case("positions-dq-without-bits", "`fit_positions(..., dq=dq)` without `bad_bits`",
             pos(dq=np.zeros((12, 12), dtype=np.uint16)), ValueError, "dq requires bad_bits"),
        Case("positions-mask-dq-like", "`fit_positions(..., mask=dq)`, integers other than 0/1",
             pos(mask=np.full((12, 12), 4)), ValueError, "look like a data-quality bitmask"),
        Case("jitter-dq-shape", "`fit_jitter(..., dq=dq, bad_bits=b)`, `dq` of the wrong shape",
             lambda: fit_jitter(G, stack, r, c, dq=np.zeros((3, 3), dtype=int), bad_bits=1), ValueError,
             "dq must have shape (H, W) = (12, 12)"),
        Case("check-inputs-ndim", "`sparse3d.fit.check_inputs(stack_3d, ndim=2)`",
             lambda: check_inputs(stack, ndim=2), ValueError, "data must have shape (H, W), got 3-D"),
        Case("check-inputs-imshape", "`sparse3d.fit.check_inputs(image, imshape=(H, W))`, another shape",
             lambda: check_inputs(img, imshape=(3, 4)), ValueError,
             "imshape (3, 4) does not match the shape of data"),
        Case("jitter-data-ndim", "`fit_jitter(psf, image_2d, row, col)`",
             lambda: fit_jitter(G, img, r, c), ValueError, "data must have shape (H, W, nframes)"),
        Case("jitter-shifts", "`fit_jitter(..., shifts=s)`, `s` not finite `(nframes, 2)`",
             lambda: fit_jitter(G, stack, r, c, shifts=np.zeros((2, 2))), ValueError,
             "shifts must be finite with shape (nframes, 2) = (3, 2)"),
        Case("jitter-cg-tol", "`fit_jitter(..., cg_tol=0)`",
             lambda: fit_jitter(G, stack, r, c, cg_tol=0.0), ValueError,
             "cg_tol must be a finite positive number"),
    ]


CASES += _photometry_cases()



# ---- stamp groups (several stamp shapes in one array) ----------------------------------------
def _grouped():
    """A 3x3 and a 2x2 stamp group in one array."""
    small = Sparse3D(
        np.ones((2, 2, 1)), np.arange(2)[:, None, None] + 4, np.arange(2)[None, :, None], (10, 10)
    )
    return np.concatenate([_S(), small], axis=2)


def _grouped_cases():
    from sparse3d.photometry import fit_positions
    from sparse3d.psf import Gaussian, stamp_sizes_by_flux

    G = Gaussian(1.0)
    xy = [3.0, 4.0]
    return [
        Case(
            "grouped-data",
            "`S.data` (also `row`, `col`, `stamp_shape`, `in_image`) of an array with several stamp shapes",
            lambda: _grouped().data,
            ValueError,
            "data needs a single stamp shape, but this array has stamp groups of shapes [(3, 3), (2, 2)]; "
            "select one stamp group with S.groups[i]",
        ),
        Case(
            "grouped-with-data",
            "`S.with_data(values)` with one block for a grouped array",
            lambda: _grouped().with_data(np.ones((3, 3, 3))),
            ValueError,
            "with_data on an array with 2 stamp groups takes a list of 2 blocks, one per group",
        ),
        Case(
            "grouped-operand-structure",
            "`S + T`: grouped arrays with different stamp groups",
            lambda: _grouped() + np.concatenate([_S(), _S()[:, :, :1]], axis=2),
            ValueError,
            "operands have different stamp structures (stamp groups differ",
        ),
        Case(
            "grouped-operand-positions",
            "`S + S.translate((1, 0))` of a grouped array (same stamp groups, other positions)",
            lambda: _grouped() + _grouped().translate((1, 0)),
            ValueError,
            "operands have different stamp structures (stamp positions differ (row))",
        ),
        Case(
            "grouped-operand-source-order",
            "`S + T`: grouped arrays with the same stamp shapes in another source order",
            lambda: _grouped() + _grouped()[:, :, [0, 2, 1]],
            ValueError,
            "operands have different stamp structures (the stamp groups hold different sources",
        ),
        Case(
            "from-groups-lengths",
            "`Sparse3D.from_groups([d0, d1], [r0], [c0, c1], imshape)`",
            lambda: Sparse3D.from_groups([np.ones((2, 2, 1))] * 2, [0], [0, 0], (4, 4)),
            ValueError,
            "from_groups needs one row and one col per data block; got 2 data, 1 row and 2 col",
        ),
        Case(
            "psf-stamp-sizes-length",
            "`G.design(row, col, imshape, stamp_shape=np.array([5, 7, 9]))` for 2 sources",
            lambda: G.design([3.0, 4.0], [3.0, 4.0], (10, 10), stamp_shape=np.array([5, 7, 9])),
            ValueError,
            "stamp_shape: per-source stamp sizes must have shape (2,) or (2, 2)",
        ),
        Case(
            "psf-stamp-sizes-dtype",
            "`stamp_shape=np.array([5.0, 7.0])` (float per-source sizes)",
            lambda: G.design([3.0, 4.0], [3.0, 4.0], (10, 10), stamp_shape=np.array([5.0, 7.0])),
            TypeError,
            "stamp_shape: per-source stamp sizes must be integers",
        ),
        Case(
            "positions-stamp-sizes-length",
            "`fit_positions(psf, image, row, col, stamp_shape=np.array([5, 7, 9]))` for 2 sources",
            lambda: fit_positions(G, np.zeros((10, 10)), xy, xy, stamp_shape=np.array([5, 7, 9])),
            ValueError,
            "stamp_shape: per-source stamp sizes must have shape (2,) or (2, 2)",
        ),
        Case(
            "stamp-sizes-by-flux",
            "`stamp_sizes_by_flux(flux, edges=[1e4], sizes=[11])`",
            lambda: stamp_sizes_by_flux([1.0], edges=[1e4], sizes=[11]),
            ValueError,
            "sizes must be 2 positive integers (one more than edges)",
        ),
    ]


CASES += _grouped_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case):
    with pytest.raises(case.error) as info:
        case.call()
    assert type(info.value) is case.error or issubclass(type(info.value), case.error)
    assert case.fragment in str(info.value), str(info.value)


def test_memory_errors_state_the_memory_needed():
    for case in CASES:
        if case.error is DenseAllocationError:
            with pytest.raises(DenseAllocationError, match=r"would allocate \d+\.\d (B|KiB|MiB|GiB|TiB)"):
                case.call()


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))


# ---- docs/errors.md, generated from CASES ---------------------------------------------------
_HEADER = """# Errors

What `sparse3d` raises on bad input. Every row is a test case in `tests/test_bad_input.py`
(the test checks the error type and that the message contains the fragment shown); this
page is generated from that table: `PYTHONPATH=. python tests/test_bad_input.py`.

`DenseAllocationError` is a `MemoryError` raised *before* an allocation above
`max_dense_bytes` (default 2 GiB; see `sparse3d.set_options`); its message states the memory
needed. `SingularNormalMatrixError` is a `numpy.linalg.LinAlgError`.

| input | error | message contains |
|---|---|---|
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    rows = [f"| {_cell(c.input)} | `{c.error.__name__}` | `{_cell(c.fragment)}` |" for c in CASES]
    return _HEADER + "\n".join(rows) + "\n"


def test_docs_table_is_current():
    assert DOC.exists(), "docs/errors.md is missing; run PYTHONPATH=. python tests/test_bad_input.py"
    text = DOC.read_text()
    missing = [c.id for c in CASES if f"| {_cell(c.input)} | `{c.error.__name__}` |" not in text]
    assert not missing, (
        f"docs/errors.md lacks rows {missing}; run PYTHONPATH=. python tests/test_bad_input.py"
    )
    assert text == render_markdown(), (
        "docs/errors.md is stale; run PYTHONPATH=. python tests/test_bad_input.py"
    )


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render_markdown())
    print(f"wrote {DOC} ({len(CASES)} rows)", file=sys.stderr)
