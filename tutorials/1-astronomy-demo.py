# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Modelling a crowded star field with `Sparse3D`
#
# This tutorial builds a model of a large astronomical image containing tens of thousands of
# stars, simulates noisy "observed" data from it, and then measures the brightness of every
# star at once with a linear least-squares fit.
#
# The key idea: each star only contributes light to a small patch of pixels around its
# position. Rather than storing a full image per star (50,000 images of a million pixels
# would be 400 GB), a `Sparse3D` array stores one small dense **stamp** per star, together
# with where that stamp sits in the image. Logically it still behaves like an array of shape
# `(rows, columns, stars)`, and NumPy functions work on it.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np
from scipy.sparse import linalg as splinalg

from sparse3d import Sparse3D

# %% [markdown]
# ## The scene
#
# We simulate a square image and scatter stars uniformly across it. Brightnesses are drawn
# from a log-normal distribution, so a handful of stars are very bright and most are faint.
#
# The default scene is 1024 × 1024 pixels with 50,000 stars. The environment variables
# `SPARSE3D_TUTORIAL_IMSIZE` and `SPARSE3D_TUTORIAL_NSOURCES` shrink it (the test suite and
# the rendered documentation use a smaller scene, so numbers below may differ from a
# full-size run).

# %%
imsize = int(os.environ.get("SPARSE3D_TUTORIAL_IMSIZE", 1024))
nsources = int(os.environ.get("SPARSE3D_TUTORIAL_NSOURCES", 50_000))
imshape = (imsize, imsize)

rng = np.random.default_rng(42)
source_brightness = 10 ** rng.normal(0, 1.5, size=nsources)
source_row, source_col = rng.uniform(0, imsize, size=(2, nsources))
sigma = 1.0  # width of the Gaussian point spread function, in pixels
print(f"{nsources:,} stars on a {imshape[0]} x {imshape[1]} image")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.hist(np.log10(source_brightness), bins=60, color="0.3")
ax.set(xlabel="log10(brightness)", ylabel="number of stars", title="Simulated brightnesses")
# %% [markdown]
# ## One stamp per star
#
# Our model for a star is a circular 2-D Gaussian,
#
# $$
# f(r, c) = \frac{1}{2\pi\sigma^2}
#   \exp\left(-\frac{(r - r_0)^2 + (c - c_0)^2}{2\sigma^2}\right),
# $$
#
# where $(r_0, c_0)$ is the star's position. Far from the star the profile is negligible, so
# we only evaluate it on a 10 × 10 pixel stamp around each star. An even-sized stamp has no
# central pixel: ours covers the 5 pixels before the star's pixel and the 4 after it, in rows
# and in columns. The star therefore sits 0.5 to 1.5 pixels from the stamp's geometric centre
# (towards the high side), and the stamp reaches at least 3 σ from the star on every side.
# That truncation is part of the model, so the fit below is unaffected by it.

# %%
stamp_size = int(2 * 5 * sigma)
half = stamp_size // 2

# %% [markdown]
# Each star's position splits into an integer pixel and a sub-pixel offset (its *phase*).
# The integer part says where the stamp goes; the phase goes into the model.

# %%
row_int = np.floor(source_row).astype(int)
col_int = np.floor(source_col).astype(int)
row_phase = source_row - row_int
col_phase = source_col - col_int

# %% [markdown]
# `R` and `C` are the pixel offsets within a stamp, relative to the star's integer pixel
# (−5 … 4: not symmetric, as said above):

# %%
R, C = np.mgrid[:stamp_size, :stamp_size] - half
R

# %% [markdown]
# Adding each star's integer pixel gives the absolute row and column of every stamp pixel.
# Broadcasting a `(10, 10, 1)` offset grid against `(nsources,)` positions produces arrays of
# shape `(stamp rows, stamp columns, stars)`: the layout `Sparse3D` expects.

# %%
row3d = R[:, :, None] + row_int
col3d = C[:, :, None] + col_int
row3d.shape

# %% [markdown]
# Here are the absolute rows covered by the first star's stamp:

# %%
row3d[:, :, 0]

# %% [markdown]
# ## Building the design array with NumPy ufuncs
#
# We wrap the stamp-pixel offsets in two `Sparse3D` arrays, `X` (row offset) and `Y`
# (column offset). Each has the logical shape `(H, W, nsources)`.

# %%
x3d = R[:, :, None] * np.ones(nsources)
y3d = C[:, :, None] * np.ones(nsources)
t0 = time.perf_counter()
X = Sparse3D(data=x3d, row=row3d, col=col3d, imshape=imshape)
Y = Sparse3D(data=y3d, row=row3d, col=col3d, imshape=imshape)
t_build = time.perf_counter() - t0
print(f"two Sparse3D arrays built in {t_build:.3f} s")
X

# %% [markdown]
# Now the Gaussian can be written exactly as the formula reads. Subtracting the per-star
# phase vectors broadcasts along the source axis, and `np.exp` acts on the stamp values only
# (pixels outside a star's stamp stay exactly zero).

