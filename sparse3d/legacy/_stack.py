"""The 1.x ``stack``: join legacy arrays along the source axis (``np.concatenate`` of 2.x)."""

from __future__ import annotations

import numpy as np

from ._roi import ROISparse3D
from ._sparse3d import Sparse3D

__all__ = ["stack"]


def _corners(a: ROISparse3D) -> list[tuple[int, int]]:
    return [(int(r), int(c)) for r, c in a.ROI_corners]


def stack(arrays: list[Sparse3D]) -> Sparse3D:
    """Stack legacy arrays along the source axis, as sparse3d 1.x's ``stack``.

    Parameters
    ----------
    arrays : list of Sparse3D or list of ROISparse3D
        Arrays with the same ``imshape`` and ``imcorner`` and the same stamp size (and, for
        ``ROISparse3D``, the same regions). A list of one array returns that array.

    Returns
    -------
    Sparse3D or ROISparse3D
        ``ROISparse3D`` when every input is one, else ``Sparse3D``; at the inputs' common
        offset.
    """
    if not isinstance(arrays, list):
        raise ValueError("Pass a list of arrays")
    if len(arrays) == 0:
        raise ValueError("No arrays to stack")
    if len(arrays) == 1:
        return arrays[0]
    if not all(isinstance(a, Sparse3D) for a in arrays):
        raise ValueError("Input arrays must be the same data type.")
    first = arrays[0]
    if len({a.imshape for a in arrays}) != 1:
        raise ValueError("Can only stack `Sparse3D` instances with the same `imshape`.")
    if len({a.subshape[:2] for a in arrays}) != 1:
        shapes = sorted({a.subshape[:2] for a in arrays})
        raise ValueError(
            f"Can only stack `Sparse3D` instances with the same stamp shape (subshape[:2]); got {shapes}. "
            "(np.concatenate of 2.x sparse3d.Sparse3D arrays joins different stamp shapes)"
        )
    if len({a.coord for a in arrays}) != 1:
        raise ValueError("Can only stack arrays translated to the same offset; reset() them first")
    base = np.concatenate([a._base for a in arrays], axis=2)
    if all(isinstance(a, ROISparse3D) for a in arrays):
        for name in ("nROIs", "ROI_size"):
            if len({str(getattr(a, name)) for a in arrays}) != 1:
                raise ValueError(f"Can only stack `Sparse3D` instances with the same `{name}`.")
        if any(_corners(a) != _corners(first) for a in arrays[1:]):
            raise ValueError("Can only stack `Sparse3D` instances with the same `ROI_corner`'s.")
        return first._like(base)
    return Sparse3D._from_base(base, first.coord)
