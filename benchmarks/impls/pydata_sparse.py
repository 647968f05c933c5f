"""pydata/sparse doing what it can of the same work.

A 3-D ``sparse.COO`` of shape ``(H, W, n)`` is built from the in-image stamp
pixels.  Two stamp semantics cannot be written natively, and the cases use a
workaround on ``COO.data`` instead (noted in the report):

* ``X - v`` with a per-source vector ``v`` raises ``ValueError`` (the result
  would be dense), so it is done as ``COO(coords, data - v[source])``;
* ``np.exp(X)`` returns a COO with ``fill_value=1`` (off-stamp pixels become
  1), so the pipeline uses ``COO(coords, np.exp(data))``.  The ``op_exp``
  case times the native call and its cross-check fails by design.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.cases import Factory, Prepared, Unsupported
from benchmarks.impls.numpy_baseline import structure
from benchmarks.scene import Scene

SUB_NOTE = "native X - v raises ValueError (dense result); timed on COO.data"
EXP_NOTE = "native np.exp gives fill_value=1 (off-stamp = 1); exp on COO.data"


def _sparse() -> Any:
    import sparse

    return sparse


def construct(scene: Scene, values: np.ndarray, st=None) -> Any:
    """Build a ``(H, W, n)`` COO from stamp values (in-image pixels only)."""
    st = structure(scene) if st is None else st
    coords = np.stack([scene.row3d[st.mask], scene.col3d[st.mask], st.source])
    shape = (*scene.imshape, scene.nsources)
    return _sparse().COO(coords, values[st.mask], shape=shape)


def _with_data(A: Any, data: np.ndarray) -> Any:
    return _sparse().COO(A.coords, data, shape=A.shape, has_duplicates=False, sorted=True)


def sub_source(A: Any, v: np.ndarray) -> Any:
    """``A - v`` on stored values, ``v`` indexed by source."""
    return _with_data(A, A.data - v[A.coords[2]])


def stamp_exp(A: Any) -> Any:
    """``exp`` on stored values only (keeps ``fill_value=0``)."""
    return _with_data(A, np.exp(A.data))


def build_L(scene: Scene, X: Any, Y: Any) -> Any:
    """Tutorial expression for ``L`` with the two workarounds."""
    s = scene.sigma
    inner = sub_source(X, scene.row_phase) ** 2 / s**2 + (sub_source(Y, scene.col_phase) ** 2 / s**2)
    return stamp_exp(-0.5 * inner) * 1 / (2 * np.pi * s**2)


def _canon(scene: Scene):
    def canon(A: Any) -> np.ndarray:
        if A.fill_value != 0:
            return np.full(scene.imshape, np.nan)
        return np.asarray(A.dot(scene.brightness))

    return canon


def _build_xy(scene: Scene) -> tuple[Any, Any]:
    st = structure(scene)
    return construct(scene, scene.x3d, st), construct(scene, scene.y3d, st)


def _pipeline(scene: Scene) -> Prepared:
    def run() -> np.ndarray:
        return build_L(scene, *_build_xy(scene)).dot(scene.brightness)

    return Prepared(run, note=f"{SUB_NOTE}; {EXP_NOTE}")


def _construct_xy(scene: Scene) -> Prepared:
    return Prepared(
        lambda: _build_xy(scene),
        canon=lambda XY: XY[0].dot(scene.brightness),
        note="includes the in-image mask and coordinate stacking",
    )


def _build_L(scene: Scene) -> Prepared:
    X, Y = _build_xy(scene)
    return Prepared(lambda: build_L(scene, X, Y), canon=_canon(scene), note=f"{SUB_NOTE}; {EXP_NOTE}")


def _build_L_hint(scene: Scene) -> Prepared:
    s = scene.sigma
    st = structure(scene)

    def run() -> Any:
        dX1 = construct(scene, -0.5 * (scene.x3d - scene.row_phase) ** 2 / s**2, st)
        dY1 = construct(scene, -0.5 * (scene.y3d - scene.col_phase) ** 2 / s**2, st)
        return stamp_exp(dX1 + dY1) * (1 / (2 * np.pi * s**2))

    return Prepared(run, canon=_canon(scene), note=EXP_NOTE)


def _op(fn, note: str = "") -> Factory:
    def factory(scene: Scene) -> Prepared:
        X = construct(scene, scene.x3d)
        return Prepared(lambda: fn(scene, X), canon=_canon(scene), note=note)

    return factory


def _with_L(fn, canon=None) -> Factory:
    """Factory for a case that uses ``L`` (reused: COO caches nothing here)."""

    def factory(scene: Scene) -> Prepared:
        L = build_L(scene, *_build_xy(scene))
        canon_ = None if canon is None else (lambda result: canon(scene, result))
        return Prepared(lambda: fn(scene, L), canon=canon_)

    return factory


def _xarray(select: bool) -> Factory:
    def factory(scene: Scene) -> Prepared:
        import xarray as xr

        L = build_L(scene, *_build_xy(scene))
        i = scene.nsources // 2

        def run() -> np.ndarray:
            da = xr.DataArray(L, dims=("row", "col", "source"))
            out = da.sel(source=i) if select else da.sum("source")
            return np.asarray(out.data.todense())

        return Prepared(run, note="xarray.DataArray wrapping the COO")

    return factory


def _tocsr(scene: Scene, L: Any) -> Any:
    H, W = scene.imshape
    return L.reshape((H * W, scene.nsources)).tocsr()


def _tocsr_canon(scene: Scene, A: Any) -> np.ndarray:
    return (A @ scene.brightness).reshape(scene.imshape)


def _fit(scene: Scene) -> Prepared:
    raise Unsupported("pydata/sparse has no sparse least-squares solver")


def cases(legacy: bool = False) -> dict[str, Factory]:
    """Case factories for pydata/sparse.

    Parameters
    ----------
    legacy : bool
        Unused; present for a uniform interface.

    Returns
    -------
    dict
        Case name -> factory.
    """
    dot = _with_L(lambda s, L: L.dot(s.brightness))
    return {
        "pipeline": _pipeline,
        "construct_xy": _construct_xy,
        "build_L": _build_L,
        "build_L_hint": _build_L_hint,
        "dot": dot,
        "dot_cached": dot,
        "dot_k10": _with_L(lambda s, L: np.dot(L, s.w2)),
        "tensordot": _with_L(lambda s, L: np.tensordot(L, s.fake_data, axes=([0, 1], [0, 1]))),
        "tocsr": _with_L(_tocsr, canon=_tocsr_canon),
        "op_sub": _op(lambda s, X: sub_source(X, s.row_phase), note=SUB_NOTE),
        "op_pow": _op(lambda s, X: X**2),
        "op_exp": _op(lambda s, X: np.exp(X), note="native: fill_value becomes 1"),
        "op_mul": _op(lambda s, X: X * 2.5),
        "dot_ones": _with_L(lambda s, L: L.dot(np.ones(s.nsources))),
        "xarray_sum": _xarray(select=False),
        "xarray_sel": _xarray(select=True),
        "fit": _fit,
    }
