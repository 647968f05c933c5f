"""One BLAS thread around loops of small products (the fit's supernodal blocks, stamp resampling).

Those products have inner dimensions of a stamp side or a supernode (~10): threaded BLAS gains
nothing there and, on a busy machine, spins (measured 3-7x slower). ``threadpoolctl`` finds the
BLAS libraries by scanning what the process has loaded, which costs milliseconds, so the
controller is built once per set of libraries: once before SciPy's linear algebra is loaded
(NumPy's BLAS only) and once after (SciPy bundles its own BLAS).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

__all__ = ["single_threaded_blas"]

_MISSING = object()
_CONTROLLERS: dict[bool, Any] = {}


def single_threaded_blas() -> contextlib.AbstractContextManager[Any]:
    """A context manager limiting every loaded BLAS to one thread (a no-op without threadpoolctl)."""
    key = "scipy.linalg" in sys.modules
    controller = _CONTROLLERS.get(key, _MISSING)
    if controller is _MISSING:
        try:
            from threadpoolctl import ThreadpoolController

            controller = ThreadpoolController()
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            controller = None
        _CONTROLLERS[key] = controller
    if controller is None:  # pragma: no cover
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")
