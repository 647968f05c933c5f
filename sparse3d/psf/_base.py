"""Stamp placement and the PSF model protocol shared by every model.

A model only has to say how it evaluates on a stamp grid (:meth:`PSFModel._evaluate`); this
module validates source positions and shape parameters, places one stamp per source on its
nearest pixel, and wraps values and derivatives as :class:`~sparse3d.Sparse3D` arrays that
share one structure.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .. import _pool
from .._structure import structure_from_positions
from ..core import Sparse3D

__all__ = ["PSFModel", "Placement", "place", "stamp_sizes_by_flux"]


def _as_stamp_shape(stamp_shape) -> tuple[int, int]:
    if isinstance(stamp_shape, (int, np.integer)) and not isinstance(stamp_shape, bool):
        stamp_shape = (stamp_shape, stamp_shape)
    try:
        items = tuple(stamp_shape)
    except TypeError:
        items = ()
    ok = len(items) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v > 0 for v in items
    )
    if not ok:
        raise ValueError(f"stamp_shape must be two positive integers (nr, nc); got {stamp_shape!r}")
    return int(items[0]), int(items[1])


def _per_source_shapes(stamp_shape, nsources: int) -> np.ndarray | None:
    """``(nsources, 2)`` stamp shapes when ``stamp_shape`` is a NumPy array, else None.

    An ndarray means per-source sizes: ``(nsources,)`` square sizes or ``(nsources, 2)``
    shapes; an int or a pair (tuple/list) is one shape for every source.
    """
    if not isinstance(stamp_shape, np.ndarray):
        return None
    arr = stamp_shape
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"stamp_shape: per-source stamp sizes must be integers; got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = np.stack([arr, arr], axis=1)
    if arr.shape != (nsources, 2):
        raise ValueError(
            f"stamp_shape: per-source stamp sizes must have shape ({nsources},) or ({nsources}, 2) "
            f"(one per source); got {stamp_shape.shape}"
        )
    if arr.size and arr.min() <= 0:
        raise ValueError("stamp_shape: per-source stamp sizes must be positive")
    return arr.astype(np.int64)


def stamp_sizes_by_flux(flux, edges, sizes) -> np.ndarray:
    """Per-source square stamp sizes from fluxes, for ``design(..., stamp_shape=...)``.

    A source with ``edges[i - 1] <= flux < edges[i]`` gets ``sizes[i]`` (fainter than
    ``edges[0]``: ``sizes[0]``; at least ``edges[-1]``: ``sizes[-1]``).

    Parameters
    ----------
    flux : array_like, shape (nsources,)
        Source fluxes (any unit, as ``edges``).
    edges : array_like, ascending, shape (m,)
    sizes : array_like of int, shape (m + 1,)

    Examples
    --------
    >>> stamp_sizes_by_flux([10.0, 5e4, 300.0], edges=[1e4], sizes=[11, 41])
    array([11, 41, 11])
    """
    flux = np.asarray(flux, dtype=float)
    edges = np.asarray(edges, dtype=float)
    sizes = np.asarray(sizes)
    if edges.ndim != 1 or np.any(np.diff(edges) <= 0):
        raise ValueError("stamp_sizes_by_flux: edges must be a 1-D ascending array")
    if sizes.shape != (edges.size + 1,) or not np.issubdtype(sizes.dtype, np.integer) or (sizes <= 0).any():
        raise ValueError(
            f"stamp_sizes_by_flux: sizes must be {edges.size + 1} positive integers (one more than edges)"
        )
    if not np.isfinite(flux).all():
        raise ValueError("stamp_sizes_by_flux: flux must be finite")
    return sizes[np.searchsorted(edges, flux, side="right")].astype(np.int64)


def _as_positions(value, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an array of source positions (numbers); got {value!r}") from None
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one position per source); got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must hold finite source positions; found NaN or inf")
    return arr


def stamp_offsets(n: int) -> np.ndarray:
    """Pixel offsets of a stamp of ``n`` pixels from its centre pixel: ``-(n // 2) … n - 1 - n // 2``.

    An even stamp has its extra pixel on the low side (``n = 10`` gives ``-5 … 4``, the
    tutorial's ``np.mgrid[:10] - 10 // 2``).
    """
    return np.arange(n) - n // 2


@dataclass(frozen=True)
class Placement:
    """Where the stamps of a set of sources go.

    Attributes
    ----------
    row, col : numpy.ndarray of int, shapes (nr, 1, n) and (1, nc, n)
        Absolute pixel of every stamp row / column (broadcast by :class:`Sparse3D`).
    dr, dc : numpy.ndarray of float, shapes (nr, 1, n) and (1, nc, n)
        Pixel centre minus source position, along rows / columns.
    source_row, source_col : numpy.ndarray of float, shape (n,)
        The source positions.
    """

    row: np.ndarray
    col: np.ndarray
    dr: np.ndarray
    dc: np.ndarray
    source_row: np.ndarray
    source_col: np.ndarray

    @property
    def nsources(self) -> int:
        return self.row.shape[2]


def place(row, col, stamp_shape) -> Placement:
    """Stamps of ``stamp_shape`` centred on each source's nearest pixel (ties go up).

    A source at ``row = 10.5`` is placed on pixel 11 (``floor(row + 0.5)``), so its offset
    from the stamp's centre pixel lies in ``[-0.5, 0.5)``.
    """
    nr, nc = _as_stamp_shape(stamp_shape)
    r = _as_positions(row, "row")
    c = _as_positions(col, "col")
    if r.shape != c.shape:
        raise ValueError(f"row and col must have the same length; got {r.size} and {c.size}")
    ir = np.floor(r + 0.5)
    ic = np.floor(c + 0.5)
    orow = stamp_offsets(nr)[:, None, None]
    ocol = stamp_offsets(nc)[None, :, None]

    def lent(ufunc, offsets, per_source, dtype):  # ufunc(offsets, per_source) in a lent buffer:
        shape = np.broadcast_shapes(offsets.shape, per_source.shape)  # the next placement reuses
        return ufunc(offsets, per_source, out=_pool.lend(shape, dtype))  # its faulted-in pages

    return Placement(
        row=lent(np.add, orow, ir.astype(np.int64), np.int64),
        col=lent(np.add, ocol, ic.astype(np.int64), np.int64),
        dr=lent(np.subtract, orow, r - ir, np.result_type(orow, r)),
        dc=lent(np.subtract, ocol, c - ic, np.result_type(ocol, c)),
        source_row=r,
        source_col=c,
    )


def _fresh(values) -> bool:
    """Whether ``values`` is an array a model has just computed: it owns its C-contiguous
    memory and nothing else refers to it. Counted references: the holder in :meth:`design`
    (a local, or the derivatives' dict and a loop name), the adopting function's argument,
    this function's, and getrefcount's. Only where reference counts are exact (CPython < 3.14)."""
    return (
        _pool._EXACT_REFCOUNTS
        and isinstance(values, np.ndarray)
        and values.ndim == 3
        and values.flags.owndata
        and values.flags.c_contiguous
        and values.flags.writeable
        and sys.getrefcount(values) <= 4
    )


def _adopt(values, row, col, imshape, imcorner) -> Sparse3D:
    """``Sparse3D(values, row, col, imshape, imcorner)`` without copying ``values`` when a model
    has just computed them (:func:`_fresh`): the design takes the buffer over (read-only)."""
    if not _fresh(values):
        return Sparse3D(values, row, col, imshape, imcorner)
    return Sparse3D._from_parts(values, structure_from_positions(row, col, values.shape, imshape, imcorner))


def _adopt_derivatives(L: Sparse3D, derivs: dict, names) -> dict[str, Sparse3D]:
    """``{name: L.with_data(derivs[name])}``, without copying the blocks a model has just
    computed when no one else holds their dict (counted: its holder in :meth:`design`, this
    argument and getrefcount's) and each block is :func:`_fresh`."""
    own = _pool._EXACT_REFCOUNTS and sys.getrefcount(derivs) == 3
    out = {}
    for name in names:
        d = derivs[name]  # held by the dict, this name, _fresh's argument and getrefcount's
        if own and _fresh(d) and d.shape == L.stamp_shape:
            out[name] = Sparse3D._from_parts(d, L._structure)
        else:
            out[name] = L.with_data(d)
    return out


def as_shape_param(value, name: str, *, low: float | None = 0.0, strict: bool = True) -> np.ndarray:
    """A shape parameter: a finite number or 1-D array, above ``low`` (``None``: any value)."""
    try:
        arr = np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or a 1-D array of numbers; got {value!r}") from None
    if arr.ndim > 1:
        raise ValueError(
            f"{name} must be a number or a 1-D array (one value per source); got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite; found NaN or inf")
    if low is not None and ((arr <= low).any() if strict else (arr < low).any()):
        bad = arr[arr <= low] if strict else arr[arr < low]
        sign = ">" if strict else ">="
        raise ValueError(f"{name} must be {sign} {low:g}; got {bad.ravel()[0]!r}")
    arr.flags.writeable = False
    return arr


class PSFModel:
    """Protocol of every PSF model: shape parameters plus :meth:`design`.

    Subclasses set :attr:`params` (the names of their shape parameters, in order) and
    implement ``_evaluate(placement, params, wanted)``. Shape parameters are numbers or
    ``(nsources,)`` arrays; arrays must all have the same length.
    """

    #: Names of the shape parameters, e.g. ``("sigma",)``.
    params: tuple[str, ...] = ()
    #: Whether derivatives with respect to the shape parameters are available.
    _shape_derivatives = True

    def _set_params(self, **values: np.ndarray) -> None:
        lengths = {k: v.shape[0] for k, v in values.items() if v.ndim == 1}
        if len(set(lengths.values())) > 1:
            desc = ", ".join(f"{k} has {n}" for k, n in lengths.items())
            raise ValueError(f"per-source shape parameters must have the same length; {desc} values")
        self._values = values

    def __getattr__(self, name: str):
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        def fmt(v):
            return f"{float(v):g}" if v.ndim == 0 else f"array(shape={v.shape})"

        args = ", ".join(f"{k}={fmt(v)}" for k, v in self._values.items())
        return f"{type(self).__name__}({args})"

    @property
    def derivative_names(self) -> tuple[str, ...]:
        """What :meth:`design` can differentiate with respect to."""
        return ("row", "col", *(self.params if self._shape_derivatives else ()))

    def _param_values(self, nsources: int) -> dict[str, np.ndarray]:
        for k, v in self._values.items():
            if v.ndim == 1 and v.shape[0] != nsources:
                raise ValueError(
                    f"{k} has {v.shape[0]} values but row and col give {nsources} sources; "
                    "pass a number or one value per source"
                )
        return self._values

    def _wanted(self, derivatives) -> tuple[str, ...]:
        if isinstance(derivatives, str):
            derivatives = (derivatives,)
        if not isinstance(derivatives, Iterable):
            raise TypeError(f"derivatives must be a tuple of names from {self.derivative_names}")
        wanted = tuple(derivatives)
        bad = [d for d in wanted if d not in self.derivative_names]
        if bad:
            raise ValueError(
                f"derivatives: {type(self).__name__} has no derivative {bad[0]!r}; "
                f"choose from {self.derivative_names}"
            )
        return wanted

    def design(
        self,
        row,
        col,
        imshape: tuple[int, int],
        stamp_shape: tuple[int, int] = (11, 11),
        imcorner: tuple[int, int] = (0, 0),
        derivatives: Iterable[str] | None = None,
    ) -> Sparse3D | tuple[Sparse3D, dict[str, Sparse3D]]:
        """The model of every source on its stamp, as a ``(H, W, nsources)`` design.

        Parameters
        ----------
        row, col : array_like of float, shape (nsources,)
            Source positions in absolute pixel coordinates; integer coordinates are pixel
            centres (see :mod:`sparse3d.psf`).
        imshape : tuple of int
            ``(H, W)`` of the image.
        stamp_shape : tuple of int or numpy.ndarray, optional
            ``(nr, nc)`` of every stamp (an int for a square one), or **per source** a NumPy
            integer array: ``(nsources,)`` square sizes or ``(nsources, 2)`` shapes (see
            :func:`stamp_sizes_by_flux` for sizes from fluxes). Per-source sizes give an array
            with one stamp group per distinct shape (:attr:`Sparse3D.groups`), sources in the
            order given. Each stamp is centred on the source's nearest pixel
            (``floor(row + 0.5)``: ties go up); an even size puts its extra pixel on the low
            side (10 → offsets ``-5 … 4``).
        imcorner : tuple of int, optional
            Absolute position of image pixel ``[0, 0]``.
        derivatives : tuple of str, optional
            Names from :attr:`derivative_names` — ``"row"``, ``"col"`` (the source position)
            and, for analytic models, the shape parameters in :attr:`params`.

        Returns
        -------
        Sparse3D, or (Sparse3D, dict)
            The design ``L``; with ``derivatives``, also ``{name: dL/dname}``, each with the
            same structure as ``L`` (so ``np.concatenate([L, d["row"], d["col"]], axis=2)``
            is a valid design). ``d["row"]`` is the derivative with respect to each source's
            own row position; ``d["sigma"]`` with respect to each source's own σ, so for one
            σ shared by the field the image derivative is ``d["sigma"].dot(w)``.
        """
        wanted = () if derivatives is None else self._wanted(derivatives)
        r = _as_positions(row, "row")
        shapes = _per_source_shapes(stamp_shape, r.size)
        if shapes is not None:
            return self._grouped_design(
                r, _as_positions(col, "col"), imshape, shapes, imcorner, wanted, derivatives
            )
        p = place(row, col, stamp_shape)
        values, derivs = self._evaluate(p, self._param_values(p.nsources), wanted)
        L = _adopt(values, p.row, p.col, imshape, imcorner)
        if derivatives is None:
            return L
        return L, _adopt_derivatives(L, derivs, wanted)

    def _grouped_design(self, r, c, imshape, shapes, imcorner, wanted, derivatives):
        """:meth:`design` with per-source stamp shapes: one stamp group per distinct shape."""
        from .._functions import build_grouped

        if r.shape != c.shape:
            raise ValueError(f"row and col must have the same length; got {r.size} and {c.size}")
        params = self._param_values(r.size)
        uniq, first = np.unique(shapes, axis=0, return_index=True)
        pieces, dpieces = [], {name: [] for name in wanted}
        for shape in uniq[np.argsort(first)] if r.size else [np.array([1, 1])]:
            idx = np.flatnonzero((shapes == shape).all(axis=1)) if r.size else np.zeros(0, np.int64)
            p = place(r[idx], c[idx], (int(shape[0]), int(shape[1])))
            sub = {k: (v[idx] if v.ndim == 1 else v) for k, v in params.items()}
            values, derivs = self._evaluate(p, sub, wanted)
            L = _adopt(values, p.row, p.col, imshape, imcorner)
            pieces.append((L, idx))
            for name, d in _adopt_derivatives(L, derivs, wanted).items():
                dpieces[name].append((d, idx))
        L = build_grouped(pieces)
        if derivatives is None:
            return L
        return L, {name: build_grouped(dpieces[name]) for name in wanted}

    def _evaluate(self, p: Placement, params: dict, wanted: tuple[str, ...]):  # pragma: no cover - abstract
        """``(values, {name: derivative})`` on the stamp grid of ``p``; arrays ``(nr, nc, n)``."""
        raise NotImplementedError
