"""Temporary elision: an operator whose operand is a temporary no one can see again writes
its result into that operand's values buffer, as NumPy does for ndarray temporaries.

:func:`_reusable_temporary` decides, from reference counts measured once per process on the
interpreter's own operator path (:func:`_calibrate`); the conditions are conservative.
:func:`sparse3d._ufuncs.array_ufunc` asks it before deferring a chain, and passes the
temporary on to :func:`sparse3d._ufuncs.apply_elementwise` as ``reuse``.
"""

from __future__ import annotations

import sys
import threading
import weakref

import numpy as np
from numpy.lib import mixins as _mixins


def _sparse3d_type():
    from .core import Sparse3D

    return Sparse3D


_OPERATOR_OPCODES = frozenset(
    __import__("dis").opmap[name]
    for name in ("BINARY_OP", "UNARY_NEGATIVE", "UNARY_POSITIVE", "UNARY_INVERT")
    if name in __import__("dis").opmap
)
#: code object of each NumPy mixin operator -> refcount of a temporary seen from array_ufunc
_TEMPORARY_REFCOUNT: dict | None = None
_CALIBRATING: list | None = None
_CALIBRATING_THREAD: int | None = None  # only the calibrating thread records


def _mixin_codes() -> dict:
    codes = {}
    for name in ("__add__", "__radd__", "__neg__"):
        fn = getattr(_mixins.NDArrayOperatorsMixin, name)
        codes[name] = fn.__code__
    return codes


def _calibrate() -> dict:
    """Reference counts of a temporary operand, measured on a tiny array at first use.

    Each operator path (forward, reflected, unary) is run on a temporary and on a named
    array; the path is enabled only when the named array is seen with exactly one more
    reference than the temporary (true on CPython before 3.14, whose borrowed stack
    references would hide the name: there elision stays off).
    """
    global _CALIBRATING, _CALIBRATING_THREAD
    out: dict = {}
    if sys.implementation.name != "cpython" or sys.version_info >= (3, 14):
        return out
    from .core import Sparse3D

    z = np.zeros((1, 1, 1), dtype=float)
    S = Sparse3D(z, z.astype(int), z.astype(int), imshape=(1, 1))
    codes = _mixin_codes()
    _CALIBRATING_THREAD = threading.get_ident()
    _CALIBRATING = []
    try:  # each line records [S + 0.0 with S named, the outer operator on a temporary, ...]
        (S + 0.0) + 1.0
        t = S + 0.0
        t + 1.0  # ... then S + 0.0 again and the outer operator on the named t
        1.0 + (S + 0.0)
        t = S + 0.0
        1.0 + t
        -(S + 0.0)
        t = S + 0.0
        -t  # noqa: B018
        seen = _CALIBRATING
    finally:
        _CALIBRATING = _CALIBRATING_THREAD = None
    del t
    if len(seen) == 12:
        for key, (_, temporary, _, named) in zip(("__add__", "__radd__", "__neg__"), zip(*[iter(seen)] * 4)):
            if named == temporary + 1:
                out[codes[key]] = temporary
    return out


def _reusable_temporary(self, ufunc: np.ufunc, kwargs: dict):
    """``self`` if its values buffer can safely receive the result of this ufunc call.

    All of these must hold, so that no array anyone can still reach is modified:

    * the call comes straight from an operator (``a - b``, ``-a``, ``c * a``) executed by
      the interpreter: the caller of NumPy's mixin method is a Python frame whose current
      instruction is the operator itself (not a call into C code that might keep a
      reference of its own);
    * ``self`` (an exact Sparse3D) has exactly the reference count of a temporary on that
      path, measured once by :func:`_calibrate` (a name, list, dict, cache, xarray or Dask
      object holding it adds a reference);
    * its values own their memory and are referenced by ``self`` alone (no view, no other
      Sparse3D such as a ``translate`` result, no ``S.data`` handed out and kept), and
      neither is the target of a weak reference;
    * a float or complex single-output ufunc, no keyword arguments, and NumPy's error state
      does not raise (so the loop cannot stop half-way through the buffer).
    """
    global _TEMPORARY_REFCOUNT
    if ufunc.nout != 1 or kwargs or type(self) is not _sparse3d_type() or self.dtype.kind not in "fc":
        return None
    try:
        caller = sys._getframe(2)  # 0: here, 1: array_ufunc, 2: the mixin method (if any)
    except ValueError:  # called with no Python caller at all
        return None
    code = caller.f_code
    if _CALIBRATING is not None:  # no elision anywhere while calibrating
        if _CALIBRATING_THREAD == threading.get_ident():
            _CALIBRATING.append(sys.getrefcount(self))
        return None
    if _TEMPORARY_REFCOUNT is None:
        _TEMPORARY_REFCOUNT = {}  # no elision while calibrating
        _TEMPORARY_REFCOUNT = _calibrate()
    expected = _TEMPORARY_REFCOUNT.get(code)
    if expected is None or sys.getrefcount(self) != expected:
        return None
    user = caller.f_back
    if user is None or user.f_code.co_code[user.f_lasti] not in _OPERATOR_OPCODES:
        return None
    if self._pending_groups is not None:  # values shared with the arrays it joins
        return None
    if sys.getrefcount(self._values) != 2:  # the attribute and getrefcount's argument
        return None
    if self._values.base is not None or not self._values.flags.owndata:
        return None
    if weakref.getweakrefcount(self) or weakref.getweakrefcount(self._values):
        return None  # reachable through a weak reference (e.g. a WeakValueDictionary)
    if any(v in ("raise", "call") for v in np.geterr().values()):
        return None
    return self
