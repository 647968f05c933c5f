"""Scene fitting on top of the fit layer: source positions and frame jitter.

The layer above :mod:`sparse3d.fit` and the PSF models (see ``DESIGN.md``): it linearises a
PSF model around current positions and solves fluxes and position offsets together in the
fit layer's sparse normal equations, iterating with damping.

Where each concept lives
------------------------
``positions.py``
    :func:`fit_positions`, :class:`PositionFitResult`: fluxes and sub-pixel positions of
    every source in one image (damped Gauss-Newton).
``jitter.py``
    :func:`fit_jitter`, :class:`JitterFitResult`: one common ``(drow, dcol)`` per frame of a
    stack with every star's flux in every frame, one factorisation per iteration.
``_linearise.py``
    The Gauss-Newton design ``[L, f dL/drow, f dL/dcol]`` and per-source stamp sums.
``_inputs.py``
    Validation of images, error maps, masks and positions.

Importing this package imports SciPy (through :mod:`sparse3d.fit`); ``import sparse3d``
does not import it.
"""

from .jitter import JitterFitResult, fit_jitter
from .positions import PositionFitResult, fit_positions

__all__ = ["JitterFitResult", "PositionFitResult", "fit_jitter", "fit_positions"]
