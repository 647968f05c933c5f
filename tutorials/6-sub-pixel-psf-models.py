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
# # Sub-pixel PSF models, fractional shifts and derivative stamps
#
# The first tutorial ends: *"In reality, we won't actually know the PSF model, or the exact
# location of the stars."* This notebook is about that. `sparse3d.psf` builds the design of a
# scene from **float** star positions and a PSF model, together with the **derivative** of
# every star's model with respect to its position; `Sparse3D.shift` moves stamps by a
# fraction of a pixel when only their values are known; `np.gradient` differentiates across
# the stamps.
#
# **Pixel convention.** Integer coordinates are pixel *centres*: pixel `(r, c)` covers
# `[r - ½, r + ½] × [c - ½, c + ½]`, and a star at `row = 10.0` sits in the middle of pixel
# row 10. Each stamp is centred on the star's nearest pixel (`floor(row + 0.5)`, ties go up);
# an even stamp (10 pixels) spans offsets `-5 … 4`, like the first tutorial's
# `np.mgrid[:10] - 5`.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from sparse3d.psf import Gaussian, ImagePSF, IntegratedGaussian, Moffat

# %% [markdown]
# ## A crowded field with a PSF that changes across it
#
# An elliptical Moffat profile whose width grows towards one corner of a 128 × 128 image (the
# environment variables `SPARSE3D_TUTORIAL_IMSIZE`, `SPARSE3D_TUTORIAL_NSOURCES` and
# `SPARSE3D_TUTORIAL_NFRAMES` change the size). Every shape parameter can be a number or one
# value per star.

# %%
imsize = int(os.environ.get("SPARSE3D_TUTORIAL_IMSIZE", 128))
nsources = int(os.environ.get("SPARSE3D_TUTORIAL_NSOURCES", 400))
nframes = int(os.environ.get("SPARSE3D_TUTORIAL_NFRAMES", 50))
imshape = (imsize, imsize)

rng = np.random.default_rng(6)
row, col = rng.uniform(0, imsize, size=(2, nsources))  # sub-pixel positions
brightness = 10 ** rng.normal(2.5, 0.6, size=nsources)

alpha = 3.5 + 1.0 * (row + col) / (2 * imsize)  # the PSF widens across the field (FWHM 3.3-4.3 px)
psf = Moffat(alpha=alpha, beta=3.5, ratio=0.8, theta=0.5)
psf

# %%
L, d = psf.design(row, col, imshape, stamp_shape=(19, 19), derivatives=("row", "col"))
L, d["row"]

# %% [markdown]
# `L` is the usual `(H, W, nsources)` design; `d["row"]` and `d["col"]` have **the same stamps**
# (the same structure object, so they cost no extra index arrays), and hold `∂L/∂row₀`,
# `∂L/∂col₀`: how each star's model changes when the star moves.

# %%
k = int(np.argmax(brightness))
fig, axs = plt.subplots(1, 3, figsize=(11, 3.4))
for ax, (title, A) in zip(axs, [("L", L), ("dL/drow", d["row"]), ("dL/dcol", d["col"])]):
    stamp = A.data[:, :, k]
    lim = np.abs(stamp).max()
    ax.imshow(stamp, cmap="RdBu_r" if title != "L" else "viridis", vmin=-lim if title != "L" else 0, vmax=lim)
    ax.set_title(f"{title}, star {k}")
plt.tight_layout()

# %%
image = L.dot(brightness)
plt.figure(figsize=(5, 5))
plt.imshow(image, origin="lower", vmax=np.percentile(image, 99.5))
plt.title("Model image")
print(f"each stamp sums to {L.sum(axis=(0, 1)).mean():.3f} on average (Moffat wings and image edges)")

# %% [markdown]
# ## Jitter: moving the scene by a fraction of a pixel
#
# A telescope never points perfectly: from frame to frame the whole scene moves by a fraction
# of a pixel. Three ways to model a moved scene:
#
# 1. re-evaluate the PSF at the moved positions (exact, but a full model evaluation per frame),
# 2. `L.shift((drow, dcol))`: resample the stamps we already have (band-limited interpolation
#    inside each stamp; the whole-pixel part moves the stamps exactly like `translate`),
# 3. linearise: `L + drow · ∂L/∂row₀ + dcol · ∂L/∂col₀` — first order in the move, and linear
#    in it, which is what a fit needs.

# %%
jitter = rng.normal(0, 0.25, size=(nframes, 2))

t0 = time.perf_counter()
exact = [psf.design(row + dr, col + dc, imshape, (19, 19)).dot(brightness) for dr, dc in jitter]
t_exact = time.perf_counter() - t0

t0 = time.perf_counter()
shifted = [L.shift((dr, dc)).dot(brightness) for dr, dc in jitter]
t_shift = time.perf_counter() - t0

img_row, img_col = d["row"].dot(brightness), d["col"].dot(brightness)
t0 = time.perf_counter()
linear = [image + dr * img_row + dc * img_col for dr, dc in jitter]
t_linear = time.perf_counter() - t0

peak = image.max()
for name, frames, t in [("re-evaluated", exact, t_exact), ("L.shift", shifted, t_shift), ("linearised", linear, t_linear)]:
    err = max(np.abs(f - e).max() for f, e in zip(frames, exact)) / peak
    print(f"{name:>13}: {t:6.3f} s for {nframes} frames, max error {err:.1e} of the brightest pixel")

