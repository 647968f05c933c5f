"""Labeled xarray views of a :class:`~sparse3d.Sparse3D`, and the way back.

Two views:

* **image view** — ``S.to_xarray()``: dims ``("row", "col", "source")`` with *absolute* pixel
  coordinates. The DataArray wraps the Sparse3D itself as its duck array (NEP 13/18), so
  nothing is densified: ``.sum("source")`` is a model image, ``.sel(source=i)`` a single
  stamp (a ``sparse.COO`` image), ``.sel(row=slice(...), col=slice(...))`` a cutout.
* **stamp view** — ``S.to_xarray(view="stamps")``: the dense stamp values with dims
  ``("stamp_row", "stamp_col", "source")`` and non-dimension coordinates ``row``/``col``
  (absolute position of every stamp pixel). This is what one plots
  (``da.sel(source=12).plot()``) and saves (``da.to_netcdf(path)``);
  :func:`from_xarray` rebuilds the exact array from it.

**Stamp groups.** The image view of an array with several stamp shapes is the same lazy
``(row, col, source)`` view. Its stamp view is an ``xarray.Dataset`` with **one variable per
stamp group**: ``stamps_i`` with dims ``(stamp_row_i, stamp_col_i, source_i)``, coordinates
``row_i``/``col_i`` (positions), ``source_i`` (the group's source labels) and
``source_index_i`` (the group's sources' places in the array, ``S.group_sources[i]``); the
dataset attributes carry ``imshape``, ``imcorner``, the dtype and the number of groups.
Nothing is padded, so no fill value is needed, and :func:`from_xarray` (also after
``ds.to_netcdf(path)`` and ``xr.open_dataset(path)``) rebuilds the exact array.

xarray is imported only when a view is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

    from .core import Sparse3D
    from .fit import FitResult

__all__ = ["to_xarray", "from_xarray", "fit_result_to_xarray", "IMAGE_DIMS", "STAMP_DIMS"]

IMAGE_DIMS = ("row", "col", "source")
STAMP_DIMS = ("stamp_row", "stamp_col", "source")
_DTYPE_ATTR = "sparse3d_dtype"


def _source_labels(S: Sparse3D, sources) -> np.ndarray:
    if sources is None:
        return np.arange(S.nsources)
    labels = np.asarray(sources)
    if labels.shape != (S.nsources,):
        raise ValueError(f"sources must have one label per source, shape ({S.nsources},); got {labels.shape}")
    return labels


def to_xarray(S: Sparse3D, sources=None, name: str | None = None, view: str = "image") -> xr.DataArray:
    """A labeled view of ``S``.

    Parameters
    ----------
    S : Sparse3D
        The array.
    sources : array_like, optional
        Labels for the ``source`` coordinate (default ``arange(nsources)``).
    name : str, optional
        Name of the DataArray.
    view : {"image", "stamps"}
        ``"image"``: lazy ``(row, col, source)`` view backed by ``S`` itself.
        ``"stamps"``: dense stamp values ``(stamp_row, stamp_col, source)`` with ``row``/``col``
        coordinates — the form to plot, save to netCDF and rebuild with :func:`from_xarray`.

    Returns
    -------
    xarray.DataArray
        Attributes ``imshape`` and ``imcorner`` carry the image bounds.

    Examples
    --------
    >>> import numpy as np
    >>> from sparse3d import Sparse3D
    >>> R, C = np.mgrid[:3, :3]
    >>> S = Sparse3D(np.ones((3, 3, 2)), R[:, :, None] + [2, 6], C[:, :, None] + [2, 6], (10, 10))
    >>> da = S.to_xarray()
    >>> float(da.sum("source").sum())
    18.0
    """
    import xarray as xr

    labels = _source_labels(S, sources)
    H, W = S.imshape
    r0, c0 = S.imcorner
    attrs = {"imshape": np.array(S.imshape), "imcorner": np.array(S.imcorner)}
    if view == "image":
        coords = {"row": r0 + np.arange(H), "col": c0 + np.arange(W), "source": labels}
        return xr.DataArray(S, dims=IMAGE_DIMS, coords=coords, name=name, attrs=attrs)
    if view == "stamps" and S._structure.grouped:
        return _grouped_stamp_view(S, labels, name, attrs)
    if view == "stamps":
        coords = {
            "source": labels,
            "row": (STAMP_DIMS, np.asarray(S.row)),
            "col": (STAMP_DIMS, np.asarray(S.col)),
        }
        attrs[_DTYPE_ATTR] = str(S.dtype)
        return xr.DataArray(np.array(S.data), dims=STAMP_DIMS, coords=coords, name=name, attrs=attrs)
    raise ValueError(f"view must be 'image' or 'stamps'; got {view!r}")


_GROUPS_ATTR = "sparse3d_groups"


def _grouped_stamp_view(S: Sparse3D, labels: np.ndarray, name: str | None, attrs: dict) -> xr.Dataset:
    """The stamp view of an array with several stamp groups: one variable per group."""
    import xarray as xr

    data_vars = {}
    for i, (g, idx) in enumerate(zip(S.groups, S.group_sources)):
        dims = (f"stamp_row_{i}", f"stamp_col_{i}", f"source_{i}")
        coords = {
            f"source_{i}": labels[idx],
            f"source_index_{i}": (dims[2], np.asarray(idx)),
            f"row_{i}": (dims, np.asarray(g.row)),
            f"col_{i}": (dims, np.asarray(g.col)),
        }
        data_vars[f"stamps_{i}"] = xr.DataArray(np.array(g.data), dims=dims, coords=coords)
    attrs = {**attrs, _DTYPE_ATTR: str(S.dtype), _GROUPS_ATTR: len(S.groups)}
    if name is not None:
        attrs["name"] = name
    return xr.Dataset(data_vars, attrs=attrs)


def _from_grouped_dataset(ds: xr.Dataset) -> Sparse3D:
    from ._functions import build_grouped

    pieces = []
    for i in range(int(np.atleast_1d(ds.attrs[_GROUPS_ATTR])[0])):
        if f"stamps_{i}" not in ds:
            raise ValueError(f"from_xarray: the grouped stamp view lacks the variable stamps_{i}")
        v = ds[f"stamps_{i}"]
        da = v.rename(
            {
                f"stamp_row_{i}": "stamp_row",
                f"stamp_col_{i}": "stamp_col",
                f"source_{i}": "source",
                f"row_{i}": "row",
                f"col_{i}": "col",
            }
        )
        da.attrs = {k: ds.attrs[k] for k in ("imshape", "imcorner", _DTYPE_ATTR) if k in ds.attrs}
        idx = np.asarray(v.coords[f"source_index_{i}"].values, dtype=np.int64)
        pieces.append((from_xarray(da), idx))
    n = sum(idx.size for _, idx in pieces)
    if not np.array_equal(np.sort(np.concatenate([idx for _, idx in pieces])), np.arange(n)):
        raise ValueError("from_xarray: the groups' source_index coordinates must partition range(nsources)")
    return build_grouped(pieces)


def from_xarray(da: xr.DataArray) -> Sparse3D:
    """Rebuild a :class:`~sparse3d.Sparse3D` from its stamp view (or an image view).

    Parameters
    ----------
    da : xarray.DataArray
        A stamp view (dims ``stamp_row``, ``stamp_col``, ``source`` in any order, coordinates
        ``row`` and ``col``, attributes ``imshape`` and ``imcorner``), e.g. as loaded back with
        ``xr.open_dataarray(path)``; or an image view made by :func:`to_xarray`.

    Returns
    -------
    Sparse3D
        Values, positions (off-image pixels included), bounds and dtype as saved.
    """
    from ._structure import _as_pair
    from .core import Sparse3D

    if hasattr(da, "data_vars") and _GROUPS_ATTR in getattr(da, "attrs", {}):
        return _from_grouped_dataset(da)  # the stamp view of an array with stamp groups
    if not hasattr(da, "dims") or not hasattr(da, "coords"):
        raise TypeError(f"from_xarray needs an xarray.DataArray; got {type(da).__name__}")
    if set(da.dims) == set(IMAGE_DIMS) and isinstance(da.data, Sparse3D):
        return da.transpose(*IMAGE_DIMS).data
    missing_dims = [d for d in STAMP_DIMS if d not in da.dims]
    if missing_dims or len(da.dims) != 3:
        raise ValueError(
            f"from_xarray needs a stamp view with dims {STAMP_DIMS}; got dims {tuple(da.dims)} "
            f"(missing {missing_dims}). Make one with S.to_xarray(view='stamps')."
        )
    missing_coords = [c for c in ("row", "col") if c not in da.coords]
    if missing_coords:
        raise ValueError(f"from_xarray: the stamp view lacks the coordinate(s) {missing_coords}")
    missing_attrs = [a for a in ("imshape", "imcorner") if a not in da.attrs]
    if missing_attrs:
        raise ValueError(f"from_xarray: the stamp view lacks the attribute(s) {missing_attrs}")
    da = da.transpose(*STAMP_DIMS)
    values = np.asarray(da.values)
    dtype = da.attrs.get(_DTYPE_ATTR)
    if dtype is not None and values.dtype != np.dtype(dtype):
        values = values.astype(dtype)
    row = np.asarray(da.coords["row"].transpose(*STAMP_DIMS).values)
    col = np.asarray(da.coords["col"].transpose(*STAMP_DIMS).values)
    # validated, never truncated: a fractional or non-numeric attribute is an error
    attrs = {k: np.atleast_1d(da.attrs[k]).tolist() for k in ("imshape", "imcorner")}
    imshape = _as_pair(attrs["imshape"], "the imshape attribute", positive=True)
    imcorner = _as_pair(attrs["imcorner"], "the imcorner attribute", positive=False)
    return Sparse3D(values, row, col, imshape=imshape, imcorner=imcorner)


def fit_result_to_xarray(res: FitResult, part: str = "sources") -> xr.Dataset:
    """The :class:`~sparse3d.fit.FitResult` as a Dataset; see :meth:`FitResult.to_xarray`."""
    import xarray as xr

    from .fit.diagnostics import FitFlags
    from .fit.result import _plain

    stack = np.ndim(_plain(res.weights)) == 2
    attrs: dict[str, Any] = {"solver": res.solver, "n_factorizations": res.n_factorizations}
    attrs.update({f"flag_{f.name}": int(f.value) for f in FitFlags})
    if res.unit is not None:
        attrs["unit"] = str(res.unit)

    def dims(x: Any, first: str) -> tuple[str, ...]:
        return (first, "frame") if np.ndim(x) == 2 else (first,)

    if part == "background":
        if res.background is None:
            raise ValueError("to_xarray('background'): this fit has no background model")
        b = _plain(res.background)
        terms = res.background_labels
        data = {"background": (dims(b, "term"), b)}
        if res.background_err is not None:
            be = _plain(res.background_err)
            data["background_err"] = (dims(be, "term"), be)
        return xr.Dataset(data, coords={"term": list(terms)}, attrs=attrs)
    if part != "sources":
        raise ValueError(f"part must be 'sources' or 'background', got {part!r}")
    w = _plain(res.weights)
    data = {"weights": (dims(w, "source"), w)}
    if res.weights_err is not None:
        we = _plain(res.weights_err)
        data["weights_err"] = (dims(we, "source"), we)
    if res._context is not None:
        for name in ("source_chi2", "source_npix", "flags"):
            v = getattr(res, name)
            data[name] = (dims(v, "source"), v)
    data["unconstrained"] = (("source",), res.unconstrained)
    if stack:
        data["chi2"] = (("frame",), np.asarray(res.chi2))
        if np.ndim(res.n_pixels) == 1:
            data["n_pixels"] = (("frame",), np.asarray(res.n_pixels))
        else:
            attrs["n_pixels"] = int(res.n_pixels)
    else:
        attrs["chi2"] = float(res.chi2)
        attrs["n_pixels"] = int(res.n_pixels)
    coords = {"source": np.arange(w.shape[0])}
    if stack:
        coords["frame"] = np.arange(w.shape[1])
    return xr.Dataset(data, coords=coords, attrs=attrs)
