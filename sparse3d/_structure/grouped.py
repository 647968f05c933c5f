"""The :class:`GroupedStructure`: several stamp groups (one :class:`StampStructure` each, mixed
stamp sizes) in one image."""

from __future__ import annotations

import weakref
from functools import cached_property

import numpy as np

from ._orderings import _Orderings
from .positions import (
    _readonly,
)

GROUPED_HINT = "select one stamp group with S.groups[i] (see S.stamp_shapes)"


class GroupedStructure(_Orderings):
    """Several stamp groups (one :class:`StampStructure` each) in one image: mixed stamp sizes.

    Group ``i`` holds the sources ``sources[i]`` (ascending global source indices; together
    the groups partition ``range(nsources)``), so one group per stamp shape serves any source
    order. The values of a grouped array are **one 1-D block**: every group's C-order
    ``(nr_g, nc_g, n_g)`` values, one after the other (``element_offsets``); an array made by
    ``np.concatenate`` holds its groups' blocks separately (the joined arrays' own values) and
    builds that 1-D block on first use only (see ``Sparse3D._joined``). The derived
    indices (in-image mask, flat pixel index, source counts, CSC/CSR/COO orderings) are
    defined over that flat element space, with sources in their global order, so conversions
    and products go through the same code as a single-block structure::

        values:  [ group 0: nr0*nc0*n0 | group 1: nr1*nc1*n1 | ... ]
        sources:   sources[0] (e.g. 0, 2, 3, ...) | sources[1] (1, 4, ...) | ...

    Parameters
    ----------
    groups : sequence of StampStructure
        At least two, with equal image bounds.
    sources : sequence of int arrays, optional
        The global source index of every group's sources. Default: consecutive.
    """

    grouped = True

    def __init__(self, groups, sources=None):
        groups = tuple(groups)
        if len(groups) < 2 or any(g.grouped for g in groups):
            raise ValueError("a grouped structure holds two or more single-block structures")
        first = groups[0]
        for g in groups[1:]:
            if g.imshape != first.imshape or g.imcorner != first.imcorner:
                raise ValueError(
                    f"stamp groups must share image bounds; got imshape {first.imshape} at {first.imcorner} "
                    f"and {g.imshape} at {g.imcorner}"
                )
        n = sum(g.nsources for g in groups)
        if sources is None:
            o = np.cumsum([0] + [g.nsources for g in groups])
            sources = [np.arange(o[i], o[i + 1]) for i in range(len(groups))]
        sources = tuple(_readonly(np.asarray(x, dtype=np.int64).copy()) for x in sources)
        if [x.size for x in sources] != [g.nsources for g in groups]:
            raise ValueError("every stamp group needs the global index of each of its sources")
        cat = np.concatenate(sources)
        self.contiguous = bool(np.array_equal(cat, np.arange(n)))
        if not self.contiguous and not np.array_equal(np.sort(cat), np.arange(n)):
            raise ValueError("the groups' sources must partition range(nsources)")
        self.groups = groups
        self.sources = sources
        self.imshape = first.imshape
        self.imcorner = first.imcorner
        self._nsources = n
        self.element_offsets = tuple(int(v) for v in np.cumsum([0] + [g.nelements for g in groups]))
        self._equal_to: weakref.WeakSet = weakref.WeakSet()

    @cached_property
    def group_of(self) -> tuple[np.ndarray, np.ndarray]:
        """``(group, local)``: the group of every source and its index within the group."""
        group = np.empty(self._nsources, dtype=np.intp)
        local = np.empty(self._nsources, dtype=np.intp)
        for i, idx in enumerate(self.sources):
            group[idx] = i
            local[idx] = np.arange(idx.size)
        return _readonly(group), _readonly(local)

    def take(self, x: np.ndarray, i: int, axis: int = 0) -> np.ndarray:
        """The entries of group ``i``'s sources along ``axis`` of a per-source array ``x``."""
        if self.contiguous:
            o = self.sources[i]
            sl = slice(int(o[0]), int(o[-1]) + 1) if o.size else slice(0, 0)
            return x[(slice(None),) * (axis % x.ndim) + (sl,)]
        return np.take(x, self.sources[i], axis=axis)

    def assemble(self, parts, axis: int = 0) -> np.ndarray:
        """The per-source array whose group ``i`` entries along ``axis`` are ``parts[i]``."""
        if self.contiguous:
            return np.concatenate(parts, axis=axis)
        parts = [np.moveaxis(np.asarray(p), axis, 0) for p in parts]
        dtype = np.result_type(*parts)
        out = np.empty((self._nsources, *parts[0].shape[1:]), dtype=dtype)
        for idx, p in zip(self.sources, parts):
            out[idx] = p
        return np.moveaxis(out, 0, axis)

    # -- basic facts -------------------------------------------------------------------
    @property
    def block_shape(self) -> tuple[int]:
        """Shape of the (1-D) values block, ``(nelements,)``."""
        return (self.element_offsets[-1],)

    @property
    def nelements(self) -> int:
        return self.element_offsets[-1]

    @property
    def stamp_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(nr, nc)`` of every group."""
        return tuple(g.stamp_shape[:2] for g in self.groups)

    @property
    def nsources(self) -> int:
        return self._nsources

    def _single_block(self, what: str):
        raise ValueError(
            f"{what} needs a single stamp shape, but this array has stamp groups of shapes "
            f"{list(self.stamp_shapes)}; {GROUPED_HINT}"
        )

    @property
    def stamp_shape(self):
        self._single_block("stamp_shape")

    @property
    def row(self):
        self._single_block("row")

    @property
    def col(self):
        self._single_block("col")

    def split(self, values: np.ndarray) -> list[np.ndarray]:
        """The blocks ``(nr_g, nc_g, n_g)`` of every group, as views of the 1-D ``values``."""
        eo = self.element_offsets
        return [values[eo[i] : eo[i + 1]].reshape(g.block_shape) for i, g in enumerate(self.groups)]

    def _concat(self, name: str) -> np.ndarray:
        return _readonly(np.concatenate([getattr(g, name).ravel() for g in self.groups]))

    @cached_property
    def in_image(self) -> np.ndarray:
        """Boolean ``(nelements,)``: which stored elements fall inside the image."""
        return self._concat("in_image")

    @cached_property
    def all_in_image(self) -> bool:
        return all(g.all_in_image for g in self.groups)

    @cached_property
    def nnz(self) -> int:
        return sum(g.nnz for g in self.groups)

    @cached_property
    def pixel(self) -> np.ndarray:
        """Flat pixel of every stored element (``H*W`` off the image), ``(nelements,)``."""
        return self._concat("pixel")

    @cached_property
    def source_counts(self) -> np.ndarray:
        """In-image elements per source, ``(nsources,)`` in global source order."""
        return _readonly(self.assemble([g.source_counts for g in self.groups]).astype(np.int64))

    @cached_property
    def _source_major_dest(self) -> np.ndarray | None:
        """Where each element of the groups' source-major runs goes in global source order."""
        if self.contiguous:
            return None
        starts = np.zeros(self._nsources + 1, dtype=np.int64)
        np.cumsum(self.source_counts, out=starts[1:])
        dest = []
        for idx, g in zip(self.sources, self.groups):
            counts = g.source_counts
            local_start = np.zeros(idx.size, dtype=np.int64)
            np.cumsum(counts[:-1], out=local_start[1:])
            shift = np.repeat(starts[idx] - local_start, counts)  # per element: global - local start
            dest.append(np.arange(int(counts.sum()), dtype=np.int64) + shift)
        return _readonly(np.concatenate(dest))

    def source_major(self, values: np.ndarray) -> np.ndarray:
        """In-image elements of the 1-D ``values`` in source-major order (global source order)."""
        runs = np.concatenate([g.source_major(v) for g, v in zip(self.groups, self.split(values))])
        dest = self._source_major_dest
        if dest is None:
            return runs
        out = np.empty_like(runs)
        out[dest] = runs
        return out

    # -- new structures -----------------------------------------------------------------
    def with_bounds(self, imshape: tuple[int, int], imcorner: tuple[int, int]) -> GroupedStructure:
        return GroupedStructure([g.with_bounds(imshape, imcorner) for g in self.groups], self.sources)

    def translated(self, drow: int, dcol: int) -> GroupedStructure:
        return GroupedStructure([g.translated(drow, dcol) for g in self.groups], self.sources)

    def check_translation(self, drow: int, dcol: int) -> None:
        """ValueError when :meth:`translated` would move a position out of range (builds nothing)."""
        for g in self.groups:
            g.check_translation(drow, dcol)

    def equals(self, other) -> bool:
        if other is self or other in self._equal_to:
            return True
        same = (
            other.grouped
            and len(other.groups) == len(self.groups)
            and all(np.array_equal(a, b) for a, b in zip(self.sources, other.sources))
            and all(a.equals(b) for a, b in zip(self.groups, other.groups))
        )
        if same:
            self._equal_to.add(other)
            other._equal_to.add(self)
        return same

    def __reduce__(self):
        return (GroupedStructure, (self.groups, self.sources))
