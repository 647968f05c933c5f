"""Scene generators and dense references shared by the tests, benchmarks and tutorials.

The dense reference is written independently of the library: it scatters stamp values into
a plain ``(H, W, nsources)`` ndarray with ``np.add.at``, so a test comparing a
:class:`~sparse3d.Sparse3D` result against it checks the library against NumPy itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Scene",
    "GroupedScene",
    "random_scene",
    "random_grouped_scene",
    "gaussian_scene",
    "dense_reference",
    "assert_equal_dense",
]


@dataclass(frozen=True)
class Scene:
    """Plain NumPy inputs of a :class:`~sparse3d.Sparse3D` (nothing from the library)."""

    data: np.ndarray
    row: np.ndarray
    col: np.ndarray
    imshape: tuple[int, int]
    imcorner: tuple[int, int] = (0, 0)

    def build(self):
        """The :class:`~sparse3d.Sparse3D` of this scene."""
        from .core import Sparse3D

        return Sparse3D(self.data, self.row, self.col, imshape=self.imshape, imcorner=self.imcorner)

    def dense(self, data: np.ndarray | None = None) -> np.ndarray:
        """Dense reference of this scene, optionally with other stamp values ``data``."""
        return dense_reference(
            self.data if data is None else data, self.row, self.col, self.imshape, self.imcorner
        )


def dense_reference(data, row, col, imshape, imcorner=(0, 0)) -> np.ndarray:
    """Dense ``(H, W, nsources)`` array of stamps (``np.add.at``): in-image values, others dropped."""
    data = np.asarray(data)
    row = np.broadcast_to(np.asarray(row), data.shape).astype(np.int64) - imcorner[0]
    col = np.broadcast_to(np.asarray(col), data.shape).astype(np.int64) - imcorner[1]
    H, W = imshape
    k = np.broadcast_to(np.arange(data.shape[2]), data.shape)
    keep = (row >= 0) & (row < H) & (col >= 0) & (col < W)
    out = np.zeros((H, W, data.shape[2]), dtype=data.dtype)
    np.add.at(out, (row[keep], col[keep], k[keep]), data[keep])
    return out


def random_scene(
    rng: np.random.Generator | int | None = None,
    imshape: tuple[int, int] = (13, 17),
    stamp: tuple[int, int] = (3, 4),
    nsources: int = 6,
    imcorner: tuple[int, int] = (0, 0),
    dtype=np.float64,
    zeros: bool = True,
) -> Scene:
    """A small random scene whose stamps overlap and hang over every image edge.

    Parameters
    ----------
    rng : numpy.random.Generator or int, optional
        Random state or seed.
    imshape, stamp, nsources, imcorner
        Image size, stamp size ``(nr, nc)``, number of sources, image corner.
    dtype : dtype
        Stamp value dtype (floats get values in [-2, 2); ints in [-5, 5); bools random).
    zeros : bool
        Put explicit zeros in some stamp values.
    """
    rng = np.random.default_rng(rng)
    nr, nc = stamp
    H, W = imshape
    top = rng.integers(-nr, H + 1, size=nsources) + imcorner[0]
    left = rng.integers(-nc, W + 1, size=nsources) + imcorner[1]
    R, C = np.mgrid[:nr, :nc]
    row = R[:, :, None] + top
    col = C[:, :, None] + left
    dtype = np.dtype(dtype)
    shape = (nr, nc, nsources)
    if dtype.kind == "f":
        data = rng.uniform(-2, 2, size=shape).astype(dtype)
    elif dtype.kind == "c":
        data = (rng.uniform(-2, 2, size=shape) + 1j * rng.uniform(-2, 2, size=shape)).astype(dtype)
    elif dtype.kind == "b":
        data = rng.random(shape) < 0.5
    else:
        data = rng.integers(-5, 5, size=shape).astype(dtype)
    if zeros and data.size:
        data[rng.random(shape) < 0.15] = 0
    return Scene(data, row, col, (H, W), tuple(imcorner))


@dataclass(frozen=True)
class GroupedScene:
    """Several :class:`Scene` parts with equal image bounds and different stamp shapes.

    ``build()`` concatenates the parts' arrays along the source axis (an array with stamp
    groups); ``dense()`` concatenates their independent dense references.
    """

    parts: tuple[Scene, ...]

    @property
    def imshape(self) -> tuple[int, int]:
        return self.parts[0].imshape

    @property
    def imcorner(self) -> tuple[int, int]:
        return self.parts[0].imcorner

    def build(self):
        """The grouped :class:`~sparse3d.Sparse3D` (``np.concatenate`` of the parts)."""
        return np.concatenate([p.build() for p in self.parts], axis=2)

    def dense(self, data=None) -> np.ndarray:
        """Dense reference; ``data`` optionally gives other stamp values, one block per part."""
        data = [None] * len(self.parts) if data is None else data
        return np.concatenate([p.dense(d) for p, d in zip(self.parts, data)], axis=2)


def random_grouped_scene(
    rng: np.random.Generator | int | None = None,
    imshape: tuple[int, int] = (13, 17),
    stamps: tuple[tuple[int, int], ...] = ((3, 4), (2, 2), (5, 3)),
    nsources: tuple[int, ...] = (3, 2, 4),
    imcorner: tuple[int, int] = (0, 0),
    dtype=np.float64,
    zeros: bool = True,
) -> GroupedScene:
    """A :func:`random_scene` per stamp shape, in one image (see :class:`GroupedScene`)."""
    rng = np.random.default_rng(rng)
    return GroupedScene(
        tuple(random_scene(rng, imshape, st, n, imcorner, dtype, zeros) for st, n in zip(stamps, nsources))
    )


def gaussian_scene(
    imshape: tuple[int, int] = (1024, 1024),
    nsources: int = 50_000,
    stamp_size: int = 10,
    sigma: float = 1.0,
    seed: int | None = 0,
) -> dict:
    """The tutorial's scene: stamp arrays and per-source parameters, plain NumPy.

    Returns a dict with ``row3d``, ``col3d``, ``x3d``, ``y3d`` (stamp-shaped), ``row_phase``,
    ``col_phase``, ``brightness`` (per source), ``imshape`` and ``sigma``.
    """
    rng = np.random.default_rng(seed)
    brightness = 10 ** rng.normal(0, 1.5, size=nsources)
    source_row, source_col = rng.uniform(0, 1, size=(nsources, 2)).T * np.array(imshape)[:, None]
    row_int, row_phase = np.floor(source_row).astype(int), source_row % 1
    col_int, col_phase = np.floor(source_col).astype(int), source_col % 1
    R, C = np.mgrid[:stamp_size, :stamp_size] - stamp_size // 2
    return {
        "row3d": R[:, :, None] + row_int,
        "col3d": C[:, :, None] + col_int,
        "x3d": R[:, :, None] * np.ones(nsources),
        "y3d": C[:, :, None] * np.ones(nsources),
        "row_phase": row_phase,
        "col_phase": col_phase,
        "brightness": brightness,
        "imshape": tuple(imshape),
        "sigma": sigma,
    }


def assert_equal_dense(
    actual, expected: np.ndarray, *, rtol: float = 1e-12, atol: float = 0.0, dtype=True
) -> None:
    """Assert a Sparse3D (or sparse/dense result) equals a dense reference.

    Checks type-independent facts: shape, dtype (unless ``dtype=False``) and values
    (NaN-aware). A :class:`~sparse3d.Sparse3D` is densified with ``todense()``; a
    ``sparse.COO`` with ``todense()``.
    """
    expected = np.asarray(expected)
    assert tuple(np.shape(actual)) == expected.shape, f"shape {np.shape(actual)} != {expected.shape}"
    if dtype:
        assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    dense = actual.todense() if hasattr(actual, "todense") else np.asarray(actual)
    if expected.dtype.kind in "fc":
        np.testing.assert_allclose(dense, expected, rtol=rtol, atol=atol, equal_nan=True)
    else:
        np.testing.assert_array_equal(dense, expected)
