"""The frozen stamp structure shared by every array that elementwise math produces.

A :class:`~sparse3d.Sparse3D` is *values* plus a :class:`StampStructure`. The structure is
everything that does not change under elementwise operations::

    imcorner ─►┌──────────── image (H × W) ────────────┐
               │   ┌────┐ stamp of source k           │
               │   │    │  row[:, :, k], col[:, :, k]  │
               │   └────┘  absolute pixel positions    │
               │                                  ┌────┼──┐ stamp pixels off the image are
               └──────────────────────────────────┼────┘  │ kept (translate can bring them
                                                  └───────┘ back) but are not array contents

Positions within one source's stamp are distinct (checked once, when a structure is built
from user input), so every stored in-image element is exactly one logical element.
Derived index arrays (the in-image mask, the flat pixel index, the CSC/CSR orderings and
the sorted COO coordinates) are computed lazily, **once per structure**, and then shared by
every array built on it. All arrays exposed here are read-only.

A translated structure shares the positions it came from and stores the whole-pixel
``offset`` (translate is O(1): no copy, no validation pass); everything derived reads the
stored positions against ``imcorner - offset``, and shifted ``row``/``col`` are materialised
only when asked for. Facts about the stored positions alone (their range, their
pixel-sorted order for the products of a jitter loop, and whether every stamp is a regular
grid -- pixel ``(i, j)`` at its corner ``+ (i, j)`` -- with one corner per source, which the
products use instead of per-pixel positions) are shared by all such structures.

Positions, image corners and image ends are limited to ``|value| <= 2**61`` and images to
``H * W <= 2**62`` pixels, so that every offset and flat pixel index ``r * W + c`` is exact
in int64 arithmetic; larger values are refused with a ``ValueError``.

Where things live (one module per concept):

* :mod:`.positions` — position/bounds validation, range limits, index dtypes, ``check_distinct``;
* :mod:`._orderings` — the CSC/CSR/COO orderings shared by both structures;
* :mod:`.stamp` — :class:`StampStructure` (one stamp shape);
* :mod:`.grouped` — :class:`GroupedStructure` (several stamp groups);
* :mod:`.interning` — :func:`structure_from_positions` (shares structures built from the same arrays).
"""

from .grouped import GROUPED_HINT, GroupedStructure
from .interning import structure_from_positions
from .positions import (
    PIXEL_LIMIT,
    POSITION_LIMIT,
    _as_pair,
    as_position_array,
    check_bounds,
    check_distinct,
    check_position_range,
    index_dtype,
    owned_copy,
    position_dtype,
    readonly_view,
    validated_positions,
)
from .stamp import StampStructure

__all__ = [
    "GroupedStructure",
    "StampStructure",
    "structure_from_positions",
    # re-exported for core, roi, xarray, _interpolate, tests and benchmarks:
    "GROUPED_HINT",
    "PIXEL_LIMIT",
    "POSITION_LIMIT",
    "_as_pair",
    "as_position_array",
    "check_bounds",
    "check_distinct",
    "check_position_range",
    "index_dtype",
    "owned_copy",
    "position_dtype",
    "readonly_view",
    "validated_positions",
]
