"""The jitter loop's product in one call: ``(k, H, W)`` planes of a translation of an array.

sparse3d 1.x code (:mod:`sparse3d.legacy`) evaluates a scene at many whole-pixel offsets::

    X.translate(offset)          # in place, absolute
    model = X.dot(flux[:, frames])   # (k, H, W)

Through :func:`sparse3d._functions.products.dot` each such product builds the translated
array, validates the weights, picks a path and lends the result: tens of microseconds of
Python per call with every cache cold from the model before (a 6 MB model per call), next
to a ~0.7 ms planes scatter. :func:`translated_planes` is the same product for a family
whose planes inputs (:func:`sparse3d._functions.translated._planes_inputs`) are built, i.e.
from the family's second product on: the planes scatter of the untranslated array's sorted
stamps at the translated image corner, into a lent ``(k, H, W)`` buffer, with nothing
else (no translated array is built). The first products, repeated weights (the canvas
model), grouped arrays and dtypes without a kernel keep the general path (``None`` is
returned); the planes scatter is the one the general path runs for such products, so the
bits are the same.
"""

from __future__ import annotations

import numpy as np

from .. import _planes_kernels, _pool
from .._options import check_dense_allocation
from . import products, translated

__all__ = ["translated_planes"]


def translated_planes(a, w: np.ndarray, offset: tuple[int, int]) -> np.ndarray | None:
    """``np.moveaxis(np.dot(a.translate(offset), w), -1, 0)`` as a new C-contiguous
    ``(k, H, W)`` array (lent, see :func:`sparse3d._pool.lend`), or ``None`` where the
    general path must run.

    Parameters
    ----------
    a : Sparse3D
        The untranslated array (never grouped here).
    w : numpy.ndarray, shape (nsources, k)
        Numeric weights (the caller checked ``ndim == 2`` and the dtype kind).
    offset : tuple of int
        The whole-pixel translation ``(drow, dcol)``, already validated for ``a``.
    """
    fam = a.__dict__.get("_family")
    inputs = None if fam is None else fam.get("planes")
    if inputs is None or w.shape[0] != inputs[3].shape[0]:
        return None  # not yet a repeated product of this family (or bad weights: the general path says so)
    dtype = products._result_dtype(a.dtype, w.dtype)
    if not products._kernels_pay(a, dtype, w.dtype):
        return None
    s = a._structure
    H, W = s.imshape
    k = w.shape[1]
    check_dense_allocation(H * W * k * dtype.itemsize, lambda: f"a model cube of shape {(H, W, k)}")
    if translated._canvas_model(a, w, dtype) is not None:
        return None  # the same weights again: a window of the canvas model (the general path)
    products._count_product(a)  # as the general path's products._fast_product counts it
    cube = _pool.lend((k, H, W), dtype)
    r0, c0 = s.root_corner
    return _planes_kernels.planes_scatter(*inputs, w, (r0 - offset[0], c0 - offset[1]), cube)
