"""How an array holds its values: one read-only block, a deferred expression, or joined groups.

Every array's values pass through :func:`_checked_values` (the dtype rule). The block is
read through ``S._values``, which resolves the two pending states on first use: a deferred
elementwise expression (:mod:`sparse3d._deferred`) is evaluated, and a grouped array made by
``np.concatenate`` (its groups' blocks shared, :meth:`_ValueStorage._joined`) is joined into
one block. A dying array hands its block to the buffer pool (:mod:`sparse3d._pool`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import _deferred, _pool
from .._structure import StampStructure, owned_copy

if TYPE_CHECKING:  # pragma: no cover
    from .array import Sparse3D

_UNSUPPORTED_DTYPES = {np.dtype(np.longdouble), np.dtype(np.clongdouble)} - {
    np.dtype(np.float64),
    np.dtype(np.complex128),
}


def _checked_values(arr: np.ndarray, name: str = "data") -> np.ndarray:
    """``arr`` with a supported dtype in native byte order (converted), else ``TypeError``.

    Every array's values pass here (the constructor and every internal result), so one rule
    holds everywhere: numeric or boolean, native byte order (``>f8`` becomes ``float64``),
    no ``longdouble`` (NumPy's ``bincount`` and SciPy cannot compute in it).
    """
    dt = arr.dtype
    if dt.kind not in "biufc":
        raise TypeError(f"{name} must be a numeric or boolean array; got dtype {dt}")
    if not dt.isnative:
        arr = arr.astype(dt.newbyteorder("="))
    if arr.dtype in _UNSUPPORTED_DTYPES:
        raise TypeError(
            f"{name} of dtype {arr.dtype} (long double) is not supported: sums and products run in "
            "float64/complex128; convert with .astype(np.float64) or np.complex128"
        )
    return arr


def _owned_values(data, name: str = "data") -> np.ndarray:
    try:
        arr = np.asarray(data)
    except ValueError as exc:  # ragged nested sequences
        raise ValueError(f"{name} must be a regular (non-ragged) numeric array: {exc}") from None
    # a copy no one else can modify; broadcast inputs are copied compactly, not expanded
    return owned_copy(_checked_values(arr, name))


class _ValueStorage:
    """Mixin of :class:`~sparse3d.Sparse3D`: the values block and its internal constructors.

    The internal constructors return ``cls`` objects; callers that must return a plain
    :class:`~sparse3d.Sparse3D` call them on that class.
    """

    __slots__ = ()

    #: Grouped arrays held group by group (``np.concatenate`` of arrays of several stamp
    #: shapes, and elementwise results on such arrays): one single-shape array per group, on
    #: the group structures of the grouped one, their values shared (and possibly deferred);
    #: the 1-D ``_values`` is joined from theirs on first use only.
    _pending_groups: tuple[Sparse3D, ...] | None = None

    @property
    def _values(self) -> np.ndarray:
        """The values block (read-only); a deferred expression is evaluated at the first access."""
        values = self._vals
        if values is None:
            values = self._materialize()
        return values

    @_values.setter
    def _values(self, values: np.ndarray) -> None:
        self._vals = values
        self._lazy = None

    def _materialize(self) -> np.ndarray:
        """Compute the values of a deferred array or join those of a joined one (once).

        ``_vals`` is set before the pending state is cleared, so a thread that finds neither
        state reads the values another thread has just stored.
        """
        node = self._lazy
        if node is not None:
            values = _checked_values(_deferred.evaluate(node, self._structure.block_shape))
            values.flags.writeable = False
            if node.bounds is not None:  # proven bounds of the values: no pass when used again
                self.__dict__["_bounds"] = node.bounds
            self._vals = values
            self._lazy = None
            return values
        groups = self.__dict__.get("_pending_groups")
        if groups is None:  # computed or joined by another thread meanwhile
            return self._vals
        blocks = [g._values for g in groups]
        values = _pool.empty((self._structure.nelements,), blocks[0].dtype)
        np.concatenate([b.ravel() for b in blocks], out=values)
        values.flags.writeable = False
        self._vals = values
        # the groups become views of the joined block, so the joined arrays' buffers can go
        self.__dict__.pop("_group_views", None)
        self.__dict__.pop("_pending_groups", None)
        return values

    @classmethod
    def _from_node(cls, node, structure: StampStructure) -> Sparse3D:
        """Internal constructor: an array whose values are the deferred expression ``node``."""
        obj = cls.__new__(cls)
        obj._vals = None
        obj._lazy = node
        obj._structure = structure
        return obj

    @classmethod
    def _from_parts(cls, values: np.ndarray, structure: StampStructure) -> Sparse3D:
        """Internal constructor: ``values`` must be a fresh or read-only array we own.

        The memory's owner is made read-only too, so that no view handed out can be made
        writeable again.
        """
        values = _checked_values(values, "the result's values")
        obj = cls.__new__(cls)
        base = values
        while isinstance(base.base, np.ndarray):
            base = base.base
        if base.flags.writeable:
            base.flags.writeable = False
        if values.flags.writeable:
            values.flags.writeable = False
        obj._values = values
        obj._structure = structure
        return obj

    @classmethod
    def _joined(cls, groups, structure) -> Sparse3D:
        """Internal constructor of a grouped array over its groups' arrays, without a copy.

        ``groups``: one single-shape array per group of the grouped ``structure`` (its stamp
        shape, one dtype), typically the arrays that ``np.concatenate`` joins or the groups'
        results of an elementwise operation (deferred ones stay deferred). Their values are
        shared, never written; the 1-D values block that most operations read (``_values``)
        is joined from them on first use only (:meth:`_materialize`), so a pipeline that
        works group by group never copies them.
        """
        groups = tuple(
            g if g._structure is sg else g._with_structure(sg)
            for g, sg in zip(groups, structure.groups, strict=True)
        )
        if any(g._structure.block_shape != sg.block_shape for g, sg in zip(groups, structure.groups)):
            raise AssertionError("joined arrays must have their groups' stamp shapes")
        if len({g.dtype for g in groups}) != 1:
            raise AssertionError("joined arrays must share one dtype")
        obj = cls.__new__(cls)
        obj._structure = structure
        obj._vals = None  # joined from the groups on first use (_materialize)
        obj._lazy = None
        obj.__dict__["_pending_groups"] = groups
        return obj

    def _group_blocks(self) -> list[np.ndarray]:
        """The values block ``(nr_g, nc_g, n_g)`` of every stamp group (shared views, no copy)."""
        groups = self._pending_groups
        if groups is not None:
            return [g._values for g in groups]
        s = self._structure
        return s.split(self._values) if s.grouped else [self._values]

    def _with_structure(self, structure) -> Sparse3D:
        """An array with this array's values (shared) on an equally shaped ``structure``."""
        groups = self._pending_groups
        if groups is not None:
            return self._joined(groups, structure)
        return self._from_parts(self._values, structure)

    def __del__(self):
        # the values buffer of a dying array goes to the pool if no one else holds it
        try:
            # joined blocks belong to the arrays joined; deferred values do not exist yet
            if self._pending_groups is None and self._vals is not None:
                _pool.give_back(self._vals, 1)
        except Exception:  # noqa: BLE001 - never raise from __del__ (interpreter shutdown, ...)
            pass
