"""Cases for the ``sparse3d`` API, shared by the new library and 1.2.11.

The module is imported only inside a worker process, so ``import sparse3d``
resolves to whichever version that process put first on ``sys.path``.  With
``legacy=True`` the few calls that 1.2.11 cannot make are replaced by their
closest equivalent and a note says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.cases import Factory, Prepared, Unsupported
from benchmarks.scene import Scene, as_float32


def _sparse3d() -> Any:
    import sparse3d

    return sparse3d


def construct(scene: Scene, data: np.ndarray) -> Any:
    """``Sparse3D(data, row3d, col3d, imshape)`` for the scene."""
    return _sparse3d().Sparse3D(data=data, row=scene.row3d, col=scene.col3d, imshape=scene.imshape)


def build_xy(scene: Scene) -> tuple[Any, Any]:
    """Construct the tutorial's ``X`` and ``Y``."""
    return construct(scene, scene.x3d), construct(scene, scene.y3d)


def computed(S: Any) -> Any:
    """``S`` with its values computed: sparse3d 2.x defers chains of elementwise operations
    until the values are first used, so a case that times operations touches them once."""
    if hasattr(S, "_lazy"):
        S.data  # noqa: B018 - evaluates deferred values
    return S


def build_L(scene: Scene, X: Any, Y: Any) -> Any:
    """The tutorial expression for ``L``, written exactly as in the tutorial (values computed)."""
    sigma = scene.sigma
    rp, cp = scene.row_phase, scene.col_phase
    return computed(
        np.exp(-0.5 * ((X - rp) ** 2 / sigma**2 + (Y - cp) ** 2 / sigma**2)) * 1 / (2 * np.pi * sigma**2)
    )


def build_L_hint(scene: Scene) -> Any:
    """The hint variant: ``dX1``, ``dY1`` built from NumPy arrays."""
    sigma = scene.sigma
    dX1 = construct(scene, -0.5 * (scene.x3d - scene.row_phase) ** 2 / sigma**2)
    dY1 = construct(scene, -0.5 * (scene.y3d - scene.col_phase) ** 2 / sigma**2)
    return computed(np.exp(dX1 + dY1) * (1 / (2 * np.pi * sigma**2)))


def materialize(da: Any) -> np.ndarray:
    """Turn an xarray result (dense or sparse backed) into a NumPy array."""
    data = da.data
    if hasattr(data, "todense"):
        data = data.todense()
    return np.asarray(data)


def _image_canon(scene: Scene):
    return lambda S: np.asarray(S.dot(scene.brightness))


def _pipeline(scene: Scene) -> Prepared:
    def run() -> np.ndarray:
        X, Y = build_xy(scene)
        return build_L(scene, X, Y).dot(scene.brightness)

    return Prepared(run)


def _pipeline_f32(scene: Scene) -> Prepared:
    return _pipeline(as_float32(scene))


def _construct_xy(scene: Scene) -> Prepared:
    return Prepared(lambda: build_xy(scene), canon=lambda XY: XY[0].dot(scene.brightness))


def _build_L(scene: Scene) -> Prepared:
    X, Y = build_xy(scene)
    return Prepared(lambda: build_L(scene, X, Y), canon=_image_canon(scene))


def _build_L_hint(scene: Scene) -> Prepared:
    return Prepared(lambda: build_L_hint(scene), canon=_image_canon(scene))


def _op(fn) -> Factory:
    def factory(scene: Scene) -> Prepared:
        X = construct(scene, scene.x3d)
        return Prepared(lambda: computed(fn(scene, X)), canon=_image_canon(scene))

    return factory


def _with_L(fn, canon=None, note: str = "", fresh: bool = True) -> Factory:
    """Factory for a case that uses ``L``.

    With ``fresh=True`` every timed call gets a new ``L`` (built untimed from
    the same ``X`` and ``Y``, so it shares their warm structure) and the
    per-instance caches are not timed; with ``fresh=False`` the same ``L`` is
    reused, caches included.
    """

    def factory(scene: Scene) -> Prepared:
        X, Y = build_xy(scene)
        canon_ = None if canon is None else (lambda result: canon(scene, result))
        if fresh:
            return Prepared(
                lambda L: fn(scene, L),
                canon=canon_,
                note=note,
                setup=lambda: build_L(scene, X, Y),
            )
        L = build_L(scene, X, Y)
        return Prepared(lambda: fn(scene, L), canon=canon_, note=note)

    return factory


