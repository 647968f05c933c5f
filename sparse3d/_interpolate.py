"""Interpolation kernels: the one place for sub-pixel resampling.

Two kernels, each used where it is accurate:

* **Band-limited (sinc) resampling across a whole stamp** — :func:`shift_stamps`, behind
  :meth:`Sparse3D.shift <sparse3d.Sparse3D.shift>`. A stamp only knows its own ``nr × nc``
  samples, typically of a PSF sampled near the Nyquist limit (σ ≈ 1 px). Short kernels fail
  there: for a Gaussian with σ = 1 px shifted by up to 0.5 px, cubic convolution (Keys)
  errs by up to ~9 % of the peak, a cubic B-spline by ~4 %, Lanczos-3 by ~2.5 % and
  Lanczos-4 by ~1.6 %. The sinc series over every sample of the stamp, with zeros outside
  it, is the band-limited reconstruction; its error is set by the aliasing of the sampled
  PSF alone (≤ 4·Q(πσ) per axis for a Gaussian, Q the normal tail: 3.4e-3 of the peak at
  σ = 1 px, 1e-5 at σ = 1.5 px). The kernel is separable: one pass along the stamp columns,
  one along the rows, each a small dense ``L × L`` matrix (``L`` the stamp side) applied to
  every line of every stamp, 2·L multiply-adds per stored value whatever the fraction. Small
  arrays use NumPy (one BLAS product over the stamp block for a shared shift); large ones
  the compiled passes of :func:`sparse3d._shift_kernels.shift`, which run the products in
  register tiles over runs of contiguous sources (the source axis is innermost), skip an
  axis whose fraction is 0, and agree with NumPy to rounding (they fuse multiply-adds).
* **Cubic B-spline interpolation** of an oversampled PSF image — :class:`BSpline3Image`,
  behind :class:`sparse3d.psf.ImagePSF` and :class:`sparse3d.psf.GriddedPSF`. An
  interpolating cubic spline (coefficients from the exact recursive prefilter, the image
  taken as zero outside its extent) is C², so its analytic derivatives are smooth; on a
  Gaussian of σ = 1 px sampled 4× it errs by < 1e-4 of the peak (photutils' ``ImagePSF``
  uses a cubic spline too).

This module works on plain arrays, except :func:`shift_stamps`, which uses only the public
:class:`~sparse3d.Sparse3D` API plus the structure cache below.
"""

from __future__ import annotations

import weakref

import numpy as np

from . import _kernels, _pool
from ._blas import single_threaded_blas

__all__ = ["BSpline3Image", "bspline3_weights", "shift_stamps", "sinc_matrix", "split_shift"]


# -------------------------------------------------------------------------------------------
# Band-limited resampling of stamps
# -------------------------------------------------------------------------------------------
def sinc_matrix(n: int, frac) -> np.ndarray:
    """Resampling matrix ``A`` with ``(A @ v)[i] = Σ_j sinc(i - j - frac) v[j]``.

    ``A @ v`` is ``v`` moved by ``+frac`` samples (the value at ``i`` is the band-limited
    interpolant of ``v`` at ``i - frac``), with ``v`` taken as zero outside its ``n`` samples.

    Parameters
    ----------
    n : int
        Number of samples.
    frac : float or numpy.ndarray
        Fractional shift(s); an array of shape ``(m,)`` gives ``m`` matrices ``(m, n, n)``.
    """
    i = np.arange(n)
    lag = i[:, None] - i[None, :]  # the matrix is Toeplitz: only 2n - 1 distinct lags
    frac = np.asarray(frac, dtype=float)
    lags = np.arange(-(n - 1), n, dtype=float)
    values = np.sinc(lags - frac[..., None])  # (..., 2n - 1): sin evaluated 2n - 1 times per fraction
    return values[..., lag + (n - 1)]


def split_shift(delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(whole, frac)`` with ``delta = whole + frac``, ``whole`` the nearest integer.

    Ties go up (``floor(delta + 0.5)``), so ``frac`` lies in ``[-0.5, 0.5)`` — the same rule
    that places a PSF stamp on the source's nearest pixel.
    """
    whole = np.floor(delta + 0.5)
    return whole, delta - whole


_REGULAR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _is_regular(S) -> bool:
    """Whether every stamp is an upright grid: rows +1 down axis 0, columns +1 along axis 1.

    Cached per stamp structure (shared by every array built on it).
    """
    s = S._structure
    known = _REGULAR.get(s)
    if known is None:
        nr, nc, _ = S.stamp_shape
        row, col = S.row, S.col
        known = bool(
            (row == row[:1, :1] + np.arange(nr)[:, None, None]).all()
            and (col == col[:1, :1] + np.arange(nc)[None, :, None]).all()
        )
        _REGULAR[s] = known
    return known


def _shift_arg(shift, nsources: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``shift`` = ``(drow, dcol)``: each a number or an ``(nsources,)`` array."""
    if isinstance(shift, (str, bytes)) or not hasattr(shift, "__len__") or len(shift) != 2:
        raise ValueError(
            "shift must be a pair (drow, dcol) of numbers or of (nsources,) arrays; got " + repr(shift)[:80]
        )
    out = []
    for name, value in zip(("drow", "dcol"), shift):
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise TypeError(f"shift: {name} must be a number or an array of numbers; got {value!r}") from None
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != nsources):
            raise ValueError(
                f"shift: {name} must be a number or have one value per source ({nsources}); "
                f"got shape {arr.shape}"
            )
        if not np.isfinite(arr).all():
            raise ValueError(f"shift: {name} must be finite; found NaN or inf")
        out.append(arr)
    return out[0], out[1]


