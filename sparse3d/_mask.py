"""The negated mask: a boolean ``sparse.COO`` that is True off the stamps.

Imported lazily (it imports ``sparse``, hence numba) by
:func:`sparse3d._functions.logical_complement`.
"""

from __future__ import annotations

import numpy as np
import sparse

__all__ = ["LogicalMask"]


class LogicalMask(sparse.COO):
    """A boolean ``sparse.COO`` (fill value True) made by negating a Sparse3D mask.

    It reports NumPy as its array namespace: xarray picks the namespace of its operands, and a
    plain ``sparse.COO`` would send ``da.fillna(v)`` (``where(notnull(S), S, v)``) to
    ``sparse.where``, which cannot take a Sparse3D; with NumPy's namespace ``np.where``
    dispatches to the Sparse3D implementation, which reads the mask at the stamps.
    """

    def __array_namespace__(self, *, api_version=None):
        return np