def _tocsr_canon(scene: Scene, A: Any) -> np.ndarray:
    return (A @ scene.brightness).reshape(scene.imshape)


def _xarray(select: bool) -> Factory:
    def view(scene: Scene, L: Any) -> np.ndarray:
        if select:
            return materialize(L.to_xarray().sel(source=scene.nsources // 2))
        return materialize(L.to_xarray().sum("source"))

    def factory(scene: Scene) -> Prepared:
        if not hasattr(_sparse3d().Sparse3D, "to_xarray"):
            raise Unsupported("Sparse3D.to_xarray does not exist")
        return _with_L(view)(scene)

    return factory


def _fit(scene: Scene) -> Prepared:
    if not hasattr(_sparse3d().Sparse3D, "fit"):
        raise Unsupported("Sparse3D.fit does not exist")
    note = "S.fit returns weights plus per-weight errors and chi2 (baseline: weights only)"
    return _with_L(lambda s, L: L.fit(s.fake_data), canon=_fit_canon, note=note)(scene)


FRAMES = 100


def _fit_frames(scene: Scene) -> Prepared:
    """``L.fit`` on a stack of ``FRAMES`` noisy frames (one factorisation for all)."""
    if not hasattr(_sparse3d().Sparse3D, "fit"):
        raise Unsupported("Sparse3D.fit does not exist")
    rng = np.random.default_rng(7)
    frames = scene.fake_data[:, :, None] + rng.normal(0, 1.0, size=(*scene.imshape, FRAMES))
    note = f"{FRAMES} frames (H, W, {FRAMES}); ratio against the one-image fit of the same run"
    return _with_L(lambda s, L: L.fit(frames), canon=_fit_canon, note=note)(scene)


def _fit_solver(solver: str) -> Factory:
    """``fit_design(L, image, solver=...)``: the same fit with another factorisation."""

    def factory(scene: Scene) -> Prepared:
        try:
            from sparse3d.fit import available_solvers, fit_design
        except ImportError:
            raise Unsupported("sparse3d.fit.fit_design does not exist") from None
        if solver not in available_solvers():
            raise Unsupported(f"solver {solver!r} is not installed")
        return _with_L(
            lambda s, L: fit_design(L, s.fake_data, imshape=L.imshape, solver=solver),
            canon=_fit_canon,
            note=f"solver={solver!r}",
        )(scene)

    return factory


def _fit_csr(scene: Scene) -> Prepared:
    try:
        from sparse3d.fit import fit_design
    except ImportError:
        raise Unsupported("sparse3d.fit.fit_design does not exist") from None
    note = "the general path: SciPy's A^T A of the CSR form instead of the stamp kernel"
    return _with_L(
        lambda s, L: fit_design(L.tocsr(), s.fake_data, imshape=L.imshape), canon=_fit_canon, note=note
    )(scene)


def _fit_weights_err(scene: Scene) -> Prepared:
    """``res.weights_err`` (the selected inversion) on a fresh fit each call; the fit is untimed."""
    if not hasattr(_sparse3d().Sparse3D, "fit"):
        raise Unsupported("Sparse3D.fit does not exist")
    X, Y = build_xy(scene)
    L = build_L(scene, X, Y)
    return Prepared(
        lambda res: res.weights_err,
        canon=lambda r: np.asarray(r),
        note="selected inversion after a fit; ratio against the one-image fit of the same run",
        setup=lambda: L.fit(scene.fake_data),
    )


def _fit_canon(scene: Scene, result: Any) -> np.ndarray:
    for attr in ("weights", "x", "coef_"):
        if hasattr(result, attr):
            return np.asarray(getattr(result, attr))
    return np.asarray(result[0] if isinstance(result, tuple) else result)


def _source_positions(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Float source positions of the scene (integer part from the stamp's centre pixel)."""
    c = scene.spec.stamp // 2
    return scene.row3d[c, c, :] + scene.row_phase, scene.col3d[c, c, :] + scene.col_phase


def _psf_gaussian(derivatives: tuple[str, ...] | None) -> Factory:
    def factory(scene: Scene) -> Prepared:
        try:
            from sparse3d.psf import Gaussian
        except ImportError:
            raise Unsupported("sparse3d.psf does not exist") from None
        row, col = _source_positions(scene)
        model, stamp = Gaussian(scene.sigma), (scene.spec.stamp, scene.spec.stamp)
        note = "ratio vs build_L (the tutorial expression on prebuilt X, Y): construction included here"

        def run() -> Any:
            return model.design(row, col, scene.imshape, stamp, derivatives=derivatives)

        def canon(result: Any) -> np.ndarray:
            L = result if derivatives is None else result[0]
            return np.asarray(L.dot(scene.brightness))

        return Prepared(run, canon=canon, note=note)

    return factory


def _shift(per_source: bool) -> Factory:
    """``L.shift``: one ``(0.3, -0.2)`` for all sources, or one seeded shift per source."""

    def factory(scene: Scene) -> Prepared:
        if not hasattr(_sparse3d().Sparse3D, "shift"):
            raise Unsupported("Sparse3D.shift does not exist")
        X, Y = build_xy(scene)
        L = build_L(scene, X, Y)
        d: tuple = (0.3, -0.2)
        if per_source:
            rng = np.random.default_rng(scene.spec.seed + 11)
            d = (rng.uniform(-0.5, 0.5, scene.nsources), rng.uniform(-0.5, 0.5, scene.nsources))
        L.shift(d)  # warm the per-structure layout check
        note = "ratio vs op_mul (X * 2.5, one elementwise ufunc on an array of the same size)"
        return Prepared(lambda: L.shift(d), canon=_image_canon(scene), note=note)

    return factory


def cases(legacy: bool = False) -> dict[str, Factory]:
    """Case factories for the ``sparse3d`` API.

    Parameters
    ----------
    legacy : bool
        Use the calls that ``sparse3d==1.2.11`` supports where the new API
        differs (``np.dot`` and ``np.tensordot`` raise ``TypeError`` there).

    Returns
    -------
    dict
        Case name -> factory.
    """
    fresh = not legacy  # 1.2.11 caches nothing per instance
    out: dict[str, Factory] = {
        "pipeline": _pipeline,
        "pipeline_f32": _pipeline_f32,
        "construct_xy": _construct_xy,
        "build_L": _build_L,
        "build_L_hint": _build_L_hint,
        "dot": _with_L(lambda s, L: L.dot(s.brightness), fresh=fresh),
        "dot_cached": _with_L(lambda s, L: L.dot(s.brightness), fresh=False),
        "dot_k10": _with_L(lambda s, L: np.dot(L, s.w2), fresh=fresh),
        "tensordot": _with_L(
            lambda s, L: np.tensordot(L, s.fake_data, axes=([0, 1], [0, 1])),
            fresh=fresh,
        ),
        "tocsr": _with_L(lambda s, L: L.tocsr(), canon=_tocsr_canon, fresh=fresh),
        "op_sub": _op(lambda s, X: X - s.row_phase),
        "op_pow": _op(lambda s, X: X**2),
        "op_exp": _op(lambda s, X: np.exp(X)),
        "op_mul": _op(lambda s, X: X * 2.5),
        "dot_ones": _with_L(lambda s, L: L.dot(np.ones(s.nsources)), fresh=fresh),
        "xarray_sum": _xarray(select=False),
        "xarray_sel": _xarray(select=True),
        "fit": _fit,
        "fit_frames100": _fit_frames,
        "fit_weights_err": _fit_weights_err,
        "fit_superlu": _fit_solver("superlu"),
        "fit_cholmod": _fit_solver("cholmod"),
        "fit_csr": _fit_csr,
        "psf_gaussian": _psf_gaussian(None),
        "psf_gaussian_derivs": _psf_gaussian(("row", "col", "sigma")),
        "shift": _shift(per_source=False),
        "shift_per_source": _shift(per_source=True),
    }
    if legacy:
        out["dot_k10"] = _with_L(
            lambda s, L: L.dot(s.w2),
            canon=lambda s, r: np.moveaxis(r, 0, -1),
            note="np.dot raises TypeError in 1.2.11; L.dot(w2) -> (k, H, W)",
            fresh=False,
        )
        out["tensordot"] = _with_L(
            lambda s, L: L.tocsr().T @ s.fake_data.ravel(),
            note="np.tensordot raises TypeError in 1.2.11; L.tocsr().T @ image",
            fresh=False,
        )
    return out
