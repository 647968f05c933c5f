"""The main job: the tutorial's scene end to end (``python -m sparse3d demo``).

The simulation is honest about its noise, so the printed fit quality means something:

* data = Poisson(model) + Gaussian read noise (σ = :data:`READ_NOISE` counts), kept as floats;
* the per-pixel errors are what a pipeline would estimate without knowing the truth, in two
  passes: first from the data, ``sqrt(max(data, 0) + READ_NOISE**2)`` (shot noise from the clipped
  counts plus read noise), then from the first weighted fit's model,
  ``sqrt(max(model, 0) + READ_NOISE**2)``. Errors taken from the data alone are correlated with
  its noise (a pixel that fluctuates up gets a larger error), which biases χ² low (≈ 0.87) and
  bright stars' fluxes low; errors from the fitted model are not;
* the fit is weighted by those errors (``L.fit(data, errors=...)``);
* reduced χ² = χ² / (unmasked pixels − fitted sources), and the pulls
  ``(measured − truth) / error`` of a correct fit have standard deviation ≈ 1 and median
  ``|pull|`` ≈ 0.674 (a unit Gaussian's).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .core import Sparse3D
from .testing import gaussian_scene

#: Read noise of the simulated detector, in counts (1 σ).
READ_NOISE = 3.0
#: Sources brighter than this (in counts) are summarised separately as "bright".
BRIGHT = 100.0
#: Median of ``|z|`` for a unit Gaussian ``z``: what the median ``|pull|`` of a correct fit approaches.
MEDIAN_ABS_UNIT_GAUSSIAN = 0.6744897501960817


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


def check_output_folder(output: str | Path) -> Path:
    """Create ``output`` if needed and make sure a file can be written there, before any compute.

    Raises
    ------
    OSError
        ``output`` cannot be created or is not writable (the message names it).
    """
    folder = Path(output)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sparse3d-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OSError(f"output folder {str(folder)!r} is not writable: {exc.strerror or exc}") from exc
    return folder


def simulate_data(model: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy float data for a noiseless ``model`` image: ``Poisson(model) + Normal(0, READ_NOISE)``."""
    return rng.poisson(model).astype(np.float64) + rng.normal(0.0, READ_NOISE, size=model.shape)


def error_map(counts: np.ndarray) -> np.ndarray:
    """Per-pixel 1-σ errors for expected ``counts``: ``sqrt(max(counts, 0) + READ_NOISE**2)``.

    Shot noise (Poisson variance = counts, clipped at 0 where noise or a fit makes them
    negative) plus read noise. ``counts`` is the data for a first pass, a fitted model after.
    """
    return np.sqrt(np.clip(counts, 0.0, None) + READ_NOISE**2)


