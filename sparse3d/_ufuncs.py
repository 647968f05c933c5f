"""NEP 13 (``__array_ufunc__``): every ufunc and operator, with stamp semantics.

Policy
------
* ``method="__call__"``: the ufunc is applied to the stored stamp values only; the result
  has the same structure (off-stamp stays zero). All ufuncs, not a whitelist, with one
  exception: ``np.logical_not(S)`` and ``~S`` on a boolean ``S`` negate a mask, implicit
  zeros included, and return a ``sparse.COO`` with fill value True (xarray's ``notnull``
  and ``count`` rely on it).
* An elementwise error (an integer to a negative power, ...) caused only by off-image
  stamp pixels, which are not array contents, does not fail the operation: it is retried
  on the contents, and the off-image results become 0.
* Operands: Python/NumPy scalars; ndarrays (or array-likes) that broadcast against the
  *logical* shape ``(H, W, nsources)``; other :class:`~sparse3d.Sparse3D` arrays with an
  equal structure. Per-source operands (``(nsources,)``, ``(1, 1, nsources)``) broadcast
  straight onto the stamp block; image-dependent operands (``(H, W, 1)``, ``(H, W, n)``)
  are gathered at the stamp pixels. Off-image stamp pixels (kept for ``translate``) see
  such an operand as 0, since it has no value there.
* Generalized ufuncs (``np.matmul``, ``@``) go to the function registry.
* ``method="reduce"`` (``np.add.reduce``, ``np.maximum.reduce``, …) goes to the same
  reductions as ``np.sum``/``np.max``. Other methods (``accumulate``, ``outer``, ``at``,
  ``reduceat``) raise ``TypeError``.
* ``out=`` is refused (arrays are immutable); in-place operators rebind instead.
  ``where=`` is refused: use ``np.where``.

Temporary elision
-----------------
Every result is a new array, but a chain such as ``np.exp(-0.5 * (X - v) ** 2)`` need not
allocate a new buffer per step: when an operand of an operator is a *temporary* that no one
can see again, its buffer is reused for the result (``out=``), as NumPy does for ndarray
temporaries. See :mod:`sparse3d._elision` for the conditions; they are conservative.

Deferred chains
---------------
On large float arrays, the arithmetic ufuncs and ``exp`` with scalar, per-source or Sparse3D
operands are not computed at once when they provably report nothing (no warning, no error):
the result records the operation and the whole chain is evaluated in one chunked pass when
its values are first used (:mod:`sparse3d._deferred`). Values, dtypes, warnings and errors
are those of the eager path.
"""

from __future__ import annotations

import numbers
import sys

import numpy as np
from numpy.lib import mixins as _mixins

from . import _deferred, _elision, _pool

__all__ = ["array_ufunc", "stamp_operand", "common_structure", "apply_elementwise"]


def _sparse3d_type():
    from .core import Sparse3D

    return Sparse3D


def _describe_difference(a, b) -> str:
    if a.grouped or b.grouped:
        shapes = [list(x.stamp_shapes) if x.grouped else [x.stamp_shape[:2]] for x in (a, b)]
        if shapes[0] != shapes[1] or a.nsources != b.nsources:
            return f"stamp groups differ: shapes {shapes[0]} vs {shapes[1]}"
    elif a.stamp_shape != b.stamp_shape:
        return f"stamp shapes differ: {a.stamp_shape} vs {b.stamp_shape}"
    if a.imshape != b.imshape or a.imcorner != b.imcorner:
        return f"image bounds differ: imshape {a.imshape} at {a.imcorner} vs {b.imshape} at {b.imcorner}"
    if a.grouped:  # both grouped, with the same stamp shapes in the same group order
        if not all(np.array_equal(x, y) for x, y in zip(a.sources, b.sources)):
            return "the stamp groups hold different sources: the same stamp shapes in another source order"
        blocks = list(zip(a.groups, b.groups))
    else:
        blocks = [(a, b)]
    which = [
        name
        for name in ("row", "col")
        if not all(np.array_equal(getattr(x, name), getattr(y, name)) for x, y in blocks)
    ]
    return f"stamp positions differ ({' and '.join(which)})"


def common_structure(arrays):
    """The structure shared by all ``arrays`` (Sparse3D); ``ValueError`` if they differ."""
    first = arrays[0]._structure
    for other in arrays[1:]:
        if not first.equals(other._structure):
            raise ValueError(
                "operands have different stamp structures ("
                + _describe_difference(first, other._structure)
                + "); combine arrays built from the same row/col and image bounds, or use "
                "S.with_data(values) to put new values on the same stamps"
            )
    return first


