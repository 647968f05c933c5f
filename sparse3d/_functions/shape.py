"""Array facts: ``np.shape``, ``np.ndim``, ``np.size``, ``np.result_type``,
``np.iscomplexobj``/``np.isrealobj`` and ``np.transpose``."""

from __future__ import annotations

import numpy as np

from ._registry import (
    _S,
    axis_index,
    implements,
)


# -------------------------------------------------------------------------------------------
# Array facts
# -------------------------------------------------------------------------------------------
@implements(np.shape)
def _shape(a):
    """``(H, W, nsources)``."""
    return a.shape


@implements(np.ndim)
def _ndim(a):
    """Always 3."""
    return 3


@implements(np.size)
def _size(a, axis=None):
    """``H * W * nsources``, or the length of ``axis``."""
    return a.size if axis is None else a.shape[axis_index(axis, 3)]


@implements(np.result_type)
def _result_type(*arrays_and_dtypes):
    """NumPy's ``result_type`` with each Sparse3D standing for its dtype."""
    Sparse3D = _S()
    return np.result_type(*[x.dtype if isinstance(x, Sparse3D) else x for x in arrays_and_dtypes])


@implements(np.iscomplexobj)
def _iscomplexobj(x):
    """Whether the dtype is complex."""
    return x.dtype.kind == "c"


@implements(np.isrealobj)
def _isrealobj(x):
    """Whether the dtype is not complex."""
    return x.dtype.kind != "c"


@implements(np.transpose)
def _transpose(a, axes=None):
    """Identity for ``(0, 1, 2)``; any other order gives a transposed ``sparse.COO``."""
    return a.transpose(axes)
