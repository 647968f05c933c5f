"""The 1.x ``ROISparse3D``: a legacy ``Sparse3D`` whose ``dot`` returns only ROI windows.

``dot`` goes through the 2.x :class:`sparse3d.ROISparse3D` (built from the current offset,
once per offset); everything else, ``tocsr()`` included, is the full frame, as in 1.x.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse as sp

from ._sparse3d import Sparse3D

__all__ = ["ROISparse3D"]


class ROISparse3D(Sparse3D):
    """A sparse3d 1.x ``ROISparse3D``: a :class:`Sparse3D` whose model is read in windows.

    Parameters
    ----------
    data, row, col, imshape
        As :class:`Sparse3D`.
    nROIs : int
        Number of regions of interest.
    ROI_size : tuple of int
        ``(h, w)`` of every region.
    ROI_corners : list of tuple of int
        Absolute ``(row, column)`` of every region's pixel ``[0, 0]``; ``nROIs`` of them.
    imcorner : tuple of int, optional
        As :class:`Sparse3D`.

    Notes
    -----
    ``dot`` gives ``(nROIs, h, w)`` for ``(nsubimages,)`` weights and ``(nROIs, k, h, w)``
    for ``(nsubimages, k)`` weights (``(k, nsubimages)`` is accepted too, as in 1.x, when
    ``k != nsubimages``). Window pixels outside the image are 0. ``tocsr()``, ``data``,
    ``shape`` describe the full ``(H*W, nsubimages)`` frame, as in 1.x.

    Examples
    --------
    >>> import numpy as np
    >>> from sparse3d.legacy import ROISparse3D
    >>> R, C = np.mgrid[:3, :3]
    >>> S = ROISparse3D(np.ones((3, 3, 2)), R[:, :, None] + [1, 6], C[:, :, None] + [1, 6], (10, 10),
    ...                 nROIs=2, ROI_size=(4, 4), ROI_corners=[(0, 0), (5, 5)])
    >>> S.dot(np.ones(2)).shape, S.dot(np.ones((2, 3))).shape, S.tocsr().shape
    ((2, 4, 4), (2, 3, 4, 4), (100, 2))
    """

    def __init__(
        self,
        data,
        row,
        col,
        imshape,
        nROIs: int,
        ROI_size: tuple[int, int],
        ROI_corners: list,
        imcorner=(0, 0),
    ) -> None:
        self._set_rois(nROIs, ROI_size, ROI_corners)
        super().__init__(data, row, col, imshape, imcorner)

    def _set_rois(self, nROIs, ROI_size, ROI_corners) -> None:
        if len(ROI_corners) != nROIs:
            raise ValueError(
                "Must pass corners for all ROIs: "
                f"ROI_corners has {len(ROI_corners)} entries for nROIs={nROIs}"
            )
        self.nROIs = nROIs
        self.ROI_size = ROI_size
        self.ROI_corners = ROI_corners

    def _parameters(self) -> dict:
        return {"nROIs": self.nROIs, "ROI_size": self.ROI_size, "ROI_corners": self.ROI_corners}

    def _copy_parameters(self, other: Sparse3D) -> None:
        self._set_rois(**other._parameters())

    def _move(self, coord) -> None:
        super()._move(coord)
        self._roi = None

    def clear(self) -> None:
        super().clear()
        self._roi = None

    def __repr__(self) -> str:
        return (
            f"<{(*self.imshape, self.nsubimages)} ROISparse3D array of type {self.dtype}, "
            f"{self.nROIs} Regions of Interest>"
        )

    def dot(self, other) -> np.ndarray:
        """Model in the windows: ``(nROIs, h, w)``, or ``(nROIs, k, h, w)`` for ``k`` weight vectors."""
        if sp.issparse(other):
            other = other.toarray()
        w = np.asarray(other)
        n = self.nsubimages
        if w.ndim == 2 and w.shape[0] != n and w.shape[1] == n:
            w = w.T  # 1.x accepted (k, nsubimages)
        edited = self._edited()
        if edited is not None:  # S.data was changed: 1.x's windows read the COO entries
            return _windows(self._edited_dot(edited, w), self.ROI_corners, self.ROI_size, self.imcorner)
        if self._roi is None:
            self._roi = self._cur.roi(self.ROI_corners, self.ROI_size)
        result = self._roi.dot(w)
        if result.ndim == 4:
            result = result.transpose(0, 3, 1, 2)
        return result

    def get_ROI_mask(self, row, column) -> np.ndarray:
        """``(nROIs, *row.shape)`` booleans: which absolute positions ``(row, column)`` are in each ROI."""
        row, column = np.asarray(row), np.asarray(column)
        h, w = self.ROI_size
        corners = np.asarray(self.ROI_corners, dtype=np.int64).reshape(-1, 2)
        r0 = corners[:, 0].reshape((-1,) + (1,) * row.ndim)
        c0 = corners[:, 1].reshape((-1,) + (1,) * column.ndim)
        return (row >= r0) & (row < r0 + h) & (column >= c0) & (column < c0 + w)

    def to_Sparse3D(self) -> Sparse3D:
        """The same stamps as a plain legacy :class:`Sparse3D` (same offset)."""
        return Sparse3D._from_base(self._base, self.coord)


def _windows(images: np.ndarray, corners, size, imcorner) -> np.ndarray:
    """``(nROIs, ..., h, w)`` windows of ``images`` ``(..., H, W)`` at absolute ``corners``; 0 outside."""
    h, w = size
    H, W = images.shape[-2:]
    out = np.zeros((len(corners), *images.shape[:-2], h, w), dtype=images.dtype)
    for j, (r, c) in enumerate(corners):
        r, c = int(r) - imcorner[0], int(c) - imcorner[1]
        r0, r1, c0, c1 = max(r, 0), min(r + h, H), max(c, 0), min(c + w, W)
        if r0 < r1 and c0 < c1:
            out[j, ..., r0 - r : r1 - r, c0 - c : c1 - c] = images[..., r0:r1, c0:c1]
    return out
