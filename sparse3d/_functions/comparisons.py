"""Comparisons: ``np.isclose`` (elementwise, stamp semantics) and the whole-array
``np.allclose``/``np.array_equal`` (logical arrays, off-stamp zeros included)."""

from __future__ import annotations

import numpy as np

from .._ufuncs import apply_elementwise
from ._registry import (
    _S,
    implements,
)

# -------------------------------------------------------------------------------------------
# Whole-array comparisons (logical arrays, off-stamp zeros included)
# -------------------------------------------------------------------------------------------


@implements(np.isclose)
def _isclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    """Elementwise on stamp values → boolean Sparse3D (off-stamp is False, stamp semantics)."""
    kw = {"rtol": rtol, "atol": atol, "equal_nan": equal_nan}
    return apply_elementwise(np.isclose, (a, b), kw, name="np.isclose")




def _logical_operands(a, b):
    """Both operands as ``sparse.COO`` (Sparse3D) or ndarray, for a logical comparison."""
    Sparse3D = _S()

    def conv(x):
        if isinstance(x, Sparse3D):
            return x.coo
        return x if hasattr(x, "coords") else np.asarray(x)

    return conv(a), conv(b)


def _stored_pair(a, b):
    """In-image stored values of two Sparse3D sharing a structure, else None."""
    Sparse3D = _S()
    if isinstance(a, Sparse3D) and isinstance(b, Sparse3D) and a._structure.equals(b._structure):
        s = a._structure
        if s.all_in_image:
            return a._values, b._values
        return a._values[s.in_image], b._values[s.in_image]
    return None


@implements(np.allclose)
def _allclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    """Whether the logical arrays are close everywhere (zeros off the stamps included).

    NumPy's ``isclose`` rule on every logical element (``b`` is made inexact, so
    ``abs(int64.min)`` cannot overflow; a finite value is never close to an infinity).
    Against a scalar only the stored values and, once, an implicit zero are compared, so
    nothing image-sized is allocated; against an ndarray the array is densified (refused
    above ``max_dense_bytes``).
    """
    Sparse3D = _S()
    kw = {"rtol": rtol, "atol": atol, "equal_nan": equal_nan}
    pair = _stored_pair(a, b)
    if pair is not None:
        return bool(np.allclose(*pair, **kw))
    for S, x, first in ((a, b, True), (b, a, False)):
        if isinstance(S, Sparse3D) and not isinstance(x, Sparse3D) and np.ndim(x) == 0:
            s = S._structure
            v = S._values if s.all_in_image else S._values[s.in_image]
            if not np.all(np.isclose(*((v, x) if first else (x, v)), **kw)):
                return False
            z = np.zeros((), dtype=S.dtype)
            return S.nnz == S.size or bool(np.isclose(*((z, x) if first else (x, z)), **kw))
    ca, cb = _logical_operands(a, b)
    if isinstance(ca, np.ndarray) or isinstance(cb, np.ndarray):
        da = a.todense() if isinstance(a, Sparse3D) else (ca.todense() if hasattr(ca, "todense") else ca)
        db = b.todense() if isinstance(b, Sparse3D) else (cb.todense() if hasattr(cb, "todense") else cb)
        return bool(np.allclose(da, db, **kw))
    import sparse

    return bool(sparse.elemwise(np.isclose, ca, cb, **kw).all())


@implements(np.array_equal)
def _array_equal(a1, a2, equal_nan=False):
    """Whether the logical arrays have equal shape and values (zeros off the stamps included)."""
    if np.shape(a1) != np.shape(a2):
        return False
    pair = _stored_pair(a1, a2)
    if pair is not None:
        return bool(np.array_equal(*pair, equal_nan=equal_nan))
    ca, cb = _logical_operands(a1, a2)
    if isinstance(ca, np.ndarray) or isinstance(cb, np.ndarray):
        da = ca.todense() if hasattr(ca, "todense") else ca
        db = cb.todense() if hasattr(cb, "todense") else cb
        return bool(np.array_equal(da, db, equal_nan=equal_nan))
    ne = ca != cb
    if equal_nan:
        import sparse

        both = sparse.elemwise(np.logical_and, np.isnan(ca), np.isnan(cb))
        ne = sparse.elemwise(np.logical_and, ne, sparse.elemwise(np.logical_not, both))
    return not bool(ne.any())
