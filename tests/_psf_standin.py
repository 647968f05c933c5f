"""A tiny stand-in for ``sparse3d.psf.Gaussian`` (issue 11), used only by the tests.

Same API as the lead fixed for the PSF layer: ``design(row, col, imshape, stamp_shape,
imcorner, derivatives=("row", "col"))``; each stamp sits on the source's nearest pixel and
integer coordinates are pixel centres. Written here, independently of the package, so the
photometry layer can be tested before (and against) the real models.
"""

from __future__ import annotations

import numpy as np

from sparse3d import Sparse3D


class StandinGaussian:
    params = ("sigma",)

    def __init__(self, sigma: float = 1.0) -> None:
        self.sigma = float(sigma)

    def design(self, row, col, imshape, stamp_shape=(11, 11), imcorner=(0, 0), derivatives=()):
        row = np.asarray(row, dtype=float)
        col = np.asarray(col, dtype=float)
        nr, nc = stamp_shape
        r0 = np.floor(row + 0.5).astype(int) - nr // 2
        c0 = np.floor(col + 0.5).astype(int) - nc // 2
        R = r0[None, None, :] + np.arange(nr)[:, None, None] + np.zeros((1, nc, 1), int)
        C = c0[None, None, :] + np.arange(nc)[None, :, None] + np.zeros((nr, 1, 1), int)
        dr = R - row
        dc = C - col
        s2 = self.sigma**2
        v = np.exp(-0.5 * (dr**2 + dc**2) / s2) / (2 * np.pi * s2)
        L = Sparse3D(v, R, C, imshape, imcorner)
        if not derivatives:
            return L
        d = {}
        for name in derivatives:
            if name == "row":
                d[name] = Sparse3D(v * dr / s2, R, C, imshape, imcorner)
            elif name == "col":
                d[name] = Sparse3D(v * dc / s2, R, C, imshape, imcorner)
            else:
                raise ValueError(name)
        return L, d
