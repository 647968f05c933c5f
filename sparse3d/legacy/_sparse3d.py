"""The 1.x ``Sparse3D``: a ``scipy.sparse.coo_matrix`` ``(H*W, nsources)`` over a 2.x array.

State of one legacy array::

    _base   2.x Sparse3D at the positions given to the constructor (immutable)
    coord   the absolute offset set by translate() (1.x attribute), (0, 0) after reset()
    _cur    _base.translate(coord): what tocsr/the COO view read, built when first asked for

``translate`` and ``reset`` validate the offset and drop ``_cur`` (O(1): a jitter loop's
``dot`` with ``(nsources, k)`` weights reads ``_base`` at ``coord`` directly, see
:func:`sparse3d._functions.planes.translated_planes`); the COO view that scipy's inherited methods
read (``data``, ``row``, ``col``: the in-image stamp values, in 1.x's order) is built
from ``_cur`` the first time it is asked for. Operators and ufuncs run on ``_base`` through
the 2.x ``__array_ufunc__`` and the result is wrapped at the same ``coord``.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin
from scipy import sparse as sp

from .. import _functions, _pool, core
from .._functions.planes import translated_planes
from .._functions.products import _result_dtype, _split_unit
from .._structure.positions import _as_pair

__all__ = ["Sparse3D"]


def _as_positions(a) -> np.ndarray:
    """1.x took ``row.astype(int)``: fractional positions are truncated, not refused."""
    a = np.asarray(a)
    if a.dtype.kind == "f":
        return a.astype(np.int64)
    return a


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def _rebind(self, other):
    return NotImplemented


class Sparse3D(NDArrayOperatorsMixin, sp.coo_matrix):
    """A sparse3d 1.x ``Sparse3D``: stamps in a ``(H*W, nsources)`` ``scipy.sparse.coo_matrix``.

    A thin adapter over :class:`sparse3d.Sparse3D`: same constructor and attributes as
    sparse3d 1.2, every computation done by the 2.x array.

    Parameters
    ----------
    data : numpy.ndarray, shape (nrows, ncols, nsubimages)
        Stamp values.
    row, col : numpy.ndarray, shape (nrows, ncols, nsubimages)
        Absolute pixel positions of every stamp pixel (fractional values are truncated,
        as 1.x did).
    imshape : tuple of int
        ``(H, W)`` of the image.
    imcorner : tuple of int, optional
        Absolute position of image pixel ``[0, 0]``.

    Notes
    -----
    1.x conventions kept here: ``shape == cooshape == (H*W, nsubimages)``; ``translate``
    is in place and absolute (from the constructor's positions), ``reset`` undoes it;
    ``dot`` with ``(nsubimages, k)`` weights gives ``(k, H, W)``; ``S @ w`` is SciPy's
    product, ``(H*W,)`` or ``(H*W, k)``; ``data``/``row``/``col`` are the COO entries (the
    in-image stamp values). Operators, ``np.exp`` & co. and ``multiply`` act on
    the stamp values and return a legacy array at the same offset.

    Examples
    --------
    >>> import numpy as np
    >>> from sparse3d.legacy import Sparse3D
    >>> R, C = np.mgrid[:3, :3]
    >>> S = Sparse3D(np.ones((3, 3, 2)), R[:, :, None] + [0, 5], C[:, :, None] + [0, 5], (10, 10))
    >>> S.shape
    (100, 2)
    >>> S.translate((1, 0))
    >>> S.translate((1, 0))          # absolute: still one row down, not two
    >>> S.dot(np.ones(2))[1:4, 0]
    array([1., 1., 1.])
    >>> S.dot(np.ones((2, 4))).shape
    (4, 10, 10)
    """

    __array_priority__ = 20.0  # above scipy's, so NumPy asks this class first
    maxprint = 50  # scipy reads it; scipy's __init__ (which would set it) is not called

    def __init__(self, data, row, col, imshape, imcorner=(0, 0)) -> None:
        data, row, col = np.asarray(data), _as_positions(row), _as_positions(col)
        if not (data.ndim == 3 and row.ndim == 3 and col.ndim == 3):
            raise ValueError(
                "Pass a 3D array (nrow, ncol, nsubimages): data, row and col must be 3-D; got "
                f"data {data.ndim}-D, row {row.ndim}-D, col {col.ndim}-D"
            )
        if row.shape[-1] != data.shape[-1] or col.shape[-1] != data.shape[-1]:
            raise ValueError(
                "Must have the same 3rd dimension (nsubimages): data has "
                f"{data.shape[-1]}, row {row.shape[-1]}, col {col.shape[-1]}"
            )
        self._attach(core.Sparse3D(data, row, col, imshape, imcorner), (0, 0))

    # -- construction from 2.x arrays ---------------------------------------------------------
    @classmethod
    def _from_base(cls, base: core.Sparse3D, coord=(0, 0)) -> Sparse3D:
        obj = cls.__new__(cls)
        obj._attach(base, coord)
        return obj

    def _like(self, base: core.Sparse3D) -> Sparse3D:
        """A legacy array of this class (ROI parameters included) holding ``base`` at ``coord``."""
        obj = type(self).__new__(type(self))
        obj._copy_parameters(self)
        obj._attach(base, self.coord)
        return obj

    def _copy_parameters(self, other: Sparse3D) -> None:
        """Subclasses copy their own constructor parameters here."""

    def _attach(self, base: core.Sparse3D, coord) -> None:
        self._base = base
        self._sub: dict = {}
        self._move(coord)

    def _move(self, coord) -> None:
        d = _as_pair(coord, "position", positive=False)  # what 2.x translate checks, in its order
        self._base._structure.check_translation(*d)
        self.coord = d
        self._cur_array = None  # _base.translate(coord), built when first asked for
        self._cleared = False
        self._view = None
        # as in 1.x (whose flag was never cleared): the entries are unique (stamps cover a pixel
        # once), so scipy's sum_duplicates has nothing to do and must not re-sort the 1.x order
        self.has_canonical_format = True

    @property
    def _cur(self) -> core.Sparse3D:
        """The 2.x array at the current offset: ``_base.translate(coord)``."""
        cur = self._cur_array
        if cur is None:
            cur = self._cur_array = self._base.translate(self.coord)
        return cur

    # -- 1.x geometry: in place, absolute ----------------------------------------------------
    def translate(self, offset) -> None:
        """Move every stamp to ``offset`` ``(row, column)`` pixels from its original position.

        In place and absolute, as in 1.x: ``translate((1, 0))`` twice leaves the stamps one
        row down. (2.x's :meth:`sparse3d.Sparse3D.translate` is relative and returns a new
        array.)
        """
        self._move(offset)

    def reset(self) -> None:
        """Undo any translation: back to the constructor's positions."""
        self._move((0, 0))

    def clear(self) -> None:
        """Remove every value until the next :meth:`translate` or :meth:`reset` (1.x helper)."""
        self._move((0, 0))
        self._cur_array = np.zeros_like(self._base)
        self._cleared = True

    # -- 1.x attributes -------------------------------------------------------------------------
    @property
    def imshape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self._base.imshape

    @property
    def imcorner(self) -> tuple[int, int]:
        """Absolute position of image pixel ``[0, 0]``."""
        return self._base.imcorner

    @property
    def nsubimages(self) -> int:
        """Number of stamps (sources)."""
        return self._base.nsources

    @property
    def subshape(self) -> tuple[int, int, int]:
        """``(nrows, ncols, nsubimages)``, the shape of the stamp arrays."""
        return self._base.stamp_shape

    @property
    def cooshape(self) -> tuple[int, int]:
        """``(H*W, nsubimages)``, the same as :attr:`shape`."""
        H, W = self._base.imshape
        return (H * W, self._base.nsources)

    @property
    def _shape(self) -> tuple[int, int]:  # what scipy's ``shape`` property reads
        return self.cooshape

    @property
    def subdata(self) -> np.ndarray:
        """Stamp values ``(nrows, ncols, nsubimages)`` (read-only)."""
        return self._base.data

    def _relative(self, name: str, axis: int) -> np.ndarray:
        if name not in self._sub:
            a = getattr(self._base, name).astype(np.int64) - self._base.imcorner[axis]
            a.flags.writeable = False
            self._sub[name] = a
        return self._sub[name]

    @property
    def subrow(self) -> np.ndarray:
        """Stamp rows relative to the image corner, at the original (untranslated) position."""
        return self._relative("row", 0)

    @property
    def subcol(self) -> np.ndarray:
        """Stamp columns relative to the image corner, at the original (untranslated) position."""
        return self._relative("col", 1)

    @property
    def subdepth(self) -> np.ndarray:
        """The stamp index of every stamp pixel, ``(nrows, ncols, nsubimages)``."""
        return np.broadcast_to(np.arange(self.nsubimages), self.subshape)

    @property
    def dtype(self) -> np.dtype:
        return self._base.dtype

    # -- the COO entries scipy's methods read ------------------------------------------------------
    def _coo_view(self) -> list:
        """``[data, (pixel, source)]``: the in-image stamp values, in 1.x's order (C order of the stamps)."""
        if self._view is None and self._cleared:  # 1.x's clear() emptied the COO entries
            empty = np.empty(0, dtype=np.int64)
            self._view = [np.empty(0, dtype=self.dtype), (empty, empty.copy())]
            self._pristine = (self._view[0], empty, empty)
        if self._view is None:
            s = self._cur
            values = s.data
            keep = s.in_image
            r0, c0 = s.imcorner
            pixel = (s.row[keep].astype(np.int64) - r0) * s.imshape[1] + (s.col[keep].astype(np.int64) - c0)
            source = np.broadcast_to(np.arange(s.nsources, dtype=np.int64), s.stamp_shape)[keep]
            self._view = [values[keep], (pixel, source)]
            # what they were when handed out: the caller may change them (S.data = ..., S.data[k] = ...)
            self._pristine = (self._view[0].copy(), pixel.copy(), source.copy())
        return self._view

    def _edited(self) -> sp.csr_matrix | None:
        """The COO entries as CSR if they were changed through ``data``/``row``/``col``, else None.

        1.x's products read its COO entries, so after ``S.data = ...`` (until the next
        ``translate``/``reset``) ``dot``, ``@``, ``tocsr``/``tocsc`` and the ROI windows do too.
        """
        view = self._view
        if view is None:
            return None
        data, (pixel, source) = view
        now = (np.asarray(data), np.asarray(pixel), np.asarray(source))
        if all(_same(a, b) for a, b in zip(now, self._pristine)):
            return None
        return sp.coo_matrix((now[0], (now[1], now[2])), shape=self.cooshape).tocsr()

    def _edited_dot(self, matrix: sp.csr_matrix, other) -> np.ndarray:
        """1.x's ``dot`` layouts of the (edited) COO matrix times ``other``."""
        w, unit = _split_unit(other)
        H, W = self.imshape
        result = matrix @ w
        result = result.reshape(H, W) if w.ndim == 1 else result.reshape(H, W, -1).transpose(2, 0, 1)
        return result if unit is None else result * unit

    @property
    def data(self) -> np.ndarray:
        """COO values: the in-image stamp values at the current offset (zeros included)."""
        return self._coo_view()[0]

    @data.setter
    def data(self, value) -> None:  # scipy's in-place methods; the stamps are not changed
        self._coo_view()[0] = np.asarray(value)

    @property
    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """COO ``(pixel, source)`` indices; pixel ``r * W + c``."""
        return self._coo_view()[1]

    @coords.setter
    def coords(self, value) -> None:
        self._coo_view()[1] = tuple(value)

    # -- representation and conversions --------------------------------------------------------
    def __repr__(self) -> str:
        return f"<{(*self.imshape, self.nsubimages)} Sparse3D array of type {self.dtype}>"

    def __len__(self) -> int:
        return self.nsubimages

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "Sparse3D instances cannot be converted to dense arrays implicitly; use "
            "S.toarray() for the (H*W, nsubimages) matrix or S.tocsr() to stay sparse"
        )

    def copy(self) -> Sparse3D:
        """A copy at the same offset (cleared if this array is, as 1.x's deepcopy)."""
        return self._duplicate(self._base)

    def __copy__(self) -> Sparse3D:
        return self.copy()

    def __deepcopy__(self, memo) -> Sparse3D:
        return self._duplicate(self._base.copy())

    def _duplicate(self, base: core.Sparse3D) -> Sparse3D:
        obj = self._like(base)
        if self._cleared:
            obj.clear()
        if self._edited() is not None:  # 1.x's deepcopy copied changed COO entries too
            data, coords = self._view
            obj._coo_view()
            obj._view = [np.array(data), tuple(np.array(c) for c in coords)]
        return obj

    def __reduce__(self):
        return (_rebuild, (type(self), self._base, self.coord, self._parameters(), self._cleared))

    def _parameters(self) -> dict:
        return {}

    def tocoo(self, copy: bool = False) -> sp.coo_matrix:
        """``scipy.sparse.coo_matrix`` of the current entries, shape :attr:`cooshape`."""
        data, (row, col) = self._coo_view()
        return sp.coo_matrix((data, (row, col)), shape=self.cooshape)

    def tocsr(self, copy: bool = False) -> sp.csr_matrix:
        """``scipy.sparse.csr_matrix`` ``(H*W, nsubimages)`` at the current offset."""
        edited = self._edited()
        if edited is not None:
            return edited
        if self._cleared:
            return sp.csr_matrix(self.cooshape, dtype=self.dtype)
        return self._cur.tocsr()

    def tocsc(self, copy: bool = False) -> sp.csc_matrix:
        """``scipy.sparse.csc_matrix`` ``(H*W, nsubimages)`` at the current offset."""
        edited = self._edited()
        if edited is not None:
            return edited.tocsc()
        if self._cleared:
            return sp.csc_matrix(self.cooshape, dtype=self.dtype)
        return self._cur.tocsc()

    # scipy's methods build results with ``self.__class__``; here they are plain scipy matrices
    def _with_data(self, data, copy: bool = True) -> sp.coo_matrix:
        return sp.coo_matrix((data, tuple(self.coords)), shape=self.cooshape)

    def transpose(self, axes=None, copy: bool = False) -> sp.coo_matrix:
        """The ``(nsubimages, H*W)`` transpose, a ``scipy.sparse.coo_matrix``."""
        return self.tocoo().transpose(axes=axes, copy=copy)

    def reshape(self, *args, **kwargs) -> sp.coo_matrix:
        """``scipy.sparse.coo_matrix.reshape`` of :meth:`tocoo`."""
        return self.tocoo().reshape(*args, **kwargs)

    def to_v2(self) -> core.Sparse3D:
        """The 2.x :class:`sparse3d.Sparse3D` at the current offset (shares its values)."""
        return self._cur

    # -- products -------------------------------------------------------------------------------
    def dot(self, other) -> np.ndarray:
        """Model image(s): ``(nsubimages,)`` weights give ``(H, W)``; ``(nsubimages, k)`` give ``(k, H, W)``.

        Weights with a ``.unit`` (astropy) give a result with that unit, as in 1.x.
        """
        if isinstance(other, (int, float, list)):
            other = np.atleast_1d(other)
        if not isinstance(other, np.ndarray):
            raise NotImplementedError(
                f"dot products with type {type(other)} are not implemented; pass the weights as a "
                "numpy.ndarray of shape (nsubimages,) or (nsubimages, k)"
            )
        edited = self._edited()
        if edited is not None:
            return self._edited_dot(edited, other)
        if type(other) is np.ndarray and other.ndim == 2 and other.dtype.kind in "biufc":
            if not self._cleared:  # the jitter loop's product, in one call
                cube = translated_planes(self._base, other, self.coord)
                if cube is not None:
                    return cube
            # 1.x's (k, H, W) layout, written directly by the 2.x product (no transposed copy)
            cur = self._cur
            H, W = cur.imshape
            cube = _pool.lend((other.shape[1], H, W), _result_dtype(cur.dtype, other.dtype))
            _functions.dot(cur, other, _into=cube.transpose(1, 2, 0))
            return cube
        result = self._cur.dot(other)
        if np.ndim(result) == 3:
            result = result.transpose(2, 0, 1)
        return result

    def multiply(self, other) -> Sparse3D:
        """Stamp values times ``other`` (scalar, ``(nsubimages,)`` or stamp-shaped)."""
        return np.multiply(self, other)

    def _matmul(self, a, b):
        """``S @ w`` as scipy computed it for 1.x: ``(H*W,)`` / ``(H*W, k)``."""
        if a is self:
            edited = self._edited()
            if sp.issparse(b) or edited is not None:
                return self.tocsr() @ b
            b = np.asarray(b)
            result = self._cur.dot(b)
            return result.reshape((self.cooshape[0], *b.shape[1:]))
        if sp.issparse(a):
            return a @ self.tocsr()
        return np.asarray(a) @ self.tocsr()

    def _scipy_operation(self, ufunc, inputs):
        """An operator with a scipy matrix: scipy's elementwise result on ``tocsr()`` (as 1.x's fallback)."""
        op = _SCIPY_OPERATORS.get(ufunc)
        if op is None:
            names = ", ".join(f"np.{u.__name__}" for u in _SCIPY_OPERATORS)
            raise TypeError(
                f"np.{ufunc.__name__} of a legacy Sparse3D and a scipy sparse matrix is not supported; "
                f"supported with scipy matrices: {names} (or convert with S.tocsr() first)"
            )
        return op(*[x.tocsr() if isinstance(x, Sparse3D) else x for x in inputs])

    # -- NumPy protocols: everything through the 2.x __array_ufunc__ ------------------------------
    def _operand(self, x):
        if isinstance(x, Sparse3D):
            return x._base
        if isinstance(x, (numbers.Number, np.generic, core.Sparse3D)) or x is None or sp.issparse(x):
            return x
        arr = np.asarray(x)
        if arr.ndim <= 1:
            return arr  # scalar-like or per-source: broadcasts the same in both versions
        # 1.x broadcast array operands against the stamp block (nrows, ncols, nsubimages)
        try:
            block = np.broadcast_to(arr, self.subshape)
        except ValueError:
            raise ValueError(
                f"operand with shape {arr.shape} does not broadcast against the stamp shape "
                f"{self.subshape} (nrows, ncols, nsubimages)"
            ) from None
        return self._base.with_data(block)

    def _wrap(self, result):
        if isinstance(result, core.Sparse3D):
            return self._like(result)
        if isinstance(result, tuple):
            return tuple(self._wrap(r) for r in result)
        return result

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if ufunc is np.matmul and method == "__call__":
            return self._matmul(*inputs)
        if method == "__call__" and any(sp.issparse(x) and not isinstance(x, Sparse3D) for x in inputs):
            return self._scipy_operation(ufunc, inputs)
        arrays = [x for x in inputs if isinstance(x, Sparse3D)]
        # 1.x: a ROISparse3D combined with a plain Sparse3D gave a plain Sparse3D (either order)
        first = next((x for x in arrays if type(x) is Sparse3D), arrays[0])
        coords = {x.coord for x in arrays}
        if len(coords) > 1:
            raise ValueError(
                f"operands are translated to different offsets {sorted(coords)}; "
                "translate them to the same offset (or reset() them) first"
            )
        args = [first._operand(x) for x in inputs]
        result = first._wrap(getattr(ufunc, method)(*args, **kwargs))
        if len(inputs) == 1 and isinstance(result, Sparse3D) and first._edited() is not None:
            # 1.x applied np.exp & co. to the COO entries too, so edited entries stay edited
            data, coords = first._view
            result._coo_view()
            values = getattr(ufunc, method)(np.asarray(data), **kwargs)
            result._view = [values, tuple(c.copy() for c in coords)]
        return result

    # -- 1.x indexing: [:, :, i] and [:, :, i:j] ------------------------------------------------
    def __getitem__(self, index) -> Sparse3D:
        if not isinstance(index, tuple) or len(index) != 3:
            raise IndexError("Indexing must be for three dimensions (e.g., [:, :, 0]).")
        if not all(isinstance(k, slice) and k == slice(None) for k in index[:2]):
            raise IndexError("Only full slices (:) are allowed for the first two dimensions.")
        last = index[2]
        if isinstance(last, (int, np.integer)) and not isinstance(last, (bool, np.bool_)):
            n = self.nsubimages
            if not -n <= last < n:
                raise IndexError(f"index {last} is out of bounds for {n} subimages")
            last = int(last) % n
            last = slice(last, last + 1)
        elif not isinstance(last, slice):
            raise IndexError("The last index must be an integer or a slice.")
        return self._like(self._base[:, :, last])

    def to_ROISparse3D(self, nROIs: int, ROI_size: tuple[int, int], ROI_corners: list):
        """The same stamps seen through ``nROIs`` windows of ``ROI_size`` at ``ROI_corners``."""
        from ._roi import ROISparse3D

        obj = ROISparse3D.__new__(ROISparse3D)
        obj._set_rois(nROIs, ROI_size, ROI_corners)
        obj._attach(self._base, self.coord)
        return obj


def _elementwise_product(a, b):
    return a.multiply(b) if sp.issparse(a) else b.multiply(a)


_SCIPY_OPERATORS = {
    np.add: operator.add,
    np.subtract: operator.sub,
    np.multiply: _elementwise_product,
    np.true_divide: operator.truediv,
    np.equal: operator.eq,
    np.not_equal: operator.ne,
    np.less: operator.lt,
    np.less_equal: operator.le,
    np.greater: operator.gt,
    np.greater_equal: operator.ge,
}

# in-place operators rebind (S += 1 is S = S + 1), as they did in 1.x
for _name in [n for n in dir(NDArrayOperatorsMixin) if n.startswith("__i") and n.endswith("__")]:
    if _name not in ("__init__", "__init_subclass__", "__invert__"):
        setattr(Sparse3D, _name, _rebind)
del _name


def _rebuild(cls, base, coord, parameters, cleared=False):
    obj = cls.__new__(cls)
    if parameters:
        obj._set_rois(**parameters)
    obj._attach(base, coord)
    if cleared:
        obj.clear()
    return obj
