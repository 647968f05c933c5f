"""The main job: the tutorial's scene end to end (``python -m sparse3d demo``)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .core import Sparse3D
from .testing import gaussian_scene


class _Steps:
    """Run named steps, show progress on stderr, and keep a timing table."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream, self.rows, self.index = total, stream, [], 0

    def __call__(self, name: str, func: Callable):
        self.index += 1
        self.stream.write(f"[{self.index}/{self.total}] {name} …")
        self.stream.flush()
        t0 = time.perf_counter()
        result = func()
        dt = time.perf_counter() - t0
        self.stream.write(f" {dt:.2f} s\n")
        self.rows.append((name, dt))
        return result

    def table(self) -> str:
        width = max(len(n) for n, _ in self.rows)
        lines = [f"{'step':<{width}}  seconds", f"{'-' * width}  -------"]
        lines += [f"{n:<{width}}  {dt:7.3f}" for n, dt in self.rows]
        return "\n".join(lines)


def run_demo(
    imshape: tuple[int, int] = (1024, 1024),
    nsources: int = 50_000,
    output: str | Path = "sparse3d-demo",
    seed: int = 0,
    plots: bool = True,
    recipe: bool = True,
) -> dict:
    """Simulate, model and fit the tutorial's scene; print timings and fit quality.

    Parameters
    ----------
    imshape : tuple of int
        Image size ``(H, W)``.
    nsources : int
        Number of stars.
    output : path
        Folder for the PNG figures (created).
    seed : int
        Random seed.
    plots : bool
        Write the figures (needs matplotlib: ``pip install "sparse3d[demo]"``).
    recipe : bool
        Also run the seed tutorial's ``spsolve`` recipe, to compare time and result.

    Returns
    -------
    dict
        ``weights``, ``truth``, ``model_image``, ``data``, ``timings`` and the fit summary.
    """
    from scipy import sparse as sp
    from scipy.sparse import linalg as spla

    steps = _Steps(total=8 + int(plots) + int(recipe))
    sc = steps("simulate the scene", lambda: gaussian_scene(imshape=imshape, nsources=nsources, seed=seed))
    sigma = sc["sigma"]
    X, Y = steps(
        "build X, Y (Sparse3D)",
        lambda: (
            Sparse3D(sc["x3d"], sc["row3d"], sc["col3d"], imshape=imshape),
            Sparse3D(sc["y3d"], sc["row3d"], sc["col3d"], imshape=imshape),
        ),
    )
    L = steps(
        "Gaussian PSF design array L",
        lambda: (
            np.exp(-0.5 * ((X - sc["row_phase"]) ** 2 / sigma**2 + (Y - sc["col_phase"]) ** 2 / sigma**2))
            / (2 * np.pi * sigma**2)
        ),
    )
    model = steps("model image L.dot(brightness)", lambda: L.dot(sc["brightness"]))
    rng = np.random.default_rng(seed + 1)
    data = steps(
        "noisy data (Poisson + read noise)",
        lambda: rng.poisson(model) + rng.normal(0, 3, size=model.shape).astype(int),
    )
    Lc = steps("L.tocsr()", L.tocsr)
    fit = steps(f"fit all brightnesses (L.fit, {_solver_name()})", lambda: L.fit(data))
    weights = fit.weights
    errors = steps("1-sigma errors (selected inversion)", lambda: fit.weights_err)
    if recipe:
        recipe_weights = steps(
            "the tutorial's recipe: Lc.T @ Lc + spsolve",
            lambda: spla.spsolve((Lc.T @ Lc).tocsc(), sp.csc_matrix(Lc.T @ data.ravel()).T),
        )
        agree = float(np.max(np.abs(recipe_weights - weights)) / np.max(np.abs(recipe_weights)))
    truth = sc["brightness"]
    bright = truth > 100
    rel = np.abs(weights[bright] - truth[bright]) / truth[bright]
    summary = {
        "n_bright": int(bright.sum()),
        "median_rel_error_bright": float(np.median(rel)) if rel.size else float("nan"),
        "reduced_chi2": float(np.mean((data - fit.model) ** 2 / (np.clip(model, 0, None) + 9.0))),
        "median_pull_bright": float(np.median(np.abs(weights[bright] - truth[bright]) / errors[bright]))
        if bright.any()
        else float("nan"),
    }
    if recipe:
        summary["recipe_max_rel_difference"] = agree
    if plots:
        steps("figures", lambda: _figures(Path(output), model, truth, weights))
    print(f"sparse3d demo: {imshape[0]}x{imshape[1]} image, {nsources:,} sources, L.nnz = {L.nnz:,}")
    print(steps.table())
    print(
        f"fit: {summary['n_bright']} sources brighter than 100: median |measured - truth| / truth = "
        f"{summary['median_rel_error_bright']:.4f}; reduced chi2 (Poisson + read noise) = "
        f"{summary['reduced_chi2']:.3f}"
    )
    if recipe:
        print(f"L.fit agrees with the tutorial's spsolve recipe to {agree:.1e} (max |difference| / max |w|)")
    if plots:
        print(f"figures: {Path(output) / 'model_image.png'}, {Path(output) / 'truth_vs_measured.png'}")
    return {
        "weights": weights,
        "truth": truth,
        "model_image": model,
        "data": data,
        "timings": dict(steps.rows),
        **summary,
    }


def _solver_name() -> str:
    from .fit import available_solvers

    names = {"qdldl": "qdldl", "superlu": "SciPy SuperLU", "cholmod": "CHOLMOD"}
    return names[available_solvers()[0]]  # what solver="auto" picks


def _figures(folder: Path, model: np.ndarray, truth: np.ndarray, weights: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(model, vmin=0, vmax=10, origin="lower")
    ax.set(xlabel="Column", ylabel="Row", title="Model image")
    fig.savefig(folder / "model_image.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 6))
    ok = weights > 0
    ax.scatter(truth[ok], weights[ok], s=1, c="k")
    ax.plot([1e-4, 1e6], [1e-4, 1e6], c="r", ls="--")
    ax.set(xscale="log", yscale="log", xlabel="Truth", ylabel="Measured", title="Fitted brightness")
    fig.savefig(folder / "truth_vs_measured.png", dpi=100)
    plt.close(fig)
