"""Seeded generator for the tutorial scene.

The scene is a set of raw stamp arrays of shape ``(nr, nc, nsources)``; every
implementation (``sparse3d``, the NumPy/SciPy baseline, pydata/sparse and
``sparse3d==1.2.11``) starts from the same arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class SceneSpec:
    """Parameters that define a scene.

    Parameters
    ----------
    nsources : int
        Number of sources (third axis of the array).
    imshape : tuple of int
        Image shape ``(H, W)``.
    stamp : int
        Side of the square stamp around each source.
    sigma : float
        Width of the Gaussian PSF in pixels.
    seed : int
        Seed for :func:`numpy.random.default_rng`.
    """

    nsources: int = 50_000
    imshape: tuple[int, int] = (1024, 1024)
    stamp: int = 10
    sigma: float = 1.0
    seed: int = 42

    @property
    def nstored(self) -> int:
        """Number of stored stamp elements, ``stamp**2 * nsources``."""
        return self.stamp * self.stamp * self.nsources

    def to_dict(self) -> dict:
        """Return a JSON-serialisable dictionary."""
        out = asdict(self)
        out["imshape"] = list(self.imshape)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> SceneSpec:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["imshape"] = tuple(d["imshape"])
        return cls(**d)


#: The scene of the tutorial (1024 x 1024 image, 50,000 sources, 10 x 10 stamps).
TUTORIAL = SceneSpec()
#: A tiny scene for ``--smoke``.
SMOKE = SceneSpec(nsources=500, imshape=(128, 128), stamp=6)


@dataclass
class Scene:
    """Raw arrays of a scene, as in the tutorial.

    Attributes
    ----------
    spec : SceneSpec
        The parameters the scene was generated from.
    row3d, col3d : numpy.ndarray
        Absolute integer pixel positions, shape ``(nr, nc, n)``.
    x3d, y3d : numpy.ndarray
        Stamp-relative row / column offsets as float, shape ``(nr, nc, n)``.
    row_phase, col_phase : numpy.ndarray
        Sub-pixel phase of each source, shape ``(n,)``.
    brightness : numpy.ndarray
        Source weights ``w``, shape ``(n,)``.
    w2 : numpy.ndarray
        Ten weight vectors, shape ``(n, 10)``.
    fake_data : numpy.ndarray
        Noisy image made from the model, shape ``(H, W)``; filled lazily by
        :func:`add_fake_data`.
    """

    spec: SceneSpec
    row3d: np.ndarray
    col3d: np.ndarray
    x3d: np.ndarray
    y3d: np.ndarray
    row_phase: np.ndarray
    col_phase: np.ndarray
    brightness: np.ndarray
    w2: np.ndarray
    fake_data: np.ndarray | None = field(default=None, repr=False)

    @property
    def sigma(self) -> float:
        """Gaussian width of the PSF."""
        return self.spec.sigma

    @property
    def imshape(self) -> tuple[int, int]:
        """Image shape ``(H, W)``."""
        return self.spec.imshape

    @property
    def nsources(self) -> int:
        """Number of sources."""
        return self.spec.nsources


def make_scene(spec: SceneSpec) -> Scene:
    """Generate the tutorial scene for ``spec``.

    Parameters
    ----------
    spec : SceneSpec
        Scene parameters.

    Returns
    -------
    Scene
        The raw stamp arrays, brightnesses and weight vectors.
    """
    rng = np.random.default_rng(spec.seed)
    n = spec.nsources
    brightness = 10 ** rng.normal(0, 1.5, size=n)
    source_row = rng.uniform(0, spec.imshape[0], size=n)
    source_col = rng.uniform(0, spec.imshape[1], size=n)
    row_int, row_phase = np.floor(source_row).astype(int), source_row % 1
    col_int, col_phase = np.floor(source_col).astype(int), source_col % 1
    R, C = np.mgrid[: spec.stamp, : spec.stamp] - spec.stamp // 2
    row3d = R[:, :, None] + row_int
    col3d = C[:, :, None] + col_int
    x3d = R[:, :, None] * np.ones(n)
    y3d = C[:, :, None] * np.ones(n)
    w2 = rng.uniform(0, 1, size=(n, 10))
    return Scene(
        spec=spec,
        row3d=row3d,
        col3d=col3d,
        x3d=x3d,
        y3d=y3d,
        row_phase=row_phase,
        col_phase=col_phase,
        brightness=brightness,
        w2=w2,
    )


def add_fake_data(scene: Scene, model_image: np.ndarray) -> np.ndarray:
    """Attach a noisy image (Poisson + Gaussian read noise) to ``scene``.

    Parameters
    ----------
    scene : Scene
        The scene; its ``fake_data`` attribute is set.
    model_image : numpy.ndarray
        Noise-free model image ``L.dot(brightness)``, shape ``(H, W)``.

    Returns
    -------
    numpy.ndarray
        The noisy image, as float64.
    """
    scene.fake_data = tutorial_noise(model_image, np.random.default_rng(scene.spec.seed + 1))
    return scene.fake_data


def tutorial_noise(model_image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The seed tutorial's fake data for ``model_image``: Poisson noise of the model plus a
    Gaussian read noise of 3 counts rounded toward zero, as float64 (drawn from ``rng``)."""
    noise = rng.normal(0, 3, size=model_image.shape).astype(int)
    return (rng.poisson(model_image) + noise).astype(float)


def as_float32(scene: Scene) -> Scene:
    """The same scene with float32 stamp offsets, phases and brightnesses (positions unchanged).

    The ``sigma`` stays a Python float, so NumPy keeps float32 results (NEP 50).
    """
    f32 = lambda a: None if a is None else np.asarray(a, dtype=np.float32)  # noqa: E731
    return Scene(
        spec=scene.spec,
        row3d=scene.row3d,
        col3d=scene.col3d,
        x3d=f32(scene.x3d),
        y3d=f32(scene.y3d),
        row_phase=f32(scene.row_phase),
        col_phase=f32(scene.col_phase),
        brightness=f32(scene.brightness),
        w2=f32(scene.w2),
        fake_data=f32(scene.fake_data),
    )
