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
# # Fitting a time series of frames
#
# A camera staring at a field of stars returns a stack of frames `(H, W, k)`. Each star has a
# brightness in each frame: its **light curve**, an array `(nsources, k)`. With a design array
# `S` of shape `(H, W, nsources)` the whole stack is one linear model,
#
# ```python
# frames = S @ lightcurves          # (H, W, nsources) @ (nsources, k) -> (H, W, k)
# ```
#
# and `S.fit(frames)` inverts it for every frame at once. The normal matrix `Sᵀ S` is the same
# for every frame, so it is built and factorised **once**: fitting 100 frames costs little
# more than fitting one.
#
# The second half of this notebook does the same with **regions of interest**: what missions
# such as Kepler and TESS download is not the full frame but small windows around their
# targets.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

from sparse3d import Sparse3D

# %% [markdown]
# ## The scene
#
# Gaussian stars on the tutorial's 1024 × 1024 image (the environment variables
# `SPARSE3D_TUTORIAL_IMSIZE`, `SPARSE3D_TUTORIAL_NSOURCES` and `SPARSE3D_TUTORIAL_NFRAMES`
# make it smaller).

# %%
imsize = int(os.environ.get("SPARSE3D_TUTORIAL_IMSIZE", 1024))
nsources = int(os.environ.get("SPARSE3D_TUTORIAL_NSOURCES", 50_000))
nframes = int(os.environ.get("SPARSE3D_TUTORIAL_NFRAMES", 100))
imshape = (imsize, imsize)

rng = np.random.default_rng(11)
brightness = 10 ** rng.normal(1.5, 1.0, size=nsources)
pos_row, pos_col = rng.uniform(0, imsize, size=(2, nsources))
row_int, col_int = np.floor(pos_row).astype(int), np.floor(pos_col).astype(int)
R, C = np.mgrid[:10, :10] - 5
dr = R[:, :, None] - (pos_row - row_int)
dc = C[:, :, None] - (pos_col - col_int)
S = Sparse3D(
    np.exp(-0.5 * (dr**2 + dc**2)) / (2 * np.pi), R[:, :, None] + row_int, C[:, :, None] + col_int, imshape
)
S

# %% [markdown]
# ## Light curves and the model cube
#
# Most stars are constant; a few vary: some pulsate (a sine, ±20 %), some are eclipsed (a
# 40 % dip). A change is only visible if it is much larger than the star's measurement error,
# so we make variable stars of the ones that can be measured most precisely.
#
# The errors come from photon noise plus a read noise of 3 counts: one error map for all
# frames. The uncertainty of a fitted brightness depends only on the design array and the
# error map, not on the data, so it is known before any frame is taken: fitting the noiseless
# mean image gives it. Faint stars, and stars blended with a brighter neighbour, have relative
# errors of tens of percent (their light curves would be noise); the 30 with the smallest
# relative error are the candidates.

# %%
read_noise = 3.0
errors = np.sqrt(np.clip(S.dot(brightness), 0, None) + read_noise**2)  # one error map for all frames
expected_err = S.fit(S.dot(brightness), errors=errors).weights_err
candidates = np.argsort(expected_err / brightness)[:30]
print(f"relative error of the candidates: {(expected_err / brightness)[candidates].max():.1%} at most")

t = np.linspace(0, 10, nframes)
lightcurves = np.repeat(brightness[:, None], nframes, axis=1)
pulsating, eclipsing = rng.choice(candidates, size=(2, 5), replace=False)
for i in pulsating:
    lightcurves[i] *= 1 + 0.2 * np.sin(2 * np.pi * t / rng.uniform(1, 4))
for i in eclipsing:
    lightcurves[i] *= 1 - 0.4 * (np.abs(t - rng.uniform(2, 8)) < 0.6)

t0 = time.perf_counter()
cube = S @ lightcurves  # (H, W, nframes)
print(f"model cube {cube.shape} in {time.perf_counter() - t0:.2f} s")

# %% [markdown]
# Noisy frames: photon noise plus a read noise of 3 counts.

# %%
frames = rng.poisson(np.clip(cube, 0, None)) + rng.normal(0, read_noise, size=cube.shape)

