"""Case catalogue and the small types shared by all implementations.

Each implementation module in :mod:`benchmarks.impls` exposes a ``CASES``
mapping from case name to a *factory*: ``factory(scene) -> Prepared``.  The
factory does all set-up (untimed); ``Prepared.run`` is the timed callable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.scene import Scene


class Unsupported(Exception):
    """Raised by a factory when an implementation cannot express a case."""


@dataclass
class Prepared:
    """A ready-to-time case.

    Parameters
    ----------
    run : callable
        The timed work: ``run()``, or ``run(setup())`` when ``setup`` is given.
    canon : callable, optional
        Maps the result of ``run`` to a canonical ``numpy.ndarray`` used to
        cross-check implementations against the NumPy baseline (untimed).
    note : str
        Free-text caveat reported next to the timing (e.g. a workaround).
    setup : callable, optional
        Untimed zero-argument callable run before *every* call; its result is
        passed to ``run``.  Used to hand the library a fresh array each time
        so that per-instance caches (e.g. the cached CSR) are not timed.
    """

    run: Callable[..., Any]
    canon: Callable[[Any], np.ndarray] | None = None
    note: str = ""
    setup: Callable[[], Any] | None = None

    def call(self) -> Any:
        """Run ``setup`` (if any) and ``run`` once, untimed."""
        return self.run(self.setup()) if self.setup is not None else self.run()


Factory = Callable[[Scene], Prepared]

#: Case name -> one-line description, in report order.
CASES: dict[str, str] = {
    "pipeline": "construct X, Y + build L (tutorial expression) + L.dot(w)",
    "pipeline_f32": "the pipeline on float32 offsets, phases and brightnesses",
    "construct_xy": "construct X and Y from the raw stamp arrays",
    "build_L": "L = exp(-0.5*((X-rp)**2/s**2 + (Y-cp)**2/s**2)) * 1/(2 pi s**2)",
    "build_L_hint": "hint variant: dX1, dY1 from arrays, exp(dX1 + dY1) * c",
    "dot": "L.dot(w), w shape (n,), first call on a new L",
    "dot_cached": "L.dot(w) repeated on the same L (caches warm)",
    "dot_k10": "np.dot(L, w2), w2 shape (n, 10)",
    "tensordot": "np.tensordot(L, image, axes=([0, 1], [0, 1]))",
    "tocsr": "L.tocsr()",
    "csr_build": "CSR construction alone (reference for tocsr)",
    "op_sub": "X - v (per-source vector)",
    "op_pow": "X ** 2",
    "op_exp": "np.exp(X)",
    "op_mul": "X * c (scalar)",
    "dot_ones": "L.dot(np.ones(n)) (reference for the xarray cases)",
    "xarray_sum": 'L.to_xarray().sum("source"), materialised',
    "xarray_sel": "L.to_xarray().sel(source=i), materialised",
    "fit": "fit brightnesses to the noisy image",
    "fit_frames100": "fit brightnesses to 100 noisy frames (H, W, 100) at once",
    "fit_weights_err": "res.weights_err after L.fit(image) (the fit itself untimed)",
    "fit_superlu": "L.fit(image, solver='superlu') (SciPy's SuperLU; solver comparison)",
    "fit_cholmod": "L.fit(image, solver='cholmod') (opt-in GPL CHOLMOD; solver comparison)",
    "fit_csr": "fit_design(L.tocsr(), image): the general path (SciPy A^T A), default solver",
    "psf_gaussian": "sparse3d.psf.Gaussian(sigma).design(row, col, imshape, stamp): the same scene's L",
    "psf_gaussian_derivs": "Gaussian design plus d/drow, d/dcol, d/dsigma stamps (4 arrays, one structure)",
    "shift": "L.shift((0.3, -0.2)): fractional move of every stamp (sinc resampling)",
    "shift_per_source": "L.shift((drow, dcol)) with one seeded shift in [-0.5, 0.5) per source",
}

#: Cases timed interleaved with a reference case, whose runs are stored as ``"<impl>@<case>"``
#: (float32 against float64 in the same rounds: a ratio of two cases timed minutes apart
#: on a shared machine says more about the load than about the code).
PAIRED = {"pipeline_f32": "pipeline"}

#: Cases that need ``scene.fake_data``.
NEEDS_FAKE_DATA = frozenset(
    {"tensordot", "fit", "fit_frames100", "fit_weights_err", "fit_superlu", "fit_cholmod", "fit_csr"}
)


def summarize(arr: np.ndarray) -> dict:
    """Summarise a canonical result for cross-process comparison.

    Parameters
    ----------
    arr : numpy.ndarray
        Canonical result of a case.

    Returns
    -------
    dict
        Shape, sum, L2 norm and a fixed strided sample of the values.
    """
    a = np.asarray(arr, dtype=float)
    flat = a.ravel()
    step = max(1, flat.size // 64)
    return {
        "shape": list(a.shape),
        "sum": float(flat.sum()),
        "norm": float(np.sqrt((flat * flat).sum())),
        "sample": flat[::step][:64].tolist(),
    }


def compare_summaries(a: dict, b: dict) -> float:
    """Largest relative difference between two :func:`summarize` outputs.

    Parameters
    ----------
    a, b : dict
        Summaries; ``b`` is the reference.

    Returns
    -------
    float
        ``inf`` if the shapes differ, otherwise the largest relative error of
        the norm, the sum and the sample (scaled by the reference norm).
    """
    if a["shape"] != b["shape"]:
        return float("inf")
    scale = max(abs(b["norm"]), 1e-300)
    diffs = [abs(a["norm"] - b["norm"]) / scale]
    diffs.append(abs(a["sum"] - b["sum"]) / max(abs(b["sum"]), scale))
    sa, sb = np.asarray(a["sample"]), np.asarray(b["sample"])
    if sa.size and sa.shape == sb.shape:
        diffs.append(float(np.max(np.abs(sa - sb))) / scale)
    if not all(np.isfinite(diffs)):
        return float("inf")
    return float(max(diffs))
