"""Image PSFs: an oversampled PSF image, and a grid of them across the field.

The inputs and centre convention are those of photutils' ``ImagePSF`` and
``GriddedPSFModel``, so arrays made for photutils can be passed unchanged:

* ``data`` is the PSF sampled on a grid ``oversampling`` times finer than the detector
  pixels; the source sits at the array's centre, ``((ny - 1) / 2, (nx - 1) / 2)`` in data
  samples (``origin``). Even sizes are fine: the centre then falls between samples.
* The value for a pixel centre at offset ``(dr, dc)`` from the source is the interpolant of
  ``data`` at sample ``(origin_row + dr · os_row, origin_col + dc · os_col)`` — the data are
  *not* rescaled. For a model that integrates to 1, normalise ``data`` so that it sums to
  ``os_row · os_col`` (photutils' convention): then the design's stamps sum to ≈ 1.
* Unlike photutils, every pair here is in ``(row, col)`` order (photutils' ``origin`` and
  ``grid_xypos`` are ``(x, y)``).

Interpolation is the interpolating cubic B-spline of :class:`sparse3d._interpolate.BSpline3Image`
(C², zero outside the image): on a Gaussian of σ = 1 px with oversampling 4 it errs by
< 1e-4 of the peak; the error grows as (sample spacing / PSF width)⁴ for coarser sampling.
Position derivatives come from the same spline.
"""

from __future__ import annotations

import numpy as np

from ._base import PSFModel

__all__ = ["GriddedPSF", "ImagePSF"]


def _as_oversampling(value) -> tuple[int, int]:
    arr = np.atleast_1d(np.asarray(value))
    ok = (
        arr.ndim == 1
        and arr.size in (1, 2)
        and arr.dtype.kind in "iuf"
        and np.all(np.isfinite(arr))
        and np.all(arr == np.round(arr))
        and np.all(arr >= 1)
    )
    if not ok:
        raise ValueError(
            f"oversampling must be a positive integer or a (row, col) pair of them; got {value!r}"
        )
    arr = np.broadcast_to(arr.astype(int), (2,))
    return int(arr[0]), int(arr[1])


