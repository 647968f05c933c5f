"""Hand-written NumPy/SciPy baseline.

Everything is computed directly on the raw ``(nr, nc, n)`` stamp arrays; the
in-image mask is applied and a ``scipy.sparse.csr_matrix((values, (pixel,
source)), shape=(H*W, n))`` is built, then multiplied.  The image structure
(mask, pixel and source indices) is computed inside the timed region of the
``pipeline`` and ``construct_xy`` cases; for the product cases it is prepared
in advance, as a ``Sparse3D`` has its structure from construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from benchmarks.cases import Factory, Prepared, Unsupported
from benchmarks.scene import Scene, as_float32


@dataclass
class Structure:
    """In-image mask and CSR coordinates of the stamp pixels."""

    mask: np.ndarray
    pixel: np.ndarray
    source: np.ndarray
    shape: tuple[int, int]


def structure(scene: Scene) -> Structure:
    """Compute the in-image mask and the flat pixel / source indices.

    Parameters
    ----------
    scene : Scene
        The scene.

    Returns
    -------
    Structure
        Mask of shape ``(nr, nc, n)`` and index vectors of the kept pixels.
    """
    H, W = scene.imshape
    row, col = scene.row3d, scene.col3d
    mask = (row >= 0) & (row < H) & (col >= 0) & (col < W)
    pixel = (row * W + col)[mask]
    source = np.broadcast_to(np.arange(scene.nsources), row.shape)[mask]
    return Structure(mask, pixel, source, (H * W, scene.nsources))


def to_csr(values: np.ndarray, st: Structure) -> scipy.sparse.csr_matrix:
    """Build the ``(H*W, n)`` CSR matrix from stamp values.

    Parameters
    ----------
    values : numpy.ndarray
        Stamp values, shape ``(nr, nc, n)``.
    st : Structure
        Output of :func:`structure`.

    Returns
    -------
    scipy.sparse.csr_matrix
        The matrix, row-major pixel index by source.
    """
    return scipy.sparse.csr_matrix((values[st.mask], (st.pixel, st.source)), shape=st.shape)


def psf_values(scene: Scene) -> np.ndarray:
    """The tutorial expression for ``L``, evaluated on the raw stamp block."""
    s = scene.sigma
    x3d, y3d = scene.x3d, scene.y3d
    rp, cp = scene.row_phase, scene.col_phase
    return np.exp(-0.5 * ((x3d - rp) ** 2 / s**2 + (y3d - cp) ** 2 / s**2)) * 1 / (2 * np.pi * s**2)


def psf_values_hint(scene: Scene) -> np.ndarray:
    """The hint variant of ``L`` on the raw stamp block."""
    s = scene.sigma
    dx = -0.5 * (scene.x3d - scene.row_phase) ** 2 / s**2
    dy = -0.5 * (scene.y3d - scene.col_phase) ** 2 / s**2
    return np.exp(dx + dy) * (1 / (2 * np.pi * s**2))


def model_image(scene: Scene) -> np.ndarray:
    """Noise-free model image ``L.dot(brightness)``, shape ``(H, W)``."""
    A = to_csr(psf_values(scene), structure(scene))
    return (A @ scene.brightness).reshape(scene.imshape)


def _image_canon(scene: Scene, st: Structure):
    """Canonical form of a stamp block: its image ``A @ brightness``."""

    def canon(values: np.ndarray) -> np.ndarray:
        return (to_csr(values, st) @ scene.brightness).reshape(scene.imshape)

    return canon


def _pipeline(scene: Scene) -> Prepared:
    H, W = scene.imshape

    def run() -> np.ndarray:
        st = structure(scene)
        A = to_csr(psf_values(scene), st)
        return (A @ scene.brightness).reshape(H, W)

    return Prepared(run)


def _pipeline_f32(scene: Scene) -> Prepared:
    return _pipeline(as_float32(scene))


def _construct_xy(scene: Scene) -> Prepared:
    st = structure(scene)
    canon = _image_canon(scene, st)
    return Prepared(
        lambda: structure(scene),
        canon=lambda _: canon(scene.x3d),
        note="mask + pixel/source indices, computed once for X and Y",
    )


def _block(fn) -> Factory:
    def factory(scene: Scene) -> Prepared:
        return Prepared(lambda: fn(scene), canon=_image_canon(scene, structure(scene)))

    return factory


def _with_csr(product) -> Factory:
    """Factory for 'CSR construction + product' from precomputed values."""

    def factory(scene: Scene) -> Prepared:
        st = structure(scene)
        values = psf_values(scene)
        return Prepared(lambda: product(scene, to_csr(values, st)))

    return factory


def _prebuilt_product(scene: Scene) -> Prepared:
    A = to_csr(psf_values(scene), structure(scene))
    return Prepared(lambda: _image(scene, A @ scene.brightness), note="A @ w with A prebuilt")


def _image(scene: Scene, flat: np.ndarray) -> np.ndarray:
    return flat.reshape(*scene.imshape, *flat.shape[1:])


def _fit(scene: Scene) -> Prepared:
    st = structure(scene)
    values = psf_values(scene)
    data = scene.fake_data.ravel()

    def run() -> np.ndarray:
        Lc = to_csr(values, st)
        rhs = scipy.sparse.csc_matrix(Lc.T.dot(data)).T
        return scipy.sparse.linalg.spsolve(Lc.T.dot(Lc), rhs)

    return Prepared(run, note="tutorial: spsolve(Lc.T Lc, Lc.T d) incl. CSR build")


def _not_applicable(scene: Scene) -> Prepared:
    raise Unsupported("not applicable: compared with sparse3d's own dot_ones")


def cases(legacy: bool = False) -> dict[str, Factory]:
    """Case factories of the NumPy/SciPy baseline.

    Parameters
    ----------
    legacy : bool
        Unused; present for a uniform interface.

    Returns
    -------
    dict
        Case name -> factory.
    """
    return {
        "pipeline": _pipeline,
        "pipeline_f32": _pipeline_f32,
        "construct_xy": _construct_xy,
        "build_L": _block(psf_values),
        "build_L_hint": _block(psf_values_hint),
        "dot": _with_csr(lambda s, A: _image(s, A @ s.brightness)),
        "dot_cached": _prebuilt_product,
        "dot_k10": _with_csr(lambda s, A: _image(s, A @ s.w2)),
        "tensordot": _with_csr(lambda s, A: A.T @ s.fake_data.ravel()),
        "tocsr": _with_csr(lambda s, A: _image(s, A @ s.brightness)),
        "csr_build": _with_csr(lambda s, A: A),
        "op_sub": _block(lambda s: s.x3d - s.row_phase),
        "op_pow": _block(lambda s: s.x3d**2),
        "op_exp": _block(lambda s: np.exp(s.x3d)),
        "op_mul": _block(lambda s: s.x3d * 2.5),
        "dot_ones": _with_csr(lambda s, A: _image(s, A @ np.ones(s.nsources))),
        "xarray_sum": _not_applicable,
        "xarray_sel": _not_applicable,
        "fit": _fit,
    }
