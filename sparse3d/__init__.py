"""sparse3d: 3-D sparse arrays of small dense stamps, for models of many sources in one image.

>>> from sparse3d import Sparse3D

`Sparse3D` speaks NumPy (NEP 13 ufuncs and operators, NEP 18 functions) with *stamp
semantics*, converts to scipy CSR/CSC for linear algebra and to ``sparse.COO``, fits source
brightnesses, and offers labeled xarray views. ``import sparse3d`` loads only NumPy: scipy,
pydata/sparse, xarray, the solvers and matplotlib are imported when first needed.
"""

from . import _functions
from ._options import DenseAllocationError, get_options, set_options
from .core import Sparse3D
from .roi import ROISparse3D

# Dask arrays as operands of np.dot / np.tensordot / S.fit: sparse3d.dask registers itself
# with the core's function registry when imported; import it on the first Dask operand.
_functions.declare_lazy_provider("dask", "sparse3d.dask")

__all__ = [
    "DenseAllocationError",
    "FitResult",
    "ROISparse3D",
    "SingularNormalMatrixError",
    "Sparse3D",
    "UnconstrainedSourceWarning",
    "get_options",
    "precompile",
    "set_options",
    "__version__",
]

__version__ = "2.0.0.dev0"

_FROM_FIT = ("FitResult", "SingularNormalMatrixError", "UnconstrainedSourceWarning")


def precompile(verbose: bool = False) -> dict[str, float]:
    """Compile every numba kernel of sparse3d into numba's on-disk cache (see :mod:`sparse3d._compiled`).

    The first large fit in a fresh environment otherwise compiles its kernels (seconds, once
    per environment); ``python -m sparse3d precompile`` does the same from the command line.
    Returns the seconds spent per kernel module and ``"total"``.
    """
    from ._compiled import precompile as _precompile

    return _precompile(verbose=verbose)


def __getattr__(name: str):
    # the fitting names import scipy and the solvers: load them on first use only
    if name in _FROM_FIT:
        from . import fit

        return getattr(fit, name)
    raise AttributeError(f"module 'sparse3d' has no attribute {name!r}")
