"""Fill-reducing orderings of the normal matrix from the geometry of the stamps.

Two sources are coupled in ``N = A^T C^-1 A`` only when their stamps share a pixel, so the
graph of ``N`` is a 2-D geometric graph: a line across the image separates it, and the
sources whose stamps straddle the line are the separator. :func:`nested_dissection_order`
splits the sources recursively across the longer side, at the line near the median (between
the centres' 40 % and 60 % quantiles) that the fewest stamps straddle (on random 11 x 11
stamps: 37 % fewer factorisation flops than the median itself), and orders every separator
after the two halves it separates (George's nested dissection, with the
separators read off the stamp boxes rather than searched for in the graph). Each separator
is then thinned: a straddling stamp that overlaps no stamp on the far side joins the near
half (on random 10 x 10 stamps: 20 % fewer factorisation flops, 15 % less fill); with mixed stamp
sizes only the short ones are tested (the few long ones nearly always reach across, and testing
them would widen the band of stamps compared: the same flops, 5 ms less on issue 13's scene). On 2-D
grids this gives much less fill than minimum-degree orderings, and costs one pass over the
sources per level.
"""

from __future__ import annotations

import numpy as np

from ..core import Sparse3D
from .assemble import _regular_corners

#: sets of at most this many sources are not split further
ND_LEAF = 16

Boxes = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def stamp_boxes(design: object, idx: np.ndarray | None) -> Boxes | None:
    """The pixel boxes ``[rlo, rhi) x [clo, chi)`` of the stamps of the parameters ``idx``.

    Only for a :class:`~sparse3d.Sparse3D` whose stamps are all regular rectangles, of one
    shape or of several (stamp groups: each source gets its own group's box); None otherwise.
    ``idx`` (None: all) are the free parameters; those beyond the sources (background
    columns) have no box and are not included: they come last.
    """
    if not isinstance(design, Sparse3D):
        return None
    n = design.nsources
    if design._structure.grouped:  # several stamp shapes: one box per source, in source order
        rlo, rhi = np.empty(n, dtype=np.intp), np.empty(n, dtype=np.intp)
        clo, chi = np.empty(n, dtype=np.intp), np.empty(n, dtype=np.intp)
        for group, sources in zip(design.groups, design.group_sources):
            corners = _regular_corners(group)
            if corners is None and group.nsources:
                return None
            if group.nsources:
                nr, nc, _ = group._values.shape
                rlo[sources], clo[sources] = corners
                rhi[sources], chi[sources] = corners[0] + nr, corners[1] + nc
    else:
        corners = _regular_corners(design)
        if corners is None:
            return None
        nr, nc, _ = design._values.shape
        rlo = np.asarray(corners[0], dtype=np.intp)
        clo = np.asarray(corners[1], dtype=np.intp)
        rhi, chi = rlo + nr, clo + nc
    if idx is not None:
        sel = idx[idx < n]
        rlo, rhi, clo, chi = rlo[sel], rhi[sel], clo[sel], chi[sel]
    return tuple(np.ascontiguousarray(a, dtype=np.intp) for a in (rlo, rhi, clo, chi))


def nested_dissection_order(boxes: Boxes, n: int) -> np.ndarray:
    """A nested-dissection order of ``n`` parameters, the first ``len(boxes[0])`` of which
    have stamp boxes; the others (coupled to everything, e.g. a background) come last.

    Returns ``perm`` (intp): the factor's ``k``-th column is the parameter ``perm[k]``.
    """
    from ._ordering_kernels import nested_dissection

    order = nested_dissection(*boxes, ND_LEAF)
    if order.size < n:
        order = np.concatenate([order, np.arange(order.size, n, dtype=np.intp)])
    return order
