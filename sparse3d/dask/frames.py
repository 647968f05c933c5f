"""Fitting many frames of one scene: the normal matrix factorised once, shipped once."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from ._graph import _shared, _token, is_dask_array
from .chunked import SourceChunked


def _fit_block(solver, frames: np.ndarray) -> np.ndarray:
    return solver(frames)


def _fit_block_per_frame_errors(design, frames: np.ndarray, errors: np.ndarray, options: dict) -> np.ndarray:
    """Fit a chunk of frames whose error maps differ: rows are weights, errors, chi2."""
    import warnings

    from ..fit import UnconstrainedSourceWarning, fit_design

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconstrainedSourceWarning)  # warned once, on the client
        res = fit_design(design, frames, errors=errors, **options)
    n, k = design.shape[1], frames.shape[2]
    err = np.broadcast_to(np.asarray(res.weights_err).reshape(n, -1), (n, k))
    return np.concatenate([res.weights.reshape(n, k), err, np.reshape(res.chi2, (1, k))])


@dataclass(frozen=True, eq=False)
class DaskFitResult:
    """Result of :func:`fit` on Dask frames.

    Attributes
    ----------
    weights : dask.array.Array or numpy.ndarray
        ``(nsources, k)`` (``(nsources,)`` for one image), chunked like the frames along
        ``k``; NaN for unconstrained sources. Lazy until :meth:`compute`.
    chi2 : dask.array.Array or numpy.ndarray
        Per-frame chi-square ``(k,)`` (a 0-d array for one image), computed by the same tasks
        as the weights.
    weights_err : numpy.ndarray or dask.array.Array
        1-sigma uncertainties: ``(nsources,)`` when one error map is shared by every frame;
        lazy ``(nsources, k)`` when each frame has its own map.
    n_pixels, unconstrained, solver, n_factorizations
        As in :class:`sparse3d.fit.FitResult`; ``n_factorizations`` is 1 for a shared error
        map, and at most ``k`` (one per distinct map, counted per chunk) for per-frame maps.
    """

    weights: Any
    chi2: Any
    weights_err: np.ndarray
    n_pixels: int
    unconstrained: np.ndarray
    solver: str
    n_factorizations: int
    _design: Any = None

    @property
    def n_unconstrained(self) -> int:
        return int(np.count_nonzero(self.unconstrained))

    @property
    def model(self):
        """Best-fit model cube ``(H, W, k)``, lazy when the weights are (unconstrained → 0)."""
        w = self.weights
        wz = da.where(da.isnan(w), 0.0, w) if is_dask_array(w) else np.where(np.isnan(w), 0.0, w)
        return self._design.dot(wz) if isinstance(self._design, SourceChunked) else np.dot(self._design, wz)

    def compute(self, **kwargs) -> DaskFitResult:
        """Weights, chi-square (and lazy errors) computed together: one pass over the frames."""
        weights, chi2, err = dask.compute(self.weights, self.chi2, self.weights_err, **kwargs)
        return replace(self, weights=weights, chi2=chi2, weights_err=err)

    def persist(self, **kwargs) -> DaskFitResult:
        weights, chi2, err = dask.persist(self.weights, self.chi2, self.weights_err, **kwargs)
        return replace(self, weights=weights, chi2=chi2, weights_err=err)


class _FrameSolver:
    """Everything a worker needs to fit a chunk of frames: the portable normal equations.

    The design matrix, inverse variances, priors and the supernodal Cholesky factor
    (:meth:`sparse3d.fit.NormalEquations.portable`): plain NumPy/SciPy arrays, pickled once
    per graph.
    """

    def __init__(self, normal):
        self.normal = normal

    @property
    def factor(self):
        return self.normal.factor

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``frames (H, W, kc)`` → ``(n + 1, kc)``: weights, then the chi-square row."""
        ne = self.normal
        D = np.asarray(frames, dtype=np.float64).reshape(ne.design.shape[0], -1)
        ne.check_data(D)
        n = ne.n_sources
        out = np.empty((n + 1, D.shape[1]))
        out[:n] = ne.solve(D)
        out[n] = ne.chi2(D, out[:n])
        return out