fig, ax = plt.subplots(figsize=(6, 6))
ax.imshow(frames[:, :, 0], vmin=0, vmax=50, origin="lower")
ax.set(title="frame 0", xlabel="column", ylabel="row")
plt.show()

# %% [markdown]
# ## One fit for every frame
#
# `errors` has the shape of one image, so it is shared by all frames: the weighted normal
# matrix is factorised once. `weights_err` is the exact 1-σ from the diagonal of the inverse
# normal matrix (computed by selected inversion, never a dense inverse).

# %%
t0 = time.perf_counter()
one = S.fit(frames[:, :, 0], errors=errors)
t_one = time.perf_counter() - t0
t0 = time.perf_counter()
res = S.fit(frames, errors=errors)
t_all = time.perf_counter() - t0
print(f"one frame: {t_one:.2f} s; {nframes} frames: {t_all:.2f} s ({t_all / t_one:.1f}x one frame)")
print("weights", res.weights.shape, "factorisations:", res.n_factorizations)

# %%
pull = (res.weights - lightcurves) / res.weights_err[:, None]
print(f"pull (fit - truth) / error: mean {pull.mean():.3f}, std {pull.std():.3f} (1 is ideal)")

# %% [markdown]
# ## Recovered light curves
#
# How far above the noise is each variable star's signal? The peak-to-peak change of the true
# light curve in units of the fitted 1-σ error (well above 1: the variability is visible):

# %%
variable = np.concatenate([pulsating, eclipsing])
signal = np.ptp(lightcurves[variable], axis=1) / res.weights_err[variable]
print("peak-to-peak / error:", np.round(signal, 1))

# %%
fig, axs = plt.subplots(2, 5, figsize=(14, 5), sharex=True)
for ax, i in zip(axs.ravel(), variable):
    ax.errorbar(t, res.weights[i], res.weights_err[i], fmt=".", ms=3, c="k", lw=0.5)
    ax.plot(t, lightcurves[i], c="r", lw=1)
    ax.set_title(f"star {i}", fontsize=9)
for ax in axs[-1]:
    ax.set_xlabel("time")
fig.suptitle("fitted (black) and true (red) light curves")
fig.tight_layout()

# %% [markdown]
# ## Regions of interest
#
# Suppose only 11 × 11 windows around 200 bright targets were downloaded. `S.roi(corners,
# size)` maps the stamps onto those windows once; stars whose stamps touch no window cost
# nothing. `roi.dot` gives the model in the window layout `(nrois, h, w[, k])`, and
# `roi.fit` fits data given in that layout.
#
# Neighbours that only spill a pixel or two into a window can be indistinguishable from each
# other (the fit refuses with `SingularNormalMatrixError`, naming them). A catalogue prior, a
# broad Gaussian around each star's catalogue brightness, keeps the problem well posed; stars
# that touch no window simply get their prior back.

# %%
targets = np.argsort(brightness)[-200:]
corners = np.stack([row_int[targets] - 5, col_int[targets] - 5], axis=1)
roi = S.roi(corners, size=(11, 11))
print(roi, "elements inside the windows:", roi.nnz)

# the "downloaded" pixels: the windows of every frame
tpf = roi.dot(lightcurves) + rng.normal(0, read_noise, size=(len(corners), 11, 11, nframes))
roi_fit = roi.fit(tpf, prior_mu=brightness, prior_sigma=brightness)
print("weights", roi_fit.weights.shape, "model", roi_fit.model.shape)

# %%
fig, axs = plt.subplots(1, 3, figsize=(12, 3.5))
for ax, i in zip(axs, targets[-3:]):
    ax.plot(t, roi_fit.weights[i], ".k", ms=3, label="fit from windows")
    ax.plot(t, lightcurves[i], c="r", lw=1, label="truth")
    ax.set(title=f"target {i}", xlabel="time")
axs[0].legend()
fig.tight_layout()

# %% [markdown]
# The windows also have an xarray view with a `roi` dimension and absolute pixel
# coordinates:

# %%
roi.to_xarray().isel(roi=0).sum("source")