def stamp_operand(x, structure, name: str = "operand"):
    """Turn an operand into something that broadcasts against the stamp block ``(nr, nc, n)``."""
    Sparse3D = _sparse3d_type()
    if isinstance(x, Sparse3D):
        return x._values
    if x is None or isinstance(x, (bool, int, float, complex)):
        return x
    if isinstance(x, np.generic):
        if x.dtype.kind not in "biufc":
            raise TypeError(f"{name} must be numeric; got a NumPy scalar of dtype {x.dtype}")
        return x
    if isinstance(x, numbers.Number):  # Fraction, Decimal, ...: NumPy would make object arrays
        raise TypeError(
            f"{name} is a {type(x).__name__}; Sparse3D arrays hold NumPy numeric dtypes, so "
            "convert it first (e.g. float(x))"
        )
    if hasattr(x, "unit") and hasattr(x, "value"):
        raise TypeError(
            f"{name} carries a unit ({x.unit}); elementwise operations on Sparse3D take plain numbers "
            "(use .value, or attach the unit to a dot product's weights)"
        )
    if type(x).__module__.startswith(("sparse", "scipy")):
        raise TypeError(
            f"{name} of type {type(x).__name__} cannot be combined elementwise with a Sparse3D; "
            "build a Sparse3D with the same stamps (S.with_data) or convert S with to_sparse()"
        )
    arr = np.asarray(x)
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"{name} must be numeric; got an array of dtype {arr.dtype}")
    if arr.ndim == 0:
        return arr
    arr3 = _logical_operand(arr, structure, name)
    if structure.grouped:  # split by stamp group in _apply_grouped
        return arr3
    return _on_stamps(arr3, structure)


def _logical_operand(arr: np.ndarray, structure, name: str) -> np.ndarray:
    """``arr`` checked against the logical shape ``(H, W, nsources)``, as a 3-D view."""
    logical = structure.shape
    try:
        out_shape = np.broadcast_shapes(arr.shape, logical)
    except ValueError:
        out_shape = None
    if out_shape != logical:
        hint = ""
        if not structure.grouped and arr.shape == structure.stamp_shape:
            hint = (
                "; this looks like stamp-shaped values (nr, nc, nsources): use S.with_data(values) to "
                "build an array with the same stamps"
            )
        raise ValueError(
            f"{name} with shape {arr.shape} does not broadcast against the array's logical shape "
            f"{logical} (H, W, nsources){hint}"
        )
    return arr.reshape((1,) * (3 - arr.ndim) + arr.shape)


def _on_stamps(arr3: np.ndarray, structure) -> np.ndarray:
    """A 3-D logical operand as something that broadcasts against the stamp block."""
    if arr3.shape[0] == 1 and arr3.shape[1] == 1:
        return arr3  # per-source (or scalar-like): broadcasts over the stamp block directly
    # image-dependent operand: gather it at every stamp pixel (int64 offsets: positions may
    # be stored as int32 while the image corner lies beyond 2**31)
    r0, c0 = structure.root_corner  # stored positions minus it: pixel offsets (no shifted copy)
    r = np.subtract(structure._row, r0, dtype=np.int64) if arr3.shape[0] > 1 else 0
    c = np.subtract(structure._col, c0, dtype=np.int64) if arr3.shape[1] > 1 else 0
    k = np.arange(structure.nsources) if arr3.shape[2] != 1 else 0
    m = structure.in_image
    if not structure.all_in_image:
        r = np.where(m, r, 0) if arr3.shape[0] > 1 else r
        c = np.where(m, c, 0) if arr3.shape[1] > 1 else c
    gathered = arr3[r, c, k]
    gathered = np.broadcast_to(gathered, structure.stamp_shape)
    if not structure.all_in_image:
        gathered = np.where(m, gathered, np.zeros((), dtype=gathered.dtype))
    return gathered