def fit(
    S, data, errors=None, prior_mu=None, prior_sigma=None, mask=None, solver: str = "auto"
) -> DaskFitResult:
    """``S.fit(frames)`` for Dask frames ``(H, W, k)`` (or one image ``(H, W)``): lazy weights.

    The normal matrix ``AᵀC⁻¹A + P`` is built and factorised once, eagerly on the client
    (it is ``nsources × nsources`` and sparse), and shipped to the workers as one graph key
    together with the design matrix; each chunk of frames is then one task computing its
    weights and chi-square. Results equal :meth:`Sparse3D.fit` on the computed frames.

    ``errors`` is ``None``, one ``(H, W)`` map shared by all frames (one factorisation on
    the client), or per-frame maps of the shape of ``data`` (NumPy or Dask): then each chunk
    of frames is fitted on a worker with one factorisation per distinct map, the design
    matrix shipped once, and ``weights_err`` is lazy ``(nsources, k)``. ``mask`` ``(H, W)``
    (one map for every frame; ``errors=np.inf`` masks a pixel too). The options of the eager
    fit for real data -- ``background``, ``dq``/``bad_bits``, ``saturation``, per-frame masks,
    masked arrays -- are not supported here: :meth:`Sparse3D.fit` raises
    ``NotImplementedError`` for the first three (compute the frames and fit them eagerly), and
    an ``(H, W, k)`` mask is refused with a ValueError. Returns a :class:`DaskFitResult`.

    A :class:`SourceChunked` scene is fitted over image tiles by :meth:`SourceChunked.fit`.
    """
    if isinstance(S, SourceChunked):  # one scene too large for one process: fit over tiles
        return S.fit(data, errors, mask, prior_mu, prior_sigma, solver=solver)
    if not is_dask_array(data):
        data = da.from_array(np.asarray(data))
    if isinstance(getattr(data, "_meta", None), np.ma.MaskedArray):  # never drop a mask silently
        raise NotImplementedError(
            "S.fit on masked Dask frames is not supported (the mask could differ per frame); pass the "
            "mask as mask= (one (H, W) map), or compute the frames and fit them eagerly"
        )
    if errors is not None and np.ndim(errors) == 3 and data.ndim == 3:
        return _fit_per_frame_errors(S, data, errors, prior_mu, prior_sigma, mask, solver)
    if errors is not None and np.ndim(errors) != 2:
        raise ValueError(f"errors must have shape (H, W) or the shape of data; got {np.shape(errors)}")
    if is_dask_array(errors) or is_dask_array(mask):
        errors = None if errors is None else np.asarray(errors)
        mask = None if mask is None else np.asarray(mask)
    if errors is not None and np.any(np.isposinf(errors)):  # errors = inf masks the pixel, as eagerly
        inf = np.isposinf(errors)
        mask = inf if mask is None else (np.asarray(mask, dtype=bool) | inf)
    H, W = S.imshape
    if data.ndim not in (2, 3) or tuple(data.shape[:2]) != (H, W):
        raise ValueError(f"data must have shape (H, W) = {(H, W)} or (H, W, k), got {data.shape}")
    if errors is not None and np.shape(errors) != (H, W):
        raise ValueError(
            f"errors must have shape (H, W) = {(H, W)} or the shape of data; got {np.shape(errors)}"
        )
    stack = data.ndim == 3
    frames = (data if stack else data[:, :, None]).rechunk({0: -1, 1: -1})

    from ..fit import prepare_normal_equations

    normal = prepare_normal_equations(
        S,  # a Sparse3D: its normal matrix comes from the stamps (regular ones) directly
        imshape=S.imshape,
        errors=errors,
        prior_mu=prior_mu,
        prior_sigma=prior_sigma,
        mask=mask,
        solver=solver,
    )
    normal.warn_if_unconstrained(stacklevel=2)
    solver_ = _FrameSolver(normal.portable())  # before weights_err: SuperLU's factor is at hand
    weights_err = normal.weights_err()
    tok = tokenize(_token(S), errors, prior_mu, prior_sigma, mask, normal.solver)
    shipped = _shared(solver_, "sparse3d-fit-solver", tok)
    n = S.nsources
    out = da.blockwise(
        _fit_block,
        "sk",
        shipped,
        None,
        frames,
        "hwk",
        new_axes={"s": n + 1},
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0, 0)),
        name=f"sparse3d-fit-{tokenize(tok, frames.name)}",
    )
    weights, chi2 = out[:n], out[n]
    if not stack:
        weights, chi2 = weights[:, 0], chi2[0]
    return DaskFitResult(
        weights,
        chi2,
        weights_err=weights_err,
        n_pixels=normal.n_pixels,
        unconstrained=normal.unconstrained,
        solver=normal.solver,
        n_factorizations=1,
        _design=S,
    )


