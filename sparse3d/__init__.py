"""sparse3d: 3-D sparse arrays of small dense stamps, for models of many sources in one image.

>>> from sparse3d import Sparse3D

`Sparse3D` speaks NumPy (NEP 13 ufuncs and operators, NEP 18 functions) with *stamp
semantics*, converts to scipy CSR/CSC for linear algebra and to ``sparse.COO``, and offers
labeled xarray views. Nothing here imports xarray or matplotlib eagerly.
"""

from ._options import DenseAllocationError, get_options, set_options
from .core import Sparse3D
from .roi import ROISparse3D

__all__ = ["DenseAllocationError", "ROISparse3D", "Sparse3D", "get_options", "set_options", "__version__"]

__version__ = "2.0.0.dev0"
