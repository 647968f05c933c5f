"""Stamp groups: one array holding sources of several stamp shapes.

``np.concatenate`` of arrays with different stamp shapes, :meth:`Sparse3D.from_groups` and
the PSF designs with per-source stamp sizes give a grouped array: its structure is a
:class:`~sparse3d._structure.GroupedStructure` and its values one block per group (shared
with the arrays joined until an operation needs the single block; see :mod:`.values`).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from .._structure import readonly_view
from .values import _checked_values

if TYPE_CHECKING:  # pragma: no cover
    from .array import Sparse3D


class _StampGroups:
    """Mixin of :class:`~sparse3d.Sparse3D`: constructing and reading stamp groups."""

    __slots__ = ()

    @classmethod
    def from_groups(cls, data, row, col, imshape, imcorner=(0, 0)) -> Sparse3D:
        """One array from stamp blocks of different shapes.

        ``np.concatenate([Sparse3D(d, r, c, imshape, imcorner) for d, r, c in zip(data, row,
        col)], axis=2)`` (sources in that order, one stamp group per stamp shape), with every
        argument checked by name first. Every block's values are copied once; the array holds
        them group by group, joined into one 1-D block only when an operation needs one
        (e.g. ``tocsr`` or ``fit``).

        Parameters
        ----------
        data, row, col : sequence of array_like
            One ``(nr_i, nc_i, n_i)`` block of values per piece and its positions (as for
            :class:`Sparse3D`; ``row[i]``/``col[i]`` broadcast to ``data[i].shape``).
        imshape, imcorner : tuple of int
            The image bounds shared by every piece.
        """
        if not (
            isinstance(data, (list, tuple))
            and isinstance(row, (list, tuple))
            and isinstance(col, (list, tuple))
        ):
            raise TypeError("from_groups takes sequences (lists or tuples) of blocks: data, row and col")
        if not data or not len(data) == len(row) == len(col):
            raise ValueError(
                f"from_groups needs one row and one col per data block; got {len(data)} data, "
                f"{len(row)} row and {len(col)} col"
            )
        blocks = []
        for i, d in enumerate(data):
            arr = _checked_values(np.asarray(d), f"data[{i}]")
            if arr.ndim != 3:
                raise ValueError(f"data[{i}] must be 3-D (nr, nc, nsources); got shape {arr.shape}")
            blocks.append(arr)
        # each block checked and copied once by the constructor (with the value bounds that let
        # elementwise chains defer), then held group by group: no second copy into one block
        return np.concatenate([cls(b, r, c, imshape, imcorner) for b, r, c in zip(blocks, row, col)], axis=2)

    @property
    def groups(self) -> tuple[Sparse3D, ...]:
        """The stamp groups: one single-shape Sparse3D per stamp shape, in source order.

        An array built by ``np.concatenate`` of arrays with different stamp shapes (or by a
        PSF model with per-source stamp sizes) holds several groups; its sources are the
        groups' sources in order. Each group is a view (values shared, read-only) with the
        same image bounds. A single-shape array has one group, itself.
        """
        if not self._structure.grouped:
            return (self,)
        return self._group_views

    @cached_property
    def _group_views(self) -> tuple[Sparse3D, ...]:
        pending = self._pending_groups
        if pending is not None:  # held group by group: those arrays are the groups
            return pending
        s = self._structure
        return tuple(type(self)._from_parts(v, g) for v, g in zip(self._group_blocks(), s.groups))

    @property
    def stamp_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(nr, nc)`` of every stamp group (one entry for a single-shape array)."""
        s = self._structure
        return s.stamp_shapes if s.grouped else (s.stamp_shape[:2],)

    @property
    def group_sources(self) -> tuple[np.ndarray, ...]:
        """The (global) sources of every stamp group, ascending int64 arrays, read-only.

        ``S.groups[i]`` holds the sources ``S.group_sources[i]`` of ``S``, in that order; the
        groups partition ``range(nsources)``. A single-shape array has one group of all
        sources.
        """
        s = self._structure
        if s.grouped:
            return tuple(readonly_view(x) for x in s.sources)
        return (np.arange(s.nsources),)


def _join_groups(groups, structure) -> Sparse3D:
    """The grouped array over the single-shape ``groups`` (one per group of ``structure``).

    Their values are shared, not copied (cast first where their dtypes differ).
    """
    from .array import Sparse3D

    dtype = np.result_type(*[g.dtype for g in groups])
    return Sparse3D._joined([g.astype(dtype, copy=False) for g in groups], structure)


def _rebuild_grouped(groups, sources) -> Sparse3D:
    """Unpickle a grouped array from its (single-shape) groups and their sources."""
    from .._structure import GroupedStructure

    return _join_groups(groups, GroupedStructure([g._structure for g in groups], sources))