def apply_elementwise(func, args, kwargs=None, name: str | None = None, reuse=None):
    """Apply ``func`` to the stamp values of the Sparse3D ``args`` (others as operands).

    Returns a Sparse3D (or a tuple of them for multi-output functions) with the shared
    structure. Used by ``__array_ufunc__`` and by registry functions such as ``np.clip``.
    ``reuse`` is a temporary Sparse3D operand whose values buffer may receive the result
    (see :func:`sparse3d._elision._reusable_temporary`); only ``__array_ufunc__`` passes one.
    """
    Sparse3D = _sparse3d_type()
    arrays = [a for a in args if isinstance(a, Sparse3D)]
    structure = common_structure(arrays)
    label = name or getattr(func, "__name__", "function")
    if structure.grouped:  # a plain ufunc: one ordinary call per group, results held per group
        by_group = _per_group_arrays(func, args, kwargs, structure)
        if by_group is not None:
            return Sparse3D._joined(by_group, structure)
    if structure.grouped and any(
        (a._pending_groups is not None) if isinstance(a, Sparse3D) else not _scalar_like(a) for a in args
    ):  # array operands, or values joined without a copy: group by group
        return _apply_grouped(func, args, kwargs, label, structure)
    ops = [stamp_operand(a, structure, name=f"operand {i} of {label}") for i, a in enumerate(args)]
    if reuse is not None and _result_dtype(func, ops) == reuse.dtype:
        buf = reuse._values
        buf.flags.writeable = True  # owned by ``reuse`` alone, which no one can see again
        try:
            result = func(*ops, out=buf, **(kwargs or {}))
        finally:
            buf.flags.writeable = False
        return _wrap(result, structure)
    out = None
    if isinstance(func, np.ufunc) and func.nout == 1 and not kwargs:
        dtype = _result_dtype(func, ops)
        if dtype is not None and structure.nelements * dtype.itemsize >= _pool.MIN_BYTES:
            out = _pool.take(structure.block_shape, dtype)  # a dead array's buffer, rewritten whole
    try:
        result = func(*ops, **(kwargs or {})) if out is None else func(*ops, out=out)
    except (ValueError, ArithmeticError):
        if structure.all_in_image:
            raise
        result = _on_content_only(func, ops, kwargs, structure)
    if isinstance(result, tuple):
        return tuple(_wrap(r, structure) for r in result)
    return _wrap(result, structure)


def _on_content_only(func, ops, kwargs, structure):
    """Retry ``func`` on the in-image elements only; off-image results become 0.

    Off-image stamp pixels are stored (``translate`` can bring them back) but are not array
    contents, so an error they alone cause (an integer to a negative power, say) must not
    fail the operation. The error is re-raised when the array contents cause it too.
    """
    m = structure.in_image

    def content(op):
        if isinstance(op, np.ndarray) and op.ndim == len(structure.block_shape):
            return np.broadcast_to(op, structure.block_shape)[m]
        return op

    result = func(*[content(op) for op in ops], **(kwargs or {}))

    def scatter(r):
        r = np.asarray(r)
        full = np.zeros(structure.block_shape, dtype=r.dtype)
        full[m] = r
        return full

    return tuple(scatter(r) for r in result) if isinstance(result, tuple) else scatter(result)


def _scalar_like(x) -> bool:
    """Operands that broadcast onto any values block unchanged (no per-source or image axis)."""
    if x is None or isinstance(x, (bool, int, float, complex, np.generic)):
        return True
    return isinstance(x, np.ndarray) and x.ndim == 0


def _apply_grouped(func, args, kwargs, label: str, structure):
    """:func:`apply_elementwise` on a grouped structure with array operands: group by group.

    Per-source operands are taken at each group's sources and image-shaped ones gathered at
    each group's stamps; each group's result is written into its part of one
    1-D values block (ufuncs write there directly).
    """
    Sparse3D = _sparse3d_type()
    groups = structure.groups
    columns = []
    for i, x in enumerate(args):
        name = f"operand {i} of {label}"
        if isinstance(x, Sparse3D):
            columns.append(x._group_blocks())  # views, never a joined copy
        elif _scalar_like(x):
            columns.append([stamp_operand(x, structure, name)] * len(groups))
        else:
            op = stamp_operand(x, structure, name)  # checked; 3-D when it has axes to split
            if isinstance(op, np.ndarray) and op.ndim == 3:
                columns.append(
                    [
                        _on_stamps(op if op.shape[2] == 1 else structure.take(op, j, axis=2), g)
                        for j, g in enumerate(groups)
                    ]
                )
            else:
                columns.append([op] * len(groups))
    per_group = list(zip(*columns))
    dtype = _result_dtype(func, per_group[0]) if _simple_ufunc(func, kwargs) else None
    if dtype is not None:
        out = _pool.empty(structure.block_shape, dtype)
        for ops, g, view in zip(per_group, groups, structure.split(out)):
            try:
                func(*ops, out=view)
            except (ValueError, ArithmeticError):
                if g.all_in_image:
                    raise
                view[...] = _on_content_only(func, ops, kwargs, g)
        return _wrap(out, structure)
    results = []
    for ops, g in zip(per_group, groups):
        try:
            r = func(*ops, **(kwargs or {}))
        except (ValueError, ArithmeticError):
            if g.all_in_image:
                raise
            r = _on_content_only(func, ops, kwargs, g)
        results.append(r if isinstance(r, tuple) else (r,))

    def join(parts):
        return np.concatenate(
            [np.broadcast_to(np.asarray(p), g.block_shape).ravel() for p, g in zip(parts, groups)]
        )

    joined = [_wrap(join(parts), structure) for parts in zip(*results)]
    return tuple(joined) if len(joined) > 1 else joined[0]


