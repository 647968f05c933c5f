"""`Sparse3D`: stamp values on a shared :class:`~sparse3d._structure.StampStructure`.

The class reads as one API; its parts live in their own files: how the values are held
(:mod:`.values`), stamp groups (:mod:`.groups`) and conversions (:mod:`.conversions`).
Operators and ufuncs live in :mod:`sparse3d._ufuncs`; NumPy functions in the registry of
:mod:`sparse3d._functions`.
"""

from __future__ import annotations

import html
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from .. import _deferred, _functions, _ufuncs
from .._structure import _as_pair, readonly_view, structure_from_positions
from .conversions import _Conversions
from .groups import _join_groups, _rebuild_grouped, _StampGroups
from .values import _checked_values, _owned_values, _ValueStorage

if TYPE_CHECKING:  # pragma: no cover
    from ..fit import FitResult
    from ..roi import ROISparse3D

__all__ = ["Sparse3D", "_rebuild", "_rebuild_grouped"]


class Sparse3D(_ValueStorage, _StampGroups, _Conversions, NDArrayOperatorsMixin):
    """A 3-D sparse array ``(row, col, source)`` made of small dense stamps, one per source.

    Each source ``k`` is non-zero only on its stamp: the ``nr × nc`` pixels at absolute
    positions ``row[:, :, k], col[:, :, k]``. The logical array has shape
    ``(H, W, nsources)``; its value at ``(r, c, k)`` is stamp ``k``'s value at pixel
    ``(imcorner[0] + r, imcorner[1] + c)`` and zero elsewhere::

        imcorner ─►┌────────── image (H × W) ──────────┐
                   │  ┌────┐ source 0                  │
                   │  │    │         ┌────┐ source 1   │
                   │  └────┘         │    │            │
                   │                 └────┘         ┌──┼─┐ off-image stamp pixels keep their
                   └────────────────────────────────┼──┘ │ values (translate brings them back)
                                                    └────┘ but are not array contents

    **Stamp semantics.** NumPy ufuncs and operators act on the stored stamp values only:
    ``np.exp(S)`` is zero off the stamps (``sparse.COO`` would give ``exp(0) = 1`` there).

    Parameters
    ----------
    data : array_like, shape (nr, nc, nsources)
        Stamp values, numeric or boolean. Copied (in native byte order); the array is
        immutable. ``longdouble`` is refused.
    row, col : array_like of int
        Absolute pixel positions of every stamp pixel; must broadcast to ``data.shape``
        (``R[:, :, None] + row_int`` works). Integer-valued floats are accepted. Positions
        within one source's stamp must be distinct, and ``|position| <= 2**61``.
    imshape : tuple of int
        ``(H, W)``, the image size (``H * W <= 2**62``).
    imcorner : tuple of int, optional
        Absolute position of image pixel ``[0, 0]``. Default ``(0, 0)``.

    Raises
    ------
    ValueError
        If a stamp covers one pixel more than once, or positions or bounds are beyond the
        range in which pixel arithmetic is exact in int64.
    TypeError
        If ``data`` is not numeric or boolean, or is ``longdouble``.

    Notes
    -----
    **Stamp groups.** ``np.concatenate`` of arrays with different stamp shapes (and PSF
    designs with per-source stamp sizes) gives one array whose sources are grouped by stamp
    shape: see :attr:`groups`, :attr:`stamp_shapes` and :attr:`group_sources`. It behaves as
    any other array; only the single-block attributes (:attr:`data`, :attr:`row`,
    :attr:`col`, :attr:`in_image`, :attr:`stamp_shape`) raise a ``ValueError`` naming
    ``S.groups``.

    Arrays are immutable values: methods return new arrays (``translate`` included) and
    in-place operators rebind (``S += 1`` is ``S = S + 1``). Arrays built from the same or
    equal ``row``/``col`` share one structure and can be combined elementwise.

    Examples
    --------
    >>> import numpy as np
    >>> from sparse3d import Sparse3D
    >>> R, C = np.mgrid[:3, :3] - 1
    >>> row = R[:, :, None] + np.array([5, 10])
    >>> col = C[:, :, None] + np.array([5, 2])
    >>> S = Sparse3D(np.ones((3, 3, 2)), row, col, imshape=(16, 16))
    >>> S
    <(16, 16, 2) Sparse3D array of type float64>
    >>> S.dot(np.array([1.0, 2.0])).sum()
    np.float64(27.0)
    """

    #: ``_vals``: the values block, or None while the values are pending (``_lazy``: a
    #: deferred expression, :mod:`sparse3d._deferred`; or joined groups, :mod:`.values`);
    #: read them through ``_values``.
    __slots__ = ("_vals", "_lazy", "_structure", "__dict__", "__weakref__")

    def __init__(self, data, row, col, imshape, imcorner=(0, 0)):
        bounds = False
        arr = np.asarray(data) if isinstance(data, np.ndarray) else None
        if (
            arr is not None
            and arr.ndim == 3
            and arr.dtype in (np.float32, np.float64)
            and arr.dtype.isnative
            and arr.flags.c_contiguous
            and arr.size >= _deferred.MIN_ELEMENTS
        ):  # copied with the bounds later elementwise operations may need (one pass)
            values, bounds = _deferred.copy_with_bounds(arr)
        else:
            values = _owned_values(data)
        if values.ndim != 3:
            raise ValueError(
                f"data must be 3-D with shape (nr, nc, nsources); got {values.ndim}-D shape {values.shape}"
            )
        self._values = values
        self._structure = structure_from_positions(row, col, values.shape, imshape, imcorner)
        if bounds is not False:
            self.__dict__["_bounds"] = bounds

    def with_data(self, data) -> Sparse3D:
        """A new array with the same stamps (positions, bounds) and new stamp values.

        This is how stamp-shaped ``(nr, nc, nsources)`` values are combined with an array:
        ``S.with_data(S.data * weights3d)``. Plain ndarrays in operators are broadcast
        against the *logical* shape ``(H, W, nsources)`` instead.

        Parameters
        ----------
        data : array_like, shape ``S.stamp_shape``
            The new stamp values (copied).
        """
        s = self._structure
        if s.grouped:
            blocks = list(data) if isinstance(data, (list, tuple)) else None
            if blocks is None or len(blocks) != len(s.groups):
                raise ValueError(
                    f"with_data on an array with {len(s.groups)} stamp groups takes a list of "
                    f"{len(s.groups)} blocks, one per group (shapes {[g.block_shape for g in s.groups]})"
                )
            parts = [g.with_data(b) for g, b in zip(self.groups, blocks)]
            return _join_groups(parts, s)
        values = _owned_values(data)
        if values.shape != self.stamp_shape:
            raise ValueError(f"data must have the stamp shape {self.stamp_shape}; got {values.shape}")
        return Sparse3D._from_parts(values, self._structure)

    @property
    def data(self) -> np.ndarray:
        """Stamp values, ``(nr, nc, nsources)``, read-only (off-image pixels included).

        Grouped arrays (several stamp shapes) raise ``ValueError``: use ``S.groups[i].data``.
        """
        if self._structure.grouped:
            self._structure._single_block("data")
        return readonly_view(self._values)

    @property
    def row(self) -> np.ndarray:
        """Absolute row of every stamp pixel, ``(nr, nc, nsources)``, read-only (single shape only)."""
        return readonly_view(self._structure.row)

    @property
    def col(self) -> np.ndarray:
        """Absolute column of every stamp pixel, ``(nr, nc, nsources)``, read-only (single shape only)."""
        return readonly_view(self._structure.col)

    @property
    def in_image(self) -> np.ndarray:
        """Boolean ``(nr, nc, nsources)``: which stamp pixels are inside the image, read-only.

        Single shape only (grouped arrays: ``S.groups[i].in_image``).
        """
        if self._structure.grouped:
            self._structure._single_block("in_image")
        return readonly_view(self._structure.in_image)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Logical shape ``(H, W, nsources)``."""
        return self._structure.shape

    @property
    def ndim(self) -> int:
        return 3

    @property
    def size(self) -> int:
        """Number of logical elements, ``H * W * nsources`` (NumPy's meaning)."""
        H, W, n = self.shape
        return H * W * n

    @property
    def dtype(self) -> np.dtype:
        node = self._lazy  # read before _vals: evaluation sets _vals first, then clears _lazy
        if node is not None:
            return node.dtype
        groups = self._pending_groups
        return self._values.dtype if groups is None else groups[0].dtype

    @property
    def nnz(self) -> int:
        """Number of stored in-image stamp elements."""
        return self._structure.nnz

    @property
    def nsources(self) -> int:
        return self._structure.nsources

    @property
    def imshape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self._structure.imshape

    @property
    def imcorner(self) -> tuple[int, int]:
        """Absolute position of image pixel ``[0, 0]``."""
        return self._structure.imcorner

    @property
    def stamp_shape(self) -> tuple[int, int, int]:
        """``(nr, nc, nsources)``, the shape of :attr:`data`, :attr:`row`, :attr:`col`.

        Grouped arrays raise ``ValueError``: see :attr:`stamp_shapes` and :attr:`groups`.
        """
        if self._structure.grouped:
            self._structure._single_block("stamp_shape")
        return self._structure.block_shape

    @property
    def nbytes(self) -> int:
        """Bytes held by values and positions (the stored ones: translations, concatenations share them)."""
        s = self._structure
        groups = s.groups if s.grouped else (s,)
        values = sum(b.nbytes for b in self._group_blocks())
        return values + sum(g._row.nbytes + g._col.nbytes for g in groups)

    @property
    def real(self) -> Sparse3D:
        return np.real(self)

    @property
    def imag(self) -> Sparse3D:
        return np.imag(self)

    @property
    def T(self):
        """Reversed axes, as a ``sparse.COO`` (a transposed array has no stamp structure)."""
        return self.transpose()

    def __len__(self) -> int:
        """Number of sources."""
        return self.nsources

    def __iter__(self):
        raise TypeError("Sparse3D is not iterable; select sources with S[:, :, i] or S[:, :, i:j]")

    def __bool__(self) -> bool:
        if self.size == 1:
            return bool(self.sum())
        raise ValueError(
            "The truth value of a Sparse3D with more than one element is ambiguous; use np.any or np.all"
        )

    __hash__ = None  # arrays are not hashable (the mixin's __eq__ is elementwise)

    # -- representation -------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"<{self.shape} Sparse3D array of type {self.dtype}>"

    def _repr_html_(self) -> str:
        H, W = self.imshape
        r0, c0 = self.imcorner
        rows = [
            ("shape", self.shape),
            ("dtype", self.dtype),
            ("nnz (in-image)", f"{self.nnz:,}"),
            (
                "stamp shape" if len(self.stamp_shapes) == 1 else "stamp groups",
                ", ".join(
                    f"{nr}×{nc} × {idx.size}" for (nr, nc), idx in zip(self.stamp_shapes, self.group_sources)
                ),
            ),
            ("image rows", f"{r0} … {r0 + H - 1}"),
            ("image cols", f"{c0} … {c0 + W - 1}"),
            ("memory", f"{self.nbytes / 1024**2:.1f} MiB"),
        ]
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in rows
        )
        return f"<table><caption><b>Sparse3D</b></caption>{body}</table>"

    # -- NumPy protocols ------------------------------------------------------------------
    __array_ufunc__ = _ufuncs.array_ufunc
    __array_function__ = _functions.array_function

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "Sparse3D will not be converted to a dense ndarray implicitly; call S.todense() "
            "(or S.to_sparse() / S.tocsr() to stay sparse)"
        )

    def astype(self, dtype, copy: bool = True) -> Sparse3D:
        """Stamp values cast to ``dtype``, same structure."""
        dtype = np.dtype(dtype)
        if dtype == self.dtype and not copy:
            return self
        if self._pending_groups is not None:  # group by group, still without joining them
            return _join_groups([g.astype(dtype) for g in self.groups], self._structure)
        values = _checked_values(self._values.astype(dtype), f"astype({dtype})")
        return Sparse3D._from_parts(values, self._structure)

    def copy(self) -> Sparse3D:
        """A copy (arrays are immutable, so this is rarely needed)."""
        if self._pending_groups is not None:
            return _join_groups([g.copy() for g in self.groups], self._structure)
        return Sparse3D._from_parts(self._values.copy(), self._structure)

    def __copy__(self) -> Sparse3D:
        return self

    def __deepcopy__(self, memo) -> Sparse3D:
        return self.copy()

    def __reduce__(self):
        s = self._structure
        if s.grouped:
            return (_rebuild_grouped, (list(self.groups), s.sources))
        return (_rebuild, (self._values, s.row, s.col, s.imshape, s.imcorner))

    # -- geometry -------------------------------------------------------------------------
    def translate(self, position: tuple[int, int]) -> Sparse3D:
        """A new array with every stamp shifted by whole pixels ``(drow, dcol)``.

        Stamps that leave the image drop out of :attr:`nnz` but keep their values, so
        translating back restores them. Unlike sparse3d 1.x, this does not mutate.
        """
        drow, dcol = _as_pair(position, "position", positive=False)
        if drow == 0 and dcol == 0:
            return self
        moved = self._with_structure(self._structure.translated(drow, dcol))
        moved.__dict__["_family"] = self._family  # same values, same stored positions
        return moved

    @cached_property
    def _family(self) -> dict:
        """Caches shared by this array and its translations (same values, same stored positions).

        ``"nproducts"`` counts the family's products; ``"sorted_values"`` holds
        the values in the structure's :meth:`~sparse3d._structure.StampStructure.sorted_order`.
        """
        return {}

    def shift(self, shift) -> Sparse3D:
        """A new array with every stamp moved by fractional pixels ``(drow, dcol)``.

        The whole-pixel part (the nearest integer, ties up) moves the stamps exactly as
        :meth:`translate`; the remaining fraction in ``[-0.5, 0.5)`` resamples the values inside
        each stamp by band-limited (sinc) interpolation over all the stamp's samples, with zeros
        outside it. Integer coordinates are pixel centres (see :mod:`sparse3d.psf`).

        Parameters
        ----------
        shift : tuple
            ``(drow, dcol)``: two numbers (one move for every source) or two ``(nsources,)``
            arrays (one move per source).

        Notes
        -----
        Accuracy, against the PSF re-evaluated at the moved position: for a Gaussian with
        σ ≥ 1 px whose stamp contains it (≳ 5σ on each side) and ``|shift| ≤ 0.5`` px, the
        error is ≤ 7e-3 of the peak at σ = 1 px (the aliasing limit of the samples) and
        ≲ 1e-4 at σ = 1.5 px; a Moffat's sharper core needs α ≳ 3.5 px (β = 3.5) for 1e-2.
        Flux that the move would bring in from outside the stamp is
        missing and values near an edge that is not ≈ 0 ring (sinc): shift stamps that hold a
        whole, decaying PSF. Fractional shifts need upright stamps (built as
        ``R[:, :, None] + row``). Integer and boolean values become float64.
        See :mod:`sparse3d._interpolate` for the kernel.
        """
        from .._interpolate import shift_stamps

        return shift_stamps(self, shift)

    def __getitem__(self, key):
        return _functions.getitem(self, key)

    def transpose(self, *axes):
        """Identity for ``(0, 1, 2)``; otherwise a transposed ``sparse.COO``."""
        if len(axes) == 1 and (axes[0] is None or isinstance(axes[0], (tuple, list))):
            axes = axes[0]
        if not axes:  # NumPy: no axes reverses them
            axes = (2, 1, 0)
        axes = tuple(_functions.axis_index(a, 3) for a in axes)
        if sorted(axes) != [0, 1, 2]:
            raise ValueError(f"axes don't match array: a permutation of (0, 1, 2) is needed; got {axes}")
        if axes == (0, 1, 2):
            return self
        return self.coo.transpose(axes)

    # -- products -------------------------------------------------------------------------
    def dot(self, other):
        """Matrix product over the source axis, NumPy's ``np.dot`` rules.

        ``w (nsources,)`` gives the image ``(H, W)``; ``w (nsources, k)`` gives ``(H, W, k)``;
        a scalar scales the array. Weights with a ``.unit`` (astropy Quantity) give a result
        with that unit.

        Off-stamp entries are structural zeros (as in ``scipy.sparse``): a NaN or inf weight
        reaches only its source's stamp pixels, where dense NumPy would put NaN on every
        pixel (``0 * nan``).
        """
        return _functions.dot(self, other)

    def sum(self, axis=None, dtype=None, keepdims=False):
        """Sum over ``axis`` (see :func:`numpy.sum`; the source axis gives a dense image)."""
        return np.sum(self, axis=axis, dtype=dtype, keepdims=keepdims)

    def mean(self, axis=None, dtype=None, keepdims=False):
        return np.mean(self, axis=axis, dtype=dtype, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return np.max(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        return np.min(self, axis=axis, keepdims=keepdims)

    def roi(self, corners, size) -> ROISparse3D:
        """The model seen through windows; see :class:`sparse3d.roi.ROISparse3D`."""
        from ..roi import ROISparse3D

        return ROISparse3D(self, corners, size)

    def fit(
        self,
        data,
        errors=None,
        prior_mu=None,
        prior_sigma=None,
        mask=None,
        *,
        background=None,
        dq=None,
        bad_bits=None,
        saturation=None,
    ) -> FitResult:
        """Least-squares weights (brightnesses) of every source, for one image or many frames.

        Solves ``min Σ ((data - S·w - sky) / errors)² + Σ ((w - prior_mu) / prior_sigma)²`` over
        the unmasked pixels through the normal equations, factorised **once** (a sparse
        Cholesky factorisation: the built-in nested-dissection supernodal one for large
        scenes, else ``qdldl``'s; see :func:`sparse3d.fit.fit_design` for the solvers)
        for all frames that share an error map and mask. With regular stamps the normal matrix
        is built from the stamps directly.

        Parameters
        ----------
        data : array_like, shape (H, W) or (H, W, k)
            An image or a stack of ``k`` frames (the layout ``np.dot(S, w)`` returns, so
            ``S.fit(S @ w).weights`` recovers ``w``). A ``numpy.ma.MaskedArray`` (its mask is
            honoured), an astropy ``Quantity`` or an ``NDData``/``CCDData``-like object
            (``.data``, ``.mask``, ``.uncertainty``, ``.unit``) is read accordingly. A Dask
            array gives lazy weights (without the keyword-only options below).
        errors : array_like, optional
            Per-pixel 1-σ uncertainties, shape ``(H, W)`` (shared by all frames, one
            factorisation) or the shape of ``data``; ``np.inf`` masks a pixel.
        prior_mu, prior_sigma : float or numpy.ndarray, optional
            Per-source Gaussian priors (scalars or ``(nsources,)``); they also regularise
            sources with little or no data.
        mask : numpy.ndarray of bool, optional
            ``(H, W)`` or per frame ``(H, W, k)``; True marks pixels to ignore.
        background : optional
            Sky fitted jointly: ``"constant"``, ``"plane"``, ``("poly", n)``,
            ``sparse3d.fit.BilinearGrid(tile=(64, 64))``, ... (one per frame of a stack).
        dq, bad_bits : optional
            Integer data-quality array and the bits that mark bad pixels.
        saturation : float, optional
            Pixels at or above this level are masked and their sources flagged.

        Returns
        -------
        FitResult
            ``.weights`` ``(nsources,)`` or ``(nsources, k)``; ``.weights_err`` (1-σ, the
            diagonal of the inverse normal matrix by selected inversion — no dense inverse);
            ``.background``, ``.background_err``, ``.background_image``; ``.model``,
            ``.residuals``; ``.chi2``, ``.source_chi2``, ``.flags``; ``.covariance()``;
            ``.to_xarray()``, ``.to_table()``. Sources with no unmasked pixel and no prior get
            NaN and one warning that counts them.

        Raises
        ------
        sparse3d.SingularNormalMatrixError
            When sources that do have data are degenerate (e.g. identical stamps); the
            exception lists them in ``.sources``.
        NotImplementedError
            For Dask data with ``background``, ``dq``, ``bad_bits`` or ``saturation``.
        """
        backend = _functions.lazy_backend(data)
        if backend is not None:  # lazy weights on Dask frames; see sparse3d.dask.fit
            extra = {"background": background, "dq": dq, "bad_bits": bad_bits, "saturation": saturation}
            given = [k for k, v in extra.items() if v is not None]
            if given:
                raise NotImplementedError(
                    f"S.fit on Dask frames does not support {', '.join(given)}; compute the frames "
                    "(np.asarray) and fit them eagerly, or fit without these options"
                )
            return backend.fit(self, data, errors, prior_mu, prior_sigma, mask)
        from ..fit import fit_design

        return fit_design(
            self,
            data,
            imshape=self.imshape,
            errors=errors,
            prior_mu=prior_mu,
            prior_sigma=prior_sigma,
            mask=mask,
            background=background,
            dq=dq,
            bad_bits=bad_bits,
            saturation=saturation,
        )


def _rebuild(values, row, col, imshape, imcorner) -> Sparse3D:
    """Unpickle: caches are not carried, only values and positions.

    Everything is copied and validated: with pickle protocol 5 and out-of-band buffers the
    arrays handed in may alias the caller's memory, which must not become ours.
    """
    values = _owned_values(values)
    structure = structure_from_positions(row, col, values.shape, imshape, imcorner)
    return Sparse3D._from_parts(values, structure)


# In-place operators rebind instead of mutating: returning NotImplemented from ``__iadd__``
# makes Python fall back to ``__add__``, so ``S += 1`` means ``S = S + 1``.
def _rebind(self, other):
    return NotImplemented


for _name in [n for n in dir(NDArrayOperatorsMixin) if n.startswith("__i") and n.endswith("__")]:
    if _name not in ("__init__", "__init_subclass__", "__invert__"):
        setattr(Sparse3D, _name, _rebind)
del _name