def _resample_axis(values: np.ndarray, frac: np.ndarray, axis: int) -> np.ndarray:
    """Move ``values`` ``(nr, nc, n)`` by ``frac`` samples along stamp ``axis`` (0 or 1).

    One fraction for all sources is one BLAS product over the whole stamp block; per-source
    fractions are a batched contraction (``einsum``).
    """
    n = values.shape[axis]
    A = sinc_matrix(n, frac)
    if frac.ndim == 0:
        out = np.empty(values.shape, dtype=np.result_type(A, values))
        if axis == 0:
            nr = values.shape[0]
            np.matmul(A, values.reshape(nr, -1), out=out.reshape(nr, -1))
        else:
            np.matmul(A, values, out=out)  # (nc, nc) @ (nr, nc, k): one product per stamp row
        return out
    # one matrix per source, (k, n, n)
    if axis == 0:
        return np.einsum("kij,jck->ick", A, values, optimize=True)
    return np.einsum("kij,rjk->rik", A, values, optimize=True)


def _shift_compiled(values: np.ndarray, fr: np.ndarray, fc: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Both 1-D sinc passes in one compiled sweep (:func:`sparse3d._shift_kernels.shift`): the
    stamp block is read once and the result written once (the intermediate stays in cache),
    into a pooled buffer if one of that shape is free (a dead array's, already paged in)."""
    from . import _shift_kernels  # imports numba

    out = None
    if values.size * dtype.itemsize >= _pool.MIN_BYTES:
        out = _pool.take(values.shape, dtype)  # overwritten whole by the kernel
    if out is None:
        out = np.empty(values.shape, dtype=dtype)
    return _shift_kernels.shift(values, np.atleast_1d(fr), np.atleast_1d(fc), out)


def shift_stamps(S, shift):
    """``S`` moved by ``(drow, dcol)`` pixels; see :meth:`sparse3d.Sparse3D.shift`."""
    from .core import Sparse3D

    drow, dcol = _shift_arg(shift, S.nsources)
    if S._structure.grouped:  # stamp groups move one by one, each with its sources' shifts
        from ._functions import regroup

        s = S._structure

        def part(d, i):
            return d if d.ndim == 0 else s.take(d, i)

        moved = [shift_stamps(g, (part(drow, i), part(dcol, i))) for i, g in enumerate(S.groups)]
        return regroup(moved, s)
    wr, fr = split_shift(drow)
    wc, fc = split_shift(dcol)
    if drow.ndim == 0 and dcol.ndim == 0:
        out = S.translate((int(wr), int(wc)))
    elif not (wr.any() or wc.any()):
        out = S
    else:  # per-source whole-pixel moves: new positions, same values (shared, read-only)
        from ._structure import StampStructure, as_position_array, check_position_range

        shape = S.stamp_shape
        for name, w in (("drow", wr), ("dcol", wc)):  # so that the int64 sums below cannot wrap
            check_position_range(int(np.min(w, initial=0)), int(np.max(w, initial=0)), f"shift {name}")
        row = as_position_array(S.row + np.broadcast_to(wr, (S.nsources,)).astype(np.int64), "row", shape)
        col = as_position_array(S.col + np.broadcast_to(wc, (S.nsources,)).astype(np.int64), "col", shape)
        out = Sparse3D._from_parts(S.data, StampStructure(row, col, S.imshape, S.imcorner))
    if not (fr.any() or fc.any()):
        return out
    if not _is_regular(S):
        raise ValueError(
            "shift: fractional shifts need upright stamps (rows increasing by 1 along stamp axis 0, "
            "columns along axis 1), as built by R[:, :, None] + row; shift by whole pixels "
            "(S.translate) or rebuild the stamps"
        )
    values = S.data
    dtype = values.dtype if values.dtype.kind in "fc" else np.dtype(np.float64)
    if dtype.kind == "f" and _kernels.use_kernel(values.size, dtype, values.dtype):
        values = _shift_compiled(values, fr, fc, dtype)
    else:
        with single_threaded_blas():
            if fr.any():
                values = _resample_axis(values, fr, 0)
            if fc.any():
                values = _resample_axis(values, fc, 1)
    # the values are a fresh array: no copy needed to make them the new array's own
    result = Sparse3D._from_parts(values.astype(dtype, copy=False), out._structure)
    _REGULAR[result._structure] = True
    return result


# -------------------------------------------------------------------------------------------
# Cubic B-spline interpolation of images
# -------------------------------------------------------------------------------------------
def bspline3_weights(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline weights of the 4 taps ``i-1, i, i+1, i+2`` for ``t = x - i`` in [0, 1).

    Returns ``(w, dw)``, each of shape ``(4, *t.shape)``: the weights and their derivatives
    with respect to ``x``.
    """
    t2 = t * t
    t3 = t2 * t
    s = 1.0 - t
    w = np.stack(
        [s * s * s / 6.0, (3 * t3 - 6 * t2 + 4) / 6.0, (-3 * t3 + 3 * t2 + 3 * t + 1) / 6.0, t3 / 6.0]
    )
    dw = np.stack([-s * s / 2.0, (3 * t2 - 4 * t) / 2.0, (-3 * t2 + 2 * t + 1) / 2.0, t2 / 2.0])
    return w, dw


class BSpline3Image:
    """Interpolating cubic B-splines of a stack of images, zero outside each image.

    Parameters
    ----------
    images : numpy.ndarray, shape (m, ny, nx)
        Finite samples; image ``g`` has value ``images[g, y, x]`` at integer ``(y, x)``.

    Notes
    -----
    Each image is padded with ``PAD`` zeros on every side and prefiltered (the exact
    recursive cubic B-spline filter, ``scipy.ndimage.spline_filter``, mirror boundary), so the
    spline interpolates the samples and decays smoothly to zero within two samples of the
    padded edge. The spline is evaluated at any real ``(y, x)``: 0 farther than ``PAD + 2``
    samples from the image.
    """

    PAD = 12  # the prefilter's influence decays as 0.268**k: 1.4e-7 after 12 samples
    _BORDER = 3  # zero coefficients around the padded block: taps never leave the array

    def __init__(self, images: np.ndarray):
        from scipy.ndimage import spline_filter

        m, ny, nx = images.shape
        p, b = self.PAD, self._BORDER
        padded = np.zeros((ny + 2 * p, nx + 2 * p))
        coef = np.zeros((m, ny + 2 * (p + b), nx + 2 * (p + b)))
        for g in range(m):
            padded[p : p + ny, p : p + nx] = images[g]
            coef[g, b:-b, b:-b] = spline_filter(padded, order=3, mode="mirror")
        self.shape = coef.shape
        self._flat = coef.ravel()
        self._offset = p + b  # index in coef of sample 0

    def _axis(self, x: np.ndarray, size: int):
        """Base index (first tap) and tap weights along one axis, for sample coordinates ``x``."""
        u = x + self._offset
        i = np.floor(u)
        w, dw = bspline3_weights(u - i)
        i = i.astype(np.intp)
        outside = (i < 1) | (i > size - 3)  # every tap is in the zero border: value 0
        if outside.any():
            i[outside] = 1
            w[:, outside] = 0.0
            dw[:, outside] = 0.0
        return i - 1, w, dw

    def evaluate(self, g: np.ndarray, y: np.ndarray, x: np.ndarray):
        """Spline of image ``g`` at ``(y, x)`` on a stamp grid, with its gradient.

        Parameters
        ----------
        g : numpy.ndarray of int, shape (n,)
            Which image, per source.
        y : numpy.ndarray, shape (nr, n)
            Sample row coordinate of every stamp row, per source.
        x : numpy.ndarray, shape (nc, n)
            Sample column coordinate of every stamp column, per source.

        Returns
        -------
        value, d_dy, d_dx : numpy.ndarray, shape (nr, nc, n)
        """
        _, My, Mx = self.shape
        iy, wy, dwy = self._axis(y, My)
        ix, wx, dwx = self._axis(x, Mx)
        base = (g * (My * Mx))[None, None, :] + (iy * Mx)[:, None, :] + ix[None, :, :]
        value = np.zeros(base.shape)
        d_dy = np.zeros(base.shape)
        d_dx = np.zeros(base.shape)
        for a in range(4):
            row_sum = np.zeros(base.shape)
            row_dsum = np.zeros(base.shape)
            for b in range(4):
                coef = self._flat[base + (a * Mx + b)]
                row_sum += wx[b][None, :, :] * coef
                row_dsum += dwx[b][None, :, :] * coef
            value += wy[a][:, None, :] * row_sum
            d_dy += dwy[a][:, None, :] * row_sum
            d_dx += wy[a][:, None, :] * row_dsum
        return value, d_dy, d_dx
