"""The sparse3d 1.x API on the 2.x core, for code written against sparse3d 1.2.

Change the import line and nothing else::

    from sparse3d.legacy import ROISparse3D, Sparse3D, stack   # was: from sparse3d import ...

What you get is the 1.x behaviour: ``Sparse3D`` is a ``scipy.sparse.coo_matrix`` of shape
``(H*W, nsources)``; ``translate`` moves the array **in place** to an **absolute** offset from
the original position (and ``reset`` moves it back); ``dot`` with ``(nsources, k)`` weights
returns ``(k, H, W)`` (``ROISparse3D``: ``(nROIs, k, h, w)``); ``ROISparse3D.tocsr()`` is the
full-frame matrix; ``subdata``/``subrow``/``subcol``/``subshape``/``subdepth``, ``cooshape``,
``nsubimages``, ``multiply``, ``to_Sparse3D`` and ``to_ROISparse3D`` are there.

Every computation is done by the 2.x :class:`sparse3d.Sparse3D` and
:class:`sparse3d.ROISparse3D` (this namespace holds no mathematics of its own), so the 1.x
bugs are gone: ``>=`` computes ``>=``, ``np.subtract(S, 1)`` is ``S - 1``, a ufunc's values
survive ``translate``, and an ROI window past the image edge reads zeros. The migration
guide (``docs/migration.md``) lists every difference from 1.2.11.

Importing this module imports SciPy (``import sparse3d`` alone does not).
"""

from ._roi import ROISparse3D
from ._sparse3d import Sparse3D
from ._stack import stack

__all__ = ["ROISparse3D", "Sparse3D", "stack"]
