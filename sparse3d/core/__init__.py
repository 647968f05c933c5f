"""The array: :class:`Sparse3D`, one class in four files.

========================  ==================================================================
``array.py``              the class: construction, attributes, geometry, products, ``fit``
``values.py``             how the values are held (one block, deferred, joined groups)
``groups.py``             stamp groups (several stamp shapes in one array)
``conversions.py``        scipy CSC/CSR/COO, ``sparse.COO``, dense, xarray, Dask
========================  ==================================================================
"""

from .array import Sparse3D

# pickles of arrays name their rebuilders in this module
from .array import _rebuild as _rebuild
from .array import _rebuild_grouped as _rebuild_grouped

__all__ = ["Sparse3D"]

# ... under this module's name, which stays the same however the package is laid out
_rebuild.__module__ = _rebuild_grouped.__module__ = __name__
