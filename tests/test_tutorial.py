"""The seed tutorial, line by line at full size, against a hand-built scipy CSR product."""

import numpy as np
import pytest
from scipy import sparse

from sparse3d import Sparse3D


@pytest.mark.slow
def test_seed_tutorial_full_size():
    rng = np.random.default_rng(2024)
    imshape = (1024, 1024)
    nsources = 50000
    source_brightness = 10 ** rng.normal(0, 1.5, size=nsources)
    source_row, source_col = rng.uniform(0, 1024, size=(nsources, 2)).T
    sigma = 1
    subimage_size = sigma * 5 * 2
    source_row_int, source_row_phase = np.floor(source_row).astype(int), source_row % 1
    source_col_int, source_col_phase = np.floor(source_col).astype(int), source_col % 1
    R, C = np.mgrid[:subimage_size, :subimage_size] - subimage_size // 2
    row3d = R[:, :, None] + source_row_int
    col3d = C[:, :, None] + source_col_int
    x3d = R[:, :, None] * np.ones(nsources)
    y3d = C[:, :, None] * np.ones(nsources)
    X = Sparse3D(data=x3d, row=row3d, col=col3d, imshape=imshape)
    Y = Sparse3D(data=y3d, row=row3d, col=col3d, imshape=imshape)
    assert repr(X) == "<(1024, 1024, 50000) Sparse3D array of type float64>"
    L = (
        np.exp(-0.5 * ((X - source_row_phase) ** 2 / sigma**2 + (Y - source_col_phase) ** 2 / sigma**2))
        * 1
        / (2 * np.pi * sigma**2)
    )
    assert repr(L) == "<(1024, 1024, 50000) Sparse3D array of type float64>"
    model_image = L.dot(source_brightness)
    assert model_image.shape == imshape

    # independent reference: the stamp values by hand, masked, into a scipy CSR matrix
    vals = np.exp(-0.5 * ((x3d - source_row_phase) ** 2 + (y3d - source_col_phase) ** 2)) / (2 * np.pi)
    inside = (row3d >= 0) & (row3d < 1024) & (col3d >= 0) & (col3d < 1024)
    src = np.broadcast_to(np.arange(nsources), row3d.shape)
    A = sparse.csr_matrix(
        (vals[inside], (row3d[inside] * 1024 + col3d[inside], src[inside])), shape=(1024 * 1024, nsources)
    )
    reference = (A @ source_brightness).reshape(imshape)
    np.testing.assert_allclose(model_image, reference, rtol=1e-10, atol=1e-10 * reference.max())

    fake_data = rng.poisson(model_image) + rng.normal(0, 3, size=model_image.shape).astype(int)
    Lc = L.tocsr()
    assert Lc.shape == (1048576, 50000) and Lc.nnz == inside.sum()
    assert abs(Lc - A).max() < 1e-15
    best_fit_weights = sparse.linalg.spsolve(Lc.T.dot(Lc), sparse.csc_matrix(Lc.T.dot(fake_data.ravel())).T)
    assert len(best_fit_weights) == 50000
    bright = source_brightness > 1000
    rel = np.abs(best_fit_weights[bright] - source_brightness[bright]) / source_brightness[bright]
    assert np.median(rel) < 0.05

    # the efficiency hint
    dX1 = Sparse3D(-0.5 * (x3d - source_row_phase) ** 2 / sigma**2, row3d, col3d, imshape=imshape)
    dY1 = Sparse3D(-0.5 * (y3d - source_col_phase) ** 2 / sigma**2, row3d, col3d, imshape=imshape)
    l = np.exp(dX1 + dY1) * (1 / (2 * np.pi * sigma**2))  # noqa: E741 (the tutorial's name)
    np.testing.assert_allclose(l.dot(source_brightness), reference, rtol=1e-10, atol=1e-10 * reference.max())