def _as_images(data, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(data, dtype=float) if not isinstance(data, np.ndarray) else data.astype(float)
    if arr.ndim != ndim:
        what = "a 2-D PSF image" if ndim == 2 else "a 3-D stack (nimages, ny, nx) of PSF images"
        raise ValueError(f"{name} must be {what}; got shape {arr.shape}")
    if min(arr.shape[-2:]) < 2:
        raise ValueError(f"{name}: each PSF image needs at least 2 samples per axis; got {arr.shape[-2:]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite; found NaN or inf")
    return arr


def _as_origin(origin, shape) -> tuple[float, float]:
    if origin is None:
        return (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    arr = np.asarray(origin, dtype=float)
    if arr.shape != (2,) or not np.isfinite(arr).all():
        raise ValueError(f"origin must be a finite (row, col) pair in data samples; got {origin!r}")
    return float(arr[0]), float(arr[1])


class _SplinePSF(PSFModel):
    """Shared evaluation of one or several spline-interpolated PSF images."""

    params = ()
    _shape_derivatives = False

    def _init_images(self, images: np.ndarray, oversampling, origin) -> None:
        from .._interpolate import BSpline3Image

        self.oversampling = _as_oversampling(oversampling)
        self.origin = _as_origin(origin, images.shape[-2:])
        self._spline = BSpline3Image(images)
        self._set_params()

    def _sample_coords(self, dr, dc):
        """Data-sample coordinates ``(nr, n)``, ``(nc, n)`` of the stamp's pixel centres."""
        (osr, osc), (o_r, o_c) = self.oversampling, self.origin
        return dr[:, 0, :] * osr + o_r, dc[0, :, :] * osc + o_c

    def _image(self, g, dr, dc, wanted):
        """Value of image(s) ``g`` (per source) and its position derivatives."""
        y, x = self._sample_coords(dr, dc)
        value, d_dy, d_dx = self._spline.evaluate(g, y, x)
        out = {}
        if "row" in wanted:  # d sample / d source row = -oversampling
            out["row"] = d_dy * -self.oversampling[0]
        if "col" in wanted:
            out["col"] = d_dx * -self.oversampling[1]
        return value, out


class ImagePSF(_SplinePSF):
    """A PSF given as an (oversampled) image, evaluated by cubic-spline interpolation.

    Parameters
    ----------
    data : array_like, shape (ny, nx)
        The PSF sampled ``oversampling`` times finer than the pixels, centred on ``origin``.
        Normalise it to sum to ``os_row · os_col`` for a unit-flux model (photutils' rule).
    oversampling : int or (int, int), optional
        Samples per pixel, one number or a ``(row, col)`` pair. Default 1.
    origin : (float, float), optional
        ``(row, col)`` of the source in data samples; default the array centre
        ``((ny - 1) / 2, (nx - 1) / 2)``. Even sizes are allowed (the centre falls between
        samples).

    Notes
    -----
    See :mod:`sparse3d.psf.image` for the conventions and the interpolation error. The model
    is zero beyond the image (smoothly, within 2 samples). Derivatives: ``"row"``, ``"col"``.
    """

    def __init__(self, data, oversampling=1, origin=None):
        images = _as_images(data, "data", 2)
        self.data = images
        self._init_images(images[None], oversampling, origin)

    def _evaluate(self, p, params, wanted):
        return self._image(np.zeros(p.nsources, dtype=np.intp), p.dr, p.dc, wanted)


class GriddedPSF(_SplinePSF):
    """PSF images at reference positions, bilinearly interpolated across the field.

    Like photutils' ``GriddedPSFModel``: each source's PSF is the bilinear blend of the four
    grid PSFs around its position (the nearest edge PSFs outside the grid).

    Parameters
    ----------
    data : array_like, shape (nimages, ny, nx)
        The PSF images (each as for :class:`ImagePSF`).
    grid_positions : array_like, shape (nimages, 2)
        ``(row, col)`` image position of each PSF, in absolute pixel coordinates. They must
        form a full rectangular grid (every combination of the distinct rows and columns,
        once, in any order).
    oversampling : int or (int, int), optional
        Samples per pixel. Default 1.
    origin : (float, float), optional
        ``(row, col)`` of the source in data samples; default the array centre.

    Notes
    -----
    ``d["row"]``/``d["col"]`` are the exact derivatives of this model: the moving PSF plus
    the change of the blend weights with position (constant inside a grid cell, zero outside
    the grid).
    """

    def __init__(self, data, grid_positions, oversampling=1, origin=None):
        images = _as_images(data, "data", 3)
        pos = np.asarray(grid_positions, dtype=float)
        if pos.shape != (images.shape[0], 2) or not np.isfinite(pos).all():
            raise ValueError(
                f"grid_positions must be finite (row, col) pairs, one per PSF image: shape "
                f"({images.shape[0]}, 2); got shape {pos.shape}"
            )
        rows, cols = np.unique(pos[:, 0]), np.unique(pos[:, 1])
        index = np.full((rows.size, cols.size), -1)
        ir, ic = np.searchsorted(rows, pos[:, 0]), np.searchsorted(cols, pos[:, 1])
        index[ir, ic] = np.arange(pos.shape[0])
        if rows.size * cols.size != pos.shape[0] or (index < 0).any():
            raise ValueError(
                f"grid_positions must form a full rectangular grid: {rows.size} distinct rows × "
                f"{cols.size} distinct columns needs {rows.size * cols.size} PSFs, each position once; "
                f"got {pos.shape[0]}"
            )
        self.data = images
        self.grid_positions = pos
        self._grid_rows, self._grid_cols, self._grid_index = rows, cols, index
        self._init_images(images, oversampling, origin)

    @staticmethod
    def _bracket(nodes: np.ndarray, x: np.ndarray):
        """Lower node index, fraction in [0, 1] and d fraction / dx for each ``x`` (clamped)."""
        if nodes.size == 1:
            z = np.zeros(x.shape)
            return np.zeros(x.shape, dtype=np.intp), z, z
        i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, nodes.size - 2)
        width = nodes[i + 1] - nodes[i]
        t = (x - nodes[i]) / width
        dt = np.where((t >= 0) & (t <= 1), 1.0 / width, 0.0)
        return i, np.clip(t, 0.0, 1.0), dt

    def _evaluate(self, p, params, wanted):
        dr, dc, n = p.dr, p.dc, p.nsources
        i, tr, dtr = self._bracket(self._grid_rows, p.source_row)
        j, tc, dtc = self._bracket(self._grid_cols, p.source_col)
        i1 = np.minimum(i + 1, self._grid_rows.size - 1)
        j1 = np.minimum(j + 1, self._grid_cols.size - 1)
        corners = [
            (i, j, (1 - tr) * (1 - tc), -dtr * (1 - tc), -(1 - tr) * dtc),
            (i, j1, (1 - tr) * tc, -dtr * tc, (1 - tr) * dtc),
            (i1, j, tr * (1 - tc), dtr * (1 - tc), -tr * dtc),
            (i1, j1, tr * tc, dtr * tc, tr * dtc),
        ]
        value = np.zeros(dr.shape[:1] + dc.shape[1:2] + (n,))
        out = {name: np.zeros_like(value) for name in wanted}
        for gi, gj, w, dw_dr, dw_dc in corners:
            if not w.any() and not dw_dr.any() and not dw_dc.any():
                continue
            v, d = self._image(self._grid_index[gi, gj], dr, dc, wanted)
            value += w * v
            if "row" in wanted:
                out["row"] += w * d["row"] + dw_dr * v
            if "col" in wanted:
                out["col"] += w * d["col"] + dw_dc * v
        return value, out