# %%
t0 = time.perf_counter()
L = np.exp(-0.5 * ((X - row_phase) ** 2 + (Y - col_phase) ** 2) / sigma**2) / (2 * np.pi * sigma**2)
t_ufuncs = time.perf_counter() - t0 + t_build  # count building X and Y too
print(f"design array from Sparse3D ufuncs: {t_ufuncs:.3f} s (including building X and Y)")
L

# %% [markdown]
# `L` is the design array: slice `L[:, :, k]` is the image of star `k` with unit brightness.
# Summing the stars weighted by their brightness is a dot product over the source axis,
# which gives back an ordinary `(H, W)` NumPy image.

# %%
t0 = time.perf_counter()
model_image = L.dot(source_brightness)
t_dot = time.perf_counter() - t0
print(f"model image via L.dot: {t_dot:.3f} s; shape {model_image.shape}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 5.5))
im = ax.imshow(model_image, vmin=0, vmax=10, origin="lower", cmap="Greys_r")
ax.set(xlabel="column", ylabel="row", title="Model image")
fig.colorbar(im, ax=ax, shrink=0.8, label="counts")
# %% [markdown]
# ## Simulated observations
#
# To pretend this is a real exposure we draw Poisson photon noise from the model, and add a
# little Gaussian "read noise" from the detector.

# %%
read_noise = 3.0
fake_data = rng.poisson(model_image) + rng.normal(0, read_noise, size=imshape)

# %% [markdown]
# ## Fitting every star at once
#
# The model is linear in the brightnesses: `image = A @ w`, where `A` has one column per star
# and one row per pixel. `L.tocsr()` hands us exactly that matrix as a SciPy sparse matrix of
# shape `(H * W, nsources)`, ready for SciPy's sparse linear algebra.

# %%
t0 = time.perf_counter()
A = L.tocsr()
t_csr = time.perf_counter() - t0
print(f"tocsr: {t_csr:.3f} s")
A

# %% [markdown]
# We solve the normal equations $(A^\mathsf{T}A)\,w = A^\mathsf{T} d$ with a sparse direct
# solver. Because stars only overlap with their neighbours, $A^\mathsf{T}A$ is itself very
# sparse, and the solve is fast even for tens of thousands of unknowns.

# %%
t0 = time.perf_counter()
normal_matrix = (A.T @ A).tocsc()
rhs = A.T @ fake_data.ravel()
best_fit = splinalg.spsolve(normal_matrix, rhs)
t_fit = time.perf_counter() - t0
print(f"least-squares fit of {len(best_fit):,} brightnesses: {t_fit:.3f} s")

# %% [markdown]
# How well did we do? Bright stars are recovered almost perfectly. Faint stars scatter more,
# because their few photons are buried in the read noise (and some measured values are
# negative, which the log-scale plot cannot show).

# %%
fig, ax = plt.subplots(figsize=(6, 6))
ax.scatter(source_brightness, best_fit, s=1, c="k", alpha=0.5)
lims = [1e-3, source_brightness.max() * 2]
ax.plot(lims, lims, c="r", ls="--", label="measured = truth")
ax.set(
    xscale="log",
    yscale="log",
    xlim=lims,
    ylim=lims,
    xlabel="true brightness",
    ylabel="measured brightness",
    title="Truth vs measured",
)
ax.legend()
# %%
bright = source_brightness > 1000
rel_err = np.abs(best_fit[bright] - source_brightness[bright]) / source_brightness[bright]
print(f"{bright.sum():,} stars brighter than 1000: median relative error {np.median(rel_err):.2%}")

# %% [markdown]
# ## The same fit with `L.fit`, weighted, with uncertainties
#
# The recipe above is ordinary least squares: every pixel counts the same, although a pixel
# on a bright star is far noisier than an empty one, and it gives no error bars. `L.fit` does
# the whole job: it solves the *weighted* normal equations
# $(A^\mathsf{T} C^{-1} A)\,w = A^\mathsf{T} C^{-1} d$ with $C = \mathrm{diag}(\sigma_\mathrm{pix}^2)$
# by a sparse Cholesky factorisation, and returns the 1-σ uncertainty of every brightness
# (the square roots of the diagonal of $(A^\mathsf{T} C^{-1} A)^{-1}$, computed without forming
# the dense inverse).
#
# The per-pixel errors are what a pipeline would estimate without knowing the truth: photon
# noise plus read noise, $\sigma_\mathrm{pix}^2 = \max(\text{counts}, 0) + 3^2$. We take the
# counts from the data for a first fit, then from that fit's model for the final one (errors
# taken from the data alone are correlated with its noise and bias the result slightly).

# %%
def pixel_errors(counts):
    return np.sqrt(np.clip(counts, 0, None) + read_noise**2)


t0 = time.perf_counter()
first = L.fit(fake_data, errors=pixel_errors(fake_data))
errors = pixel_errors(first.model)
result = L.fit(fake_data, errors=errors)
w, w_err = result.weights, result.weights_err
t_lfit = time.perf_counter() - t0
print(f"two weighted fits with uncertainties ({result.solver}): {t_lfit:.3f} s")
dof = result.n_pixels - nsources
print(f"reduced chi2 = {result.chi2:.1f} / {dof:,} = {result.chi2 / dof:.3f}")

# %% [markdown]
# If the errors are right, the *pulls* $(w - w_\mathrm{true}) / \sigma_w$ follow a unit
# Gaussian, for faint and bright stars alike, and the reduced χ² is close to 1:

# %%
pull = (w - source_brightness) / w_err
print(f"pull std: {pull.std():.3f} (all stars), {pull[bright].std():.3f} (brighter than 1000)")
print(f"{np.mean(np.abs(pull) < 1):.1%} of the stars are within 1 sigma of the truth (unit Gaussian: 68.3%)")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
neg = w <= 0
ax1.errorbar(source_brightness[~neg], w[~neg], w_err[~neg], fmt=".", ms=2, c="k", ecolor="0.7", label="measured > 0")
ax1.errorbar(source_brightness[neg], w[neg], w_err[neg], fmt=".", ms=2, c="C1", ecolor="C1", alpha=0.4,
             label=f"measured ≤ 0 ({neg.sum():,} stars)")
line = np.geomspace(source_brightness.min(), max(source_brightness.max(), w.max()), 100)
ax1.plot(line, line, c="r", ls="--", label="measured = truth")
ax1.set_xscale("log")
ax1.set_yscale("symlog", linthresh=np.median(w_err))  # linear within ±1 typical error, so w ≤ 0 shows
ax1.set(xlabel="true brightness", ylabel="measured brightness ± 1σ (symlog)", title="L.fit: truth vs measured")
ax1.legend()
bins = np.linspace(-5, 5, 51)
ax2.hist(np.clip(pull, -5, 5), bins=bins, density=True, histtype="step", label="all stars")
ax2.hist(np.clip(pull[bright], -5, 5), bins=bins, density=True, histtype="step", label="brighter than 1000")
x = np.linspace(-5, 5, 200)
ax2.plot(x, np.exp(-x**2 / 2) / np.sqrt(2 * np.pi), c="k", ls="--", label="unit Gaussian")
ax2.set(xlabel="pull (measured − truth) / error", ylabel="density", title="Pulls")
ax2.legend()

# %% [markdown]
# In this exercise the model is perfect because we made the data with it. With real images
# the point spread function and the star positions are only approximately known, but the
# procedure is the same: build a design array, convert it, fit.
#
# ## Hint: do the arithmetic in NumPy, then cast
#
# Every operation on a `Sparse3D` makes a new array (the values are immutable), so a long
# chain of operators costs one pass over all stamp values per step. Where you can, combine
# the plain NumPy parts first: `S + (1 + np.ones(n) + 324)` does one pass over `S`, while
# `S + 1 + np.ones(n) + 324` does three.
#
# The same goes for building the model: compute the exponent on the plain `(10, 10, n)`
# stamp arrays with NumPy, wrap it in a `Sparse3D` once, and apply the single `np.exp`.
# Both timings below include building the `Sparse3D` arrays from the stamp arrays.

# %%
t0 = time.perf_counter()
exponent = -0.5 * ((x3d - row_phase) ** 2 + (y3d - col_phase) ** 2) / sigma**2
E = Sparse3D(exponent, row3d, col3d, imshape=imshape)
L_fast = np.exp(E) * (1 / (2 * np.pi * sigma**2))
t_numpy_first = time.perf_counter() - t0
print(f"design array, Sparse3D ufuncs:        {t_ufuncs:.3f} s")
print(f"design array, NumPy first, then cast: {t_numpy_first:.3f} s")
print(f"speed-up: {t_ufuncs / t_numpy_first:.1f}x")

# %% [markdown]
# Both routes give the same array:

# %%
np.allclose(L_fast, L)

# %%
fig, ax = plt.subplots(figsize=(5.5, 5.5))
ax.imshow(L_fast.dot(source_brightness), vmin=0, vmax=10, origin="lower", cmap="Greys_r")
ax.set(xlabel="column", ylabel="row", title="Model image (NumPy-first design array)")
# %% [markdown]
# ## Timings
#
# A summary of this run (on the scene size printed at the top):

# %%
for label, seconds in [
    ("design array (Sparse3D ufuncs)", t_ufuncs),
    ("design array (NumPy first)", t_numpy_first),
    ("model image (L.dot)", t_dot),
    ("L.tocsr()", t_csr),
    ("fit (spsolve)", t_fit),
    ("two weighted fits + errors (L.fit)", t_lfit),
]:
    print(f"{label:<36} {seconds:8.3f} s")
