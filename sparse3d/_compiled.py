"""The compiled (numba) kernels of the package: one registry, the size threshold, :func:`precompile`.

Every module of the package whose name ends in ``_kernels.py`` is a *kernel module*: it defines
its kernels with ``@njit(cache=True)`` and lists them in a module-level dict ``SIGNATURES``
mapping each kernel's name to its one argument signature (a numba type string), or, when its
kernels are generic over dtypes (the array core's ``sparse3d/_kernels.py``), offers a function
``precompile_kernels()`` that compiles the common combinations.
Callers cast their arguments to exactly those types (float64 values, ``intp`` indices,
C-contiguous arrays), so each kernel is compiled once per environment and then loaded from
numba's on-disk cache; :func:`precompile` compiles them all ahead of the first use.

Problems below :data:`COMPILED_MIN_NNZ` stored entries never import numba (its import alone
costs ~1 s): they take the NumPy/SciPy paths, which are as fast at that size.

This module imports neither numba nor scipy at import time.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

#: Problems with fewer stored entries than this (stamp values of a design, entries of a
#: factor) use the NumPy/SciPy paths and never import numba. Measured on this machine: at
#: 2e5 entries the SciPy normal matrix and the NumPy supernodal solve take a few tens of ms,
#: against ~1 s to import numba and load the cached kernels.
COMPILED_MIN_NNZ = 200_000


def kernel_modules() -> list[str]:
    """Names of the package's kernel modules (files ending in ``_kernels.py``), sorted."""
    root = Path(__file__).resolve().parent
    names = []
    for path in sorted(root.rglob("*_kernels.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        names.append(".".join(rel.parts))
    return names


def _cache_key(signature: str) -> tuple:
    """The argument types of a signature string, as a call with such arguments looks them up.

    numba files a compiled kernel in its on-disk cache under the signature *as passed to
    ``compile``*; a call looks it up under the tuple of its argument types. Compiled from the
    string, a kernel was cached under the string, and the first call in every later process
    compiled it again (a fit after ``precompile()`` still paid ~14 s).
    """
    from numba.core import sigutils

    args, _ = sigutils.normalize_signature(signature)
    return tuple(args)


def precompile(verbose: bool = False) -> dict[str, float]:
    """Compile every numba kernel of sparse3d into numba's on-disk cache.

    The first use of a compiled kernel in a fresh environment (a new install, a new
    ``NUMBA_CACHE_DIR``) compiles it, which takes seconds; later processes load it from the
    cache. Run this once after installing (``python -m sparse3d precompile``) so that no fit
    pays for compilation.

    Parameters
    ----------
    verbose : bool, default False
        Print one line per kernel module and the total time.

    Returns
    -------
    dict of str to float
        Seconds spent per kernel module (import, compilation or cache load of all its
        kernels), and ``"total"``.

    Examples
    --------
    >>> import sparse3d
    >>> times = sparse3d.precompile()  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    times: dict[str, float] = {}
    for name in kernel_modules():
        t0 = time.perf_counter()
        module = importlib.import_module(name)
        signatures = getattr(module, "SIGNATURES", None)
        if signatures is not None:
            for kernel, signature in signatures.items():
                getattr(module, kernel).compile(_cache_key(signature))
            what = f"{len(signatures)} kernels"
        else:
            module.precompile_kernels()
            what = "kernels"
        times[name] = time.perf_counter() - t0
        if verbose:
            print(f"{name}: {what} in {times[name]:.2f} s")
    times["total"] = time.perf_counter() - t_start
    if verbose:
        print(f"total: {times['total']:.2f} s")
    return times
