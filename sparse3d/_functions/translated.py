"""Products of a family of translated arrays (a jitter loop): from a family's second product on,
the pixel-sorted scatter into a lent buffer, the window of one canvas model when the weights
repeat, and the planes scatter into sparse3d 1.x's ``(k, H, W)`` layout; the family's cached
inputs for them (``sorted_values``, the planes order). :func:`.products.dot` decides when
(``_fast_product``); :mod:`.planes` is the legacy loop's one-call product."""

from __future__ import annotations

import numpy as np

from .. import _kernels, _planes_kernels, _pool
from .._options import get_options
from .._structure.positions import _readonly


def _translated_model(a, w2: np.ndarray, dtype: np.dtype, into=None, planes=None) -> np.ndarray:
    """``(H, W, k)`` model of a family's later products (a jitter loop): the pixel-sorted scatter.

    The scatter sums into a buffer lent by :func:`sparse3d._pool.lend` (or into ``into``
    itself when it is C-contiguous): a loop's models re-use a few buffers whose pages are
    already mapped, instead of faulting in a fresh one per call (~1 ms per 6 MB model on a
    VM, more than the scatter's arithmetic). ``into`` in sparse3d 1.x's ``(k, H, W)``
    layout (the transposed view of a C-contiguous cube) is written in place by
    :func:`sparse3d._planes_kernels.planes_scatter` when the stamps are a grid (no scratch
    buffer, no transposing copy, no separate zeroing pass; each pixel sums its stamps by top
    row, equal to the other layouts' ascending-source sums to rounding); in any other layout
    it receives one copy of the result (the same bits as without ``into``), and the scratch
    buffer goes back to the pool. ``planes`` is :func:`_planes_view` of ``into``.
    """
    s = a._structure
    H, W = a.imshape
    canvas = _canvas_model(a, w2, dtype)
    if canvas is not None:  # the same weights as before: a window of the canvas model
        out = _pool.lend((H, W, w2.shape[1]), dtype) if into is None else into
        return _window(canvas, s, out)
    if planes is not None:
        # (k, H, W) planes (sparse3d 1.x's layout) of grid stamps: written in place, row by row
        _planes_kernels.planes_scatter(*_planes_inputs(a), w2, s.root_corner, planes)
        return into
    direct = into is not None and into.flags.c_contiguous
    buf = into if direct else _pool.lend((H, W, w2.shape[1]), dtype)  # dot() checked max_dense_bytes
    order = s.sorted_order()[1:]
    result = _kernels.sorted_scatter(
        order, sorted_values(a), s.root_corner, s.imshape, w2, dtype, s.sorted_rows(), out=buf
    )
    if into is None or direct:
        return result
    np.copyto(into, result)
    return into


#: The canvas model of :func:`_canvas_model` is kept only while it is at most this many times
#: the size of the image's model (stamps spread far beyond the image would make it large).
CANVAS_MAX_RATIO = 4
#: Weights larger than this are not remembered for :func:`_canvas_model` (a copy per call).
CANVAS_MAX_WEIGHT_BYTES = 16 * 2**20


def _canvas_model(a, w2: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
    """The model of ``a``'s untranslated stamps on a canvas holding every stored stamp pixel.

    For whole-pixel translations the model of ``a.translate(d)`` with weights ``w`` is a
    window of this one canvas model (zero outside it), with the same bits: each canvas
    pixel sums the same elements in the same order as the image pixel it lands on. The
    family (an array and its translations) remembers the last weights it was given (a copy,
    compared by value, never by identity) and builds the canvas model when the same weights
    come again: a jitter loop at constant weights then copies windows instead of scattering
    every stamp. Returns ``None`` when the weights are new (they are remembered), when the
    canvas would exceed ``CANVAS_MAX_RATIO`` times the image's model or ``max_dense_bytes``,
    when the weights exceed ``CANVAS_MAX_WEIGHT_BYTES``, or when the structure has no row
    pointer.
    """
    fam = a._family
    s = a._structure
    (rlo, rhi), (clo, chi) = s.position_range
    CH, CW = rhi - rlo + 1, chi - clo + 1
    H, W = a.imshape
    k = w2.shape[1]
    if s.nelements == 0 or CH * CW > CANVAS_MAX_RATIO * H * W or s.sorted_rows() is None:
        return None
    if CH * CW * k * dtype.itemsize > get_options()["max_dense_bytes"] or w2.nbytes > CANVAS_MAX_WEIGHT_BYTES:
        return None
    last = fam.get("canvas")  # (weights, result dtype, canvas model or None)
    same = last is not None and last[1] == dtype and _same_bits(last[0], w2)
    if same:
        if last[2] is None:
            order = s.sorted_order()[1:]
            canvas = _kernels.sorted_scatter(
                order, sorted_values(a), (rlo, clo), (CH, CW), w2, dtype, s.sorted_rows()
            )
            last = (last[0], dtype, _readonly(canvas))
            fam["canvas"] = last
        return last[2]
    # a copy in the weights' own memory order: column slices of a (nsources, nframes) array
    # (1.x's ``flux[:, frames]``) are Fortran-ordered, and a C-ordered copy costs a transpose
    fam["canvas"] = (_readonly(np.array(w2, copy=True, order="K")), dtype, None)
    return None


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` hold the same values bit for bit (-0.0 and NaN payloads
    included), in any memory layouts; a differing first row answers without a full copy."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.size and a[:1].tobytes() != b[:1].tobytes():
        return False  # new weights (a jitter loop's next frames) are told apart here
    return a.tobytes() == b.tobytes()


def _window(canvas: np.ndarray, s, out: np.ndarray) -> np.ndarray:
    """``out`` (H, W, k) = the part of ``canvas`` the image of structure ``s`` covers, else 0."""
    (rlo, _), (clo, _) = s.position_range
    r0, c0 = s.root_corner  # image pixel [0, 0] in stored coordinates
    H, W = s.imshape
    CH, CW = canvas.shape[:2]
    ra, rb = max(0, rlo - r0), min(H, rlo + CH - r0)  # image rows the canvas covers
    ca, cb = max(0, clo - c0), min(W, clo + CW - c0)
    if ra >= rb or ca >= cb:
        out[...] = 0
        return out
    if (ra, rb, ca, cb) != (0, H, 0, W):
        out[...] = 0
    out[ra:rb, ca:cb] = canvas[ra + r0 - rlo : rb + r0 - rlo, ca + c0 - clo : cb + c0 - clo]
    return out


def sorted_values(a) -> np.ndarray:
    """``a``'s values in its structure's pixel-sorted order (cached for the family)."""
    fam = a._family
    got = fam.get("sorted_values")
    if got is None:
        take = a._structure.sorted_order()[0]
        got = fam.setdefault("sorted_values", _readonly(a._values.ravel()[take]))
    return got


def _planes_view(a, into) -> np.ndarray | None:
    """``into`` ``(H, W, k)`` as the C-contiguous ``(k, H, W)`` planes that
    :func:`sparse3d._planes_kernels.planes_scatter` writes, or None (another layout, or stamps
    that are not a grid)."""
    planes = into.transpose(2, 0, 1)
    return planes if planes.flags.c_contiguous and a._structure.grid_corners() is not None else None


def _planes_inputs(a) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The stamps of ``a`` sorted by top row for :func:`sparse3d._planes_kernels.planes_scatter`
    (:func:`sparse3d._planes_kernels.planes_order`), cached for the family: translations share
    values and corners."""
    fam = a._family
    got = fam.get("planes")
    if got is None:
        got = fam.setdefault("planes", _planes_kernels.planes_order(a._values, *a._structure.grid_corners()))
    return got
