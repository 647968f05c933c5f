"""PSF models evaluated onto stamps: sub-pixel designs and their derivative stamps.

>>> from sparse3d.psf import Gaussian
>>> L, d = Gaussian(sigma=1.0).design([10.3], [20.8], imshape=(32, 32), stamp_shape=(9, 9),
...                                   derivatives=("row", "col", "sigma"))

**Pixel convention** (used everywhere in sparse3d). Positions are absolute pixel
coordinates in which *integer coordinates are pixel centres*: pixel ``(r, c)`` covers
``[r - ½, r + ½] × [c - ½, c + ½]``, and a source at ``row = 10.0`` sits at the centre of
pixel row 10 (the tutorial's convention: the stamp pixel ``R`` is evaluated at offset
``R - phase``). Image pixel ``[0, 0]`` is the absolute pixel ``imcorner``.

**Placement.** Each source gets an ``nr × nc`` stamp centred on its nearest pixel,
``floor(row + 0.5)`` (ties go up: 10.5 → 11), so its offset from the centre pixel is in
``[-0.5, 0.5)``. An even stamp puts its extra pixel on the low side: 10 pixels span offsets
``-5 … 4``, as the tutorial's ``np.mgrid[:10] - 10 // 2``.

**Models.** :class:`Gaussian`, :class:`EllipticalGaussian`, :class:`Moffat` and
:class:`IntegratedGaussian` (the exact pixel integral: use it for undersampled detectors
such as Kepler and TESS) are analytic; :class:`ImagePSF` and :class:`GriddedPSF` take
oversampled PSF images with photutils' conventions. Every shape parameter is a number or a
``(nsources,)`` array; the profiles integrate to 1, and on an untruncated stamp the sampled
ones (all but :class:`IntegratedGaussian`) sum to ≈ 1 when the PSF is well sampled (σ ≳ 1 px;
see :class:`Moffat` for how far an undersampled core overshoots).

**Derivatives.** ``design(..., derivatives=("row", "col"))`` also returns
``{name: dL/dname}`` — the derivative with respect to each source's own position (and, for
the analytic models, each shape parameter) — as :class:`~sparse3d.Sparse3D` arrays with the
same structure as ``L``, so ``np.concatenate([L, d["row"], d["col"]], axis=2)`` is the
linearised design of a position fit. To move stamps whose values are known only as numbers,
use :meth:`Sparse3D.shift <sparse3d.Sparse3D.shift>`.

**Stamp sizes per source.** ``stamp_shape`` may be a NumPy array of per-source sizes
(``(nsources,)`` squares or ``(nsources, 2)``), e.g. from :func:`stamp_sizes_by_flux`:
bright stars on big stamps, faint ones on small, in one array with one stamp group per size.
"""

from ._base import PSFModel, place, stamp_offsets, stamp_sizes_by_flux
from .analytic import EllipticalGaussian, Gaussian, IntegratedGaussian, Moffat
from .image import GriddedPSF, ImagePSF

__all__ = [
    "EllipticalGaussian",
    "Gaussian",
    "GriddedPSF",
    "ImagePSF",
    "IntegratedGaussian",
    "Moffat",
    "PSFModel",
    "place",
    "stamp_offsets",
    "stamp_sizes_by_flux",
]