def _fit_per_frame_errors(S, data, errors, prior_mu, prior_sigma, mask, solver) -> DaskFitResult:
    """Frames with their own error maps: one factorisation per distinct map, on the workers.

    The design matrix (and mask, priors) enter the graph once; each chunk of frames is one
    task running :func:`sparse3d.fit.fit_design` on its frames and error maps, which groups
    frames with identical maps. ``weights_err`` is then lazy, ``(nsources, k)``.
    """
    H, W = S.imshape
    if tuple(data.shape[:2]) != (H, W) or tuple(np.shape(errors)) != tuple(data.shape):
        raise ValueError(
            f"per-frame errors must have the shape of data {tuple(data.shape)}; got {np.shape(errors)}"
        )
    frames = data.rechunk({0: -1, 1: -1})
    errs = errors if is_dask_array(errors) else da.from_array(np.asarray(errors), chunks=frames.chunks)
    errs = errs.rechunk(frames.chunks)
    mask = None if mask is None else np.asarray(mask)
    design = S.tocsc()
    n = S.nsources
    options = {"imshape": S.imshape, "prior_mu": prior_mu, "prior_sigma": prior_sigma, "mask": mask}
    options["solver"] = solver
    # what does not depend on the error maps is known now: which sources have no data
    keep = np.ones(H * W, dtype=bool) if mask is None else ~mask.ravel()
    has_data = design[keep].getnnz(axis=0) > 0
    has_prior = np.zeros(n, dtype=bool)
    if prior_sigma is not None:
        has_prior = np.isfinite(np.broadcast_to(np.asarray(prior_sigma, dtype=float), (n,)))
    unconstrained = ~has_data & ~has_prior
    if unconstrained.any():
        import warnings

        from ..fit import UnconstrainedSourceWarning

        warnings.warn(
            f"{int(unconstrained.sum())} source(s) have no unmasked pixel and no prior: their "
            "weights and errors are NaN",
            UnconstrainedSourceWarning,
            stacklevel=3,
        )
    tok = tokenize(_token(S), mask, prior_mu, prior_sigma, solver)
    shipped_design = _shared(design, "sparse3d-fit-design", tok)
    shipped_options = _shared(options, "sparse3d-fit-options", tok)
    out = da.blockwise(
        _fit_block_per_frame_errors,
        "sk",
        shipped_design,
        None,
        frames,
        "hwk",
        errs,
        "hwk",
        shipped_options,
        None,
        new_axes={"s": 2 * n + 1},
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0, 0)),
        name=f"sparse3d-fit-errors-{tokenize(tok, frames.name, errs.name)}",
    )
    return DaskFitResult(
        out[:n],
        out[2 * n],
        weights_err=out[n : 2 * n],
        n_pixels=int(keep.sum()),
        unconstrained=unconstrained,
        solver=solver,
        n_factorizations=int(data.shape[2]),
        _design=S,
    )
