"""The NEP 18 registry: :func:`implements`, ``HANDLED_FUNCTIONS``, :func:`array_function` (the
dispatch behind ``Sparse3D.__array_function__``), the shared axis/``out`` checks and the lazy
(Dask) backend hooks. The implementations live in the sibling concept modules."""

from __future__ import annotations

import importlib
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .._unsupported import UNSUPPORTED_FUNCTIONS, function_key

__all__ = [
    "HANDLED_FUNCTIONS",
    "UNSUPPORTED_FUNCTIONS",
    "LazyBackend",
    "array_function",
    "declare_lazy_provider",
    "implements",
    "lazy_backend",
    "register_lazy_backend",
]

HANDLED_FUNCTIONS: dict[Callable, Callable] = {}
_NoValue = np._NoValue


def implements(*numpy_functions: Callable) -> Callable:
    """Register the decorated function as the Sparse3D implementation of ``numpy_functions``."""

    def decorator(func: Callable) -> Callable:
        for f in numpy_functions:
            HANDLED_FUNCTIONS[f] = func
        return func

    return decorator


#: Registry functions that are not (yet) defined on arrays with several stamp groups; they
#: refuse grouped arrays with a TypeError naming ``S.groups``. Everything else in the registry
#: works on grouped arrays through the flat element space or a loop over the groups.
GROUPED_UNSUPPORTED: set[Callable] = set()


def _holds_grouped(args) -> bool:
    Sparse3D = _S()
    for a in args:
        items = a if isinstance(a, (list, tuple)) else (a,)
        if any(isinstance(x, Sparse3D) and x._structure.grouped for x in items):
            return True
    return False


def array_function(self, func, types, args, kwargs):
    """``Sparse3D.__array_function__``: dispatch to the registry or refuse clearly."""
    impl = HANDLED_FUNCTIONS.get(func)
    if impl is not None and func in GROUPED_UNSUPPORTED and _holds_grouped(args):
        raise TypeError(
            f"{function_key(func)} is not supported on Sparse3D arrays with several stamp groups; "
            "apply it to each of S.groups"
        )
    if impl is None:
        reason = UNSUPPORTED_FUNCTIONS.get(
            function_key(func), "it is not implemented for Sparse3D; convert with S.to_sparse() or S.tocsr()"
        )
        raise TypeError(f"{function_key(func)} is not supported on Sparse3D: {reason}")
    return impl(*args, **kwargs)


def _S():
    from ..core import Sparse3D

    return Sparse3D


def axis_index(axis, ndim: int) -> int:
    """``axis`` as an index in ``[0, ndim)``; NumPy's ``AxisError`` when out of range.

    The one normalisation used by every function taking an axis (reductions, tensordot,
    concatenate, transpose, size): axes are never taken modulo ``ndim``.
    """
    from numpy.lib.array_utils import normalize_axis_index

    return normalize_axis_index(operator.index(axis), ndim)


def _refuse_out(out, name: str) -> None:
    if out is not None:
        raise TypeError(f"{name}(..., out=...) is not supported on Sparse3D: arrays are immutable")


# -------------------------------------------------------------------------------------------
# Lazy operands (Dask arrays): the registry knows no integration
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LazyBackend:
    """How an integration evaluates products of a Sparse3D with its lazy arrays.

    ``dot(S, w)`` and ``tensordot(S, b, axes=(axes_a, axes_b))`` return lazy results;
    ``fit(S, data, errors, prior_mu, prior_sigma, mask)`` returns lazy weights.
    """

    dot: Callable
    tensordot: Callable
    fit: Callable


# Backends by the package prefix of their arrays' type module (``"dask"`` for
# ``dask.array.core.Array``), registered by the integration when it is imported.
_LAZY_BACKENDS: dict[str, LazyBackend] = {}
# Module to import on the first operand of a prefix with no backend yet (it registers
# itself): declared by ``sparse3d/__init__.py``, the one module that knows every layer.
_LAZY_PROVIDERS: dict[str, str] = {}


def register_lazy_backend(prefix: str, backend: LazyBackend) -> None:
    """Evaluate products with arrays whose type's module starts with ``prefix`` through ``backend``."""
    _LAZY_BACKENDS[prefix] = backend


def declare_lazy_provider(prefix: str, module: str) -> None:
    """Import ``module`` (which calls :func:`register_lazy_backend`) on the first such operand."""
    _LAZY_PROVIDERS[prefix] = module


def lazy_backend(x) -> LazyBackend | None:
    """The backend for ``x`` when it is a lazy array of a known integration, else None.

    Duck typing on the module of ``type(x)``: nothing is imported for NumPy operands, and
    the integration module only on its arrays' first use.
    """
    module = type(x).__module__
    for prefix, backend in _LAZY_BACKENDS.items():
        if module.startswith(prefix):
            return backend
    for prefix, provider in _LAZY_PROVIDERS.items():
        if module.startswith(prefix):
            importlib.import_module(provider)
            return _LAZY_BACKENDS[prefix]
    return None