def _per_group_arrays(func, args, kwargs, structure):
    """A plain ufunc call on a grouped array, as one call per group on its group arrays.

    Taken when every operand is an array (of ``structure`` or an equal one, as
    :func:`apply_elementwise` has checked), a scalar or a per-source vector
    (``(nsources,)``, taken at each group's sources): each group's call is then an ordinary
    call on a single-shape array (deferred when it would be, :mod:`sparse3d._deferred`), and
    the results are held group by group (:meth:`Sparse3D._joined`). Returns None otherwise.
    """
    if not (isinstance(func, np.ufunc) and func.nout == 1 and not kwargs):
        return None
    Sparse3D = _sparse3d_type()
    n = structure.nsources
    for x in args:
        if not isinstance(x, Sparse3D) and not _scalar_like(x) and not (
            type(x) is np.ndarray and x.ndim == 1 and x.shape[0] == n and x.dtype.kind in "biufc"
        ):
            return None
    columns = []  # every operand, one entry per group
    for x in args:
        if isinstance(x, Sparse3D):
            columns.append(x.groups)
        elif _scalar_like(x):
            columns.append([x] * len(structure.groups))
        else:  # per-source: each group's sources
            columns.append([x[idx] for idx in structure.sources])
    results = [func(*ops) for ops in zip(*columns)]
    if len({r.dtype for r in results}) != 1 or not all(isinstance(r, Sparse3D) for r in results):
        return None
    return results


def _simple_ufunc(func, kwargs) -> bool:
    """A single-output ufunc called without keywords (it can write into ``out=``)."""
    return isinstance(func, np.ufunc) and func.nout == 1 and not kwargs


def _wrap(values, structure):
    Sparse3D = _sparse3d_type()
    values = np.asarray(values)
    if values.shape != structure.block_shape:
        values = np.broadcast_to(values, structure.block_shape).copy()
    if not values.flags.c_contiguous:
        values = np.ascontiguousarray(values)
    return Sparse3D._from_parts(values, structure)


def _result_dtype(func, ops):
    """The dtype ``func`` (a ufunc) returns for ``ops`` without ``out=``, or None if unknown."""
    if not isinstance(func, np.ufunc):
        return None
    dtypes = []
    for x in ops:
        if isinstance(x, (bool, np.bool_)):
            dtypes.append(np.dtype(bool))
        elif type(x) in (int, float, complex):
            dtypes.append(type(x))  # a weakly typed Python scalar (NEP 50)
        elif isinstance(x, (np.ndarray, np.generic)):
            dtypes.append(x.dtype)
        else:
            return None
    try:
        return func.resolve_dtypes((*dtypes, None))[-1]
    except (TypeError, ValueError):
        return None


def _square_operator(self, ufunc: np.ufunc, inputs, kwargs) -> bool:
    """Whether this call is the operator ``S ** 2`` (a Python int 2, float or complex ``S``).

    NumPy computes ``a ** 2`` of a float or complex ndarray as ``np.square(a)`` (its fast
    scalar power; the explicit ``np.power(a, 2)`` stays a power): same values for real
    dtypes, 2x faster in float32, other bits for complex. The operator on a Sparse3D does
    the same. It is recognised by its caller: the forward binary method of NumPy's mixin
    calling ``np.power(self, 2)``.
    """
    if ufunc is not np.power or kwargs or len(inputs) != 2 or inputs[0] is not self:
        return False
    if type(inputs[1]) is not int or inputs[1] != 2 or self.dtype.kind not in "fc":
        return False
    try:
        caller = sys._getframe(2)  # 0: here, 1: array_ufunc, 2: the mixin method (if any)
    except ValueError:
        return False
    return caller.f_code is _MIXIN_POW_CODE