def fit_summary(fit, data, errors, truth) -> dict:
    """Reduced χ² and pull statistics of a fit (see the module docstring)."""
    weights, err = fit.weights, fit.weights_err
    ok = ~fit.unconstrained
    n_fitted = int(ok.sum())
    dof = fit.n_pixels - n_fitted
    pull = (weights[ok] - truth[ok]) / err[ok]
    bright = truth[ok] > BRIGHT
    return {
        "n_fitted": n_fitted,
        "dof": dof,
        "chi2": float(fit.chi2),
        "reduced_chi2": float(fit.chi2) / dof if dof > 0 else float("nan"),
        "n_bright": int(bright.sum()),
        "pull_std": float(np.std(pull)) if pull.size else float("nan"),
        "pull_std_bright": float(np.std(pull[bright])) if bright.any() else float("nan"),
        "median_abs_pull_bright": float(np.median(np.abs(pull[bright]))) if bright.any() else float("nan"),
        "median_rel_error_bright": float(
            np.median(np.abs(weights[ok][bright] - truth[ok][bright]) / truth[ok][bright])
        )
        if bright.any()
        else float("nan"),
        "n_nonpositive": int(np.count_nonzero(weights[ok] <= 0)),
    }


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
        Image size ``(H, W)``, both positive.
    nsources : int
        Number of stars, positive.
    output : path
        Folder for the PNG figures (created; checked to be writable before anything is computed).
    seed : int
        Random seed, ``>= 0``.
    plots : bool
        Write the figures (needs matplotlib: ``pip install "sparse3d[demo]"``).
    recipe : bool
        Also solve the weighted normal equations with the seed tutorial's ``spsolve`` recipe, to
        compare time and result.

    Returns
    -------
    dict
        ``weights``, ``weights_err``, ``truth``, ``model_image``, ``data``, ``errors``,
        ``fit_model``, ``timings`` and the fit summary (``reduced_chi2``, ``dof``, ``pull_std``,
        ``pull_std_bright``, ``median_abs_pull_bright``, ...).
    """
    if len(imshape) != 2 or min(imshape) < 1:
        raise ValueError(f"imshape must be two positive integers, got {tuple(imshape)}")
    if nsources < 1:
        raise ValueError(f"nsources must be a positive integer, got {nsources}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError as exc:
            msg = 'the figures need matplotlib: pip install "sparse3d[demo]" (or plots=False)'
            raise ImportError(msg) from exc
        check_output_folder(output)

    from scipy import sparse as sp
    from scipy.sparse import linalg as spla

    steps = _Steps(total=9 + int(plots) + int(recipe))
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
        "Gaussian PSF design array L (recorded: evaluated in one pass at its first use)",
        lambda: (
            np.exp(-0.5 * ((X - sc["row_phase"]) ** 2 / sigma**2 + (Y - sc["col_phase"]) ** 2 / sigma**2))
            / (2 * np.pi * sigma**2)
        ),
    )
    model = steps(
        "model image L.dot(brightness) (evaluates L's values first)", lambda: L.dot(sc["brightness"])
    )
    rng = np.random.default_rng(seed + 1)
    data = steps("noisy data (Poisson + read noise)", lambda: simulate_data(model, rng))
    Lc = steps("L.tocsr()", L.tocsr)
    first = steps(
        "fit, errors from the data (L.fit, solver='auto'; a cold cache compiles once)",
        lambda: L.fit(data, errors=error_map(data)),
    )
    solver = _solver_name(first.solver)
    first_chi2 = float(first.chi2) / (first.n_pixels - int(np.count_nonzero(~first.unconstrained)))
    errors = error_map(first.model)
    fit = steps(f"refit, errors from that fit's model (L.fit, {solver})", lambda: L.fit(data, errors=errors))
    weights = fit.weights
    weights_err = steps("1-sigma errors (selected inversion)", lambda: fit.weights_err)
    if recipe:

        def spsolve_recipe():
            Lw = sp.diags(1.0 / errors.ravel()) @ Lc  # the tutorial's recipe, with the same weights
            return spla.spsolve((Lw.T @ Lw).tocsc(), Lw.T @ (data / errors).ravel())

        recipe_weights = steps("the tutorial's recipe: Lc.T W Lc + spsolve", spsolve_recipe)
        agree = float(np.max(np.abs(recipe_weights - weights)) / np.max(np.abs(recipe_weights)))
    truth = sc["brightness"]
    summary = fit_summary(fit, data, errors, truth)
    if recipe:
        summary["recipe_max_rel_difference"] = agree
    if plots:
        steps("figures", lambda: _figures(Path(output), data, fit.model, errors, truth, weights, weights_err))
    print(f"sparse3d demo: {imshape[0]}x{imshape[1]} image, {nsources:,} sources, L.nnz = {L.nnz:,}")
    print(steps.table())
    s = summary
    print(
        f"noise: Poisson + Gaussian read noise ({READ_NOISE:g} counts). Weighted fits, errors "
        f"sqrt(max(data, 0) + {READ_NOISE:g}**2) first (reduced chi2 {first_chi2:.3f}: such errors "
        f"correlate with the noise), then sqrt(max(fitted model, 0) + {READ_NOISE:g}**2):"
    )
    print(
        f"reduced chi2 = {s['chi2']:.6g} / {s['dof']:,} degrees of freedom "
        f"({fit.n_pixels:,} pixels - {s['n_fitted']:,} fitted sources) = {s['reduced_chi2']:.4f}  (expect ~1)"
    )
    print(
        f"pulls (measured - truth) / error: std = {s['pull_std']:.3f} (all {s['n_fitted']:,} sources), "
        f"{s['pull_std_bright']:.3f} ({s['n_bright']:,} brighter than {BRIGHT:g}); "
        f"median |pull| of the bright ones = {s['median_abs_pull_bright']:.3f} "
        f"(unit Gaussian: std 1, median |pull| {MEDIAN_ABS_UNIT_GAUSSIAN:.3f})"
    )
    print(
        f"bright sources: median |measured - truth| / truth = {s['median_rel_error_bright']:.4f}; "
        f"{s['n_nonpositive']:,} fitted brightnesses are <= 0 (faint stars, consistent with noise)"
    )
    if recipe:
        print(f"L.fit agrees with the tutorial's spsolve recipe to {agree:.1e} (max |difference| / max |w|)")
    if plots:
        print(f"figures: {Path(output) / 'model_image.png'}, {Path(output) / 'truth_vs_measured.png'}")
    return {
        "weights": weights,
        "weights_err": weights_err,
        "truth": truth,
        "model_image": model,
        "data": data,
        "errors": errors,
        "fit_model": fit.model,
        "timings": dict(steps.rows),
        "first_pass_reduced_chi2": first_chi2,
        **summary,
    }


def _solver_name(used: str) -> str:
    """How the demo names the solver a fit used (``FitResult.solver``: what ``"auto"`` chose)."""
    names = {"nd": "nested dissection", "qdldl": "qdldl", "superlu": "SciPy SuperLU", "cholmod": "CHOLMOD"}
    return names.get(used, used)


def _figures(
    folder: Path,
    data: np.ndarray,
    fit_model: np.ndarray,
    errors: np.ndarray,
    truth: np.ndarray,
    weights: np.ndarray,
    weights_err: np.ndarray,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    _image_figure(plt, folder / "model_image.png", data, fit_model, errors)
    _flux_figure(plt, folder / "truth_vs_measured.png", truth, weights, weights_err)


def _image_figure(plt, path: Path, data, fit_model, errors) -> None:
    """Data, best-fit model and normalised residuals, each with a colorbar and a percentile stretch."""
    lo, hi = np.percentile(data, [1, 99.5])  # shared by data and model so they compare directly
    resid = (data - fit_model) / errors
    rlim = float(np.percentile(np.abs(resid), 99.5))
    fig, axs = plt.subplots(1, 3, figsize=(17, 5.6), sharex=True, sharey=True, constrained_layout=True)
    panels = [
        (data, "Data (counts)", dict(vmin=lo, vmax=hi, cmap="viridis")),
        (fit_model, "Best-fit model (counts)", dict(vmin=lo, vmax=hi, cmap="viridis")),
        (resid, "Residuals (data - model) / error", dict(vmin=-rlim, vmax=rlim, cmap="RdBu_r")),
    ]
    for ax, (img, title, kw) in zip(axs, panels):
        im = ax.imshow(img, origin="lower", interpolation="nearest", **kw)
        fig.colorbar(im, ax=ax, shrink=0.85)
        ax.set(xlabel="Column", title=title)
    axs[0].set_ylabel("Row")
    fig.suptitle(
        f"Colour range: 1st-99.5th percentile of the data ({lo:.3g} to {hi:.3g}); "
        f"residuals: 99.5th percentile of |residual| ({rlim:.2g}); residual std = {np.std(resid):.3f}"
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _flux_figure(plt, path: Path, truth, weights, weights_err) -> None:
    """Measured vs true brightness with error bars (symlog: fluxes <= 0 shown), and the pull histogram."""
    ok = np.isfinite(weights)
    t, w, e = truth[ok], weights[ok], weights_err[ok]
    nonpos = w <= 0
    pull = (w - t) / e
    fig, (ax, axh) = plt.subplots(1, 2, figsize=(14, 6.2), constrained_layout=True)
    linthresh = float(np.median(e))  # below about one typical error, the axis is linear
    ax.errorbar(
        t[~nonpos], w[~nonpos], yerr=e[~nonpos], fmt=".", ms=2, c="k", ecolor="0.6", elinewidth=0.5,
        alpha=0.6, label=f"measured > 0 ({np.count_nonzero(~nonpos):,}), ±1σ",
    )  # fmt: skip
    ax.errorbar(
        t[nonpos], w[nonpos], yerr=e[nonpos], fmt=".", ms=2, c="tab:orange", ecolor="tab:orange",
        elinewidth=0.5, alpha=0.6, label=f"measured ≤ 0 ({np.count_nonzero(nonpos):,} of {w.size:,}), ±1σ",
    )  # fmt: skip
    lo = min(t.min(), np.min(np.abs(w[w != 0]), initial=t.min()))
    hi = max(t.max(), w.max())
    line = np.geomspace(lo, hi, 200)
    ax.plot(line, line, c="r", ls="--", zorder=3, label="1:1")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=linthresh)
    ax.axhspan(
        -linthresh,
        linthresh,
        color="0.9",
        zorder=-1,
        label=f"linear part of the axis: |y| < {linthresh:.2g} (median error)",
    )
    ax.set(
        xlabel="True brightness (counts)",
        ylabel="Measured brightness (counts, symlog)",
        title="Fitted brightness vs truth",
    )
    ax.legend(loc="upper left", fontsize=9)
    bright = t > BRIGHT
    bins = np.linspace(-5, 5, 61)
    axh.hist(
        np.clip(pull, -5, 5), bins=bins, density=True, histtype="step", lw=1.5, label=f"all ({pull.size:,})"
    )
    if bright.any():
        axh.hist(
            np.clip(pull[bright], -5, 5), bins=bins, density=True, histtype="step", lw=1.5,
            label=f"truth > {BRIGHT:g} ({np.count_nonzero(bright):,})",
        )  # fmt: skip
    x = np.linspace(-5, 5, 400)
    axh.plot(x, np.exp(-0.5 * x**2) / np.sqrt(2 * np.pi), c="k", ls="--", label="unit Gaussian")
    axh.set(
        xlabel="Pull (measured − truth) / error (clipped to ±5)",
        ylabel="Density",
        title=f"Pulls: std {np.std(pull):.3f} (all)"
        + (f", {np.std(pull[bright]):.3f} (truth > {BRIGHT:g})" if bright.any() else ""),
    )
    axh.legend(fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