# %% [markdown]
# The shift is accurate to about a percent of the peak; the linearisation is cheapest but its
# error grows as the square of the move. The shift's error is the aliasing of the *sampled*
# PSF, so it depends on how well the pixels sample it: ≤ 7e-3 of the peak for a Gaussian of
# σ = 1 px, 1e-5 at σ = 1.5 px; a Moffat's sharper core needs α ≳ 3.5 px (FWHM ≳ 3.3 px at
# β = 3.5) for 1e-2, and errs by ~6 % at α = 2.5 px. For narrower PSFs, re-evaluate the model. Its strength is fitting: a frame's jitter is the
# solution of a two-parameter linear least-squares problem.

# %%
noise = 3.0
frames = np.stack(exact, axis=-1) + rng.normal(0, noise, size=(*imshape, nframes))
A = np.stack([img_row.ravel(), img_col.ravel()], axis=1)
resid = (frames - image[:, :, None]).reshape(-1, nframes)
fitted = np.linalg.lstsq(A, resid, rcond=None)[0].T  # (nframes, 2), one Gauss-Newton step

fig, ax = plt.subplots(figsize=(4.5, 4.5))
ax.scatter(jitter[:, 0], fitted[:, 0], s=12, label="row")
ax.scatter(jitter[:, 1], fitted[:, 1], s=12, label="col")
ax.plot([-0.8, 0.8], [-0.8, 0.8], "k--", lw=1)
ax.set(xlabel="true jitter (px)", ylabel="fitted jitter (px)", title="One linearised step")
ax.legend()
print(f"rms error of the fitted jitter: {np.sqrt(np.mean((fitted - jitter) ** 2)):.3f} px")

# %% [markdown]
# One step from the un-moved model is already close; a Gauss–Newton iteration would rebuild
# `L, d` at the updated positions (or `L.shift` them) and repeat. The same concatenated
# design, `np.concatenate([L, d["row"], d["col"]], axis=2)`, fits brightnesses and per-star
# position offsets at once.

# %% [markdown]
# ## An image PSF
#
# A PSF often comes as an oversampled image (from a PSF model of the instrument, or built
# from bright stars). `ImagePSF` takes it with photutils' conventions: `oversampling` samples
# per pixel, the star at the array's centre, values not rescaled (for unit flux the array sums
# to `oversampling²`). It is evaluated by cubic-spline interpolation, and its position
# derivatives come from the same spline.

# %%
os_ = 4
y = (np.arange(4 * 15 + 1) - 30) / os_  # ±7.5 px, 4 samples per pixel
yy, xx = np.meshgrid(y, y, indexing="ij")
# any array works; here a Gaussian of σ = 1.2 px, so that we can check the result
psf_image = np.exp(-(yy**2 + xx**2) / (2 * 1.2**2)) / (2 * np.pi * 1.2**2)
print("PSF image", psf_image.shape, "sums to", round(psf_image.sum(), 3))

image_psf = ImagePSF(psf_image, oversampling=os_)
Li, di = image_psf.design(row, col, imshape, (11, 11), derivatives=("row", "col"))
Lg, dg = Gaussian(1.2).design(row, col, imshape, (11, 11), derivatives=("row", "col"))
print(f"image PSF vs analytic: max difference {np.abs(Li.data - Lg.data).max() / Lg.data.max():.1e} of the peak")
print(f"d/drow:                 max difference {np.abs(di['row'].data - dg['row'].data).max() / np.abs(dg['row'].data).max():.1e}")

# %% [markdown]
# A PSF that varies across the detector comes as several images at reference positions:
# `GriddedPSF(images, grid_positions, oversampling)` blends the four around each star
# bilinearly, like photutils' `GriddedPSFModel`.
#
# ## Undersampled detectors
#
# For Kepler- or TESS-like pixels (PSF σ ≲ 1 px) sampling the profile at pixel centres is
# wrong: use `IntegratedGaussian`, whose values are the flux falling in each pixel.

# %%
for sigma in (0.5, 1.0, 2.0):
    centre = IntegratedGaussian(sigma).design([5.0], [5.0], (11, 11), (11, 11)).data[5, 5, 0]
    sampled = Gaussian(sigma).design([5.0], [5.0], (11, 11), (11, 11)).data[5, 5, 0]
    print(f"sigma={sigma}: centre pixel holds {centre:.3f} of the flux; sampling the profile says {sampled:.3f}")

# %% [markdown]
# ## Derivatives across stamps with NumPy
#
# `np.gradient(S, axis=0)` (or `axis=1`, `axis=(0, 1)`) differentiates each stamp block and
# keeps the structure — the finite-difference cousin of the analytic `d["row"]` (note the sign:
# moving the star down the rows is moving the pixels up).

# %%
g_row = np.gradient(L, axis=0)
print(type(g_row).__name__, g_row.shape, "same stamps:", np.array_equal(g_row.row, L.row))
print("corr(np.gradient, -dL/drow) =", round(np.corrcoef(g_row.data.ravel(), -d["row"].data.ravel())[0, 1], 4))