def _identity_result(self, ufunc: np.ufunc, inputs, kwargs):
    """``S * 1``, ``1 * S`` or ``S / 1`` of a real or integer ``S``: an array sharing ``S``'s values.

    Multiplying or dividing a real number by exactly one returns it bit for bit (NaN, inf
    and -0.0 included) and raises no floating-point flag, so when NumPy's result dtype is
    ``S``'s own the pass over the values is skipped and the immutable values buffer is
    shared (reference counts then keep it out of in-place reuse and the pool while both
    arrays hold it). Complex arrays are excluded (``inf * (1 + 0j)`` gives NaN), as are
    keyword arguments and non-scalar operands. The tutorial's ``/ sigma**2`` with
    ``sigma = 1`` and its ``* 1`` are such calls. Returns None when the call is not one.
    """
    if kwargs or len(inputs) != 2 or ufunc not in (np.multiply, np.true_divide):
        return None
    if inputs[0] is self:
        one = inputs[1]
    elif ufunc is np.multiply and inputs[1] is self:
        one = inputs[0]
    else:
        return None
    if self.dtype.kind not in "fiu":
        return None
    if type(one) in (int, float):
        pass
    elif isinstance(one, (np.generic, np.ndarray)) and one.shape == () and one.dtype.kind in "fiu":
        pass
    else:
        return None
    if one != 1:
        return None
    ops = (np.empty(0, self.dtype), one) if inputs[0] is self else (one, np.empty(0, self.dtype))
    if _result_dtype(ufunc, ops) != self.dtype:
        return None
    if self._lazy is not None:  # deferred values: share the recorded expression
        return type(self)._from_node(self._lazy, self._structure)
    return self._with_structure(self._structure)


#: Code of NumPy's mixin ``__pow__`` (shared by its forward binary operators; with
#: ``np.power`` as the ufunc it can only be ``__pow__``).
_MIXIN_POW_CODE = _mixins.NDArrayOperatorsMixin.__pow__.__code__


def array_ufunc(self, ufunc: np.ufunc, method: str, *inputs, **kwargs):
    """``Sparse3D.__array_ufunc__``: see the module docstring for the policy."""
    from . import _functions

    if method == "__call__" and _square_operator(self, ufunc, inputs, kwargs):
        ufunc, inputs = np.square, inputs[:1]
    reuse = None
    if method == "__call__":
        same = _identity_result(self, ufunc, inputs, kwargs)
        if same is not None:
            return same
        # A computed temporary no one else can reach takes the result in its own buffer:
        # deferring instead would keep it alive beside a new block (the memory of a chain on
        # lean, broadcast inputs, whose first operation cannot be deferred). A deferred one is
        # tried only once its chain cannot grow (the test computes its values). Never defer
        # while calibrating temporary elision: it must see the eager operator path.
        calibrating = _elision._CALIBRATING is not None
        if calibrating or self._lazy is None:
            reuse = _elision._reusable_temporary(self, ufunc, kwargs)
        if reuse is None and not calibrating:
            deferred = _deferred.defer(ufunc, inputs, kwargs, _sparse3d_type())
            if deferred is not None:
                return deferred
            if self._lazy is not None:
                reuse = _elision._reusable_temporary(self, ufunc, kwargs)

    out = kwargs.pop("out", None)
    if out is not None:
        raise TypeError(
            f"np.{ufunc.__name__}(..., out=...) is not supported: Sparse3D arrays are immutable; "
            "use the returned array (in-place operators such as += rebind the name)"
        )
    if method == "reduce":
        return _functions.ufunc_reduce(ufunc, *inputs, **kwargs)
    if method != "__call__":
        raise TypeError(
            f"np.{ufunc.__name__}.{method} is not supported on Sparse3D (only calls and reduce); "
            "convert with S.to_sparse() or S.todense() on a cutout"
        )
    if ufunc.signature is not None:
        if ufunc is np.matmul:
            return _functions.matmul(*inputs, **kwargs)
        raise TypeError(f"generalized ufunc np.{ufunc.__name__} is not supported on Sparse3D")
    Sparse3D = _sparse3d_type()
    if (ufunc is np.logical_not or (ufunc is np.invert and inputs[0].dtype == bool)) and isinstance(
        inputs[0], Sparse3D
    ):
        if kwargs:
            raise TypeError(
                f"np.{ufunc.__name__} on Sparse3D takes no keyword arguments; got {sorted(kwargs)}"
            )
        return _functions.logical_complement(inputs[0])
    where = kwargs.pop("where", True)
    if where is not True:
        raise TypeError(
            f"np.{ufunc.__name__}(..., where=...) is not supported on Sparse3D; use np.where(cond, a, b)"
        )
    return apply_elementwise(ufunc, inputs, kwargs, name=f"np.{ufunc.__name__}", reuse=reuse)
