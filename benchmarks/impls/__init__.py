"""Implementations of the benchmark cases.

Each module exposes ``CASES``: case name -> factory ``(scene) -> Prepared``
(see :mod:`benchmarks.cases`).  :func:`load` imports one by its short name.
"""

from __future__ import annotations

import importlib

from benchmarks.cases import Factory

#: Short implementation name -> module.  ``legacy`` is ``sparse3d==1.2.11``,
#: imported in a separate process whose ``sys.path`` puts the cached install
#: first (both versions share the import name ``sparse3d``).
MODULES = {
    "numpy": "benchmarks.impls.numpy_baseline",
    "sparse3d": "benchmarks.impls.library",
    "legacy": "benchmarks.impls.library",
    "pydata": "benchmarks.impls.pydata_sparse",
}


def load(name: str) -> dict[str, Factory]:
    """Return the case factories of implementation ``name``.

    Parameters
    ----------
    name : str
        One of :data:`MODULES`.

    Returns
    -------
    dict
        Case name -> factory.
    """
    module = importlib.import_module(MODULES[name])
    return module.cases(legacy=(name == "legacy"))
