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
# # A time series on Dask
#
# A telescope that stares at a star field returns the same field again and again: a stack of
# frames `(H, W, k)`. The quantity of interest is the **light curve** of every star, its
# brightness in each frame, an array `(nsources, k)` that is tiny next to the frames.
#
# With `Sparse3D` the model of every frame is `S.dot(lightcurves)`, and the fit of every frame
# shares one design matrix, so one factorisation of the normal matrix serves all frames. What
# does not fit in memory is the stack of frames itself: 200 frames of 1024 × 1024 pixels are
# 1.6 GB in float64, and a real survey has thousands. [Dask](https://docs.dask.org) cuts the
# frames into chunks along time and streams them through the same code: `S.dot`, `np.dot`,
# `np.tensordot`, `xr.dot` and `S.fit` accept Dask arrays and return Dask arrays.
#
# Install the extra with `pip install "sparse3d[dask]"`.

# %%
import os

import dask
import dask.array as da
import matplotlib.pyplot as plt
import numpy as np
from dask.distributed import Client, LocalCluster

from sparse3d import Sparse3D
from sparse3d.dask import SourceChunked

# %% [markdown]
# ## A cluster
#
# `LocalCluster` starts a scheduler and worker processes on this machine. On a real cluster
# you would connect to its scheduler instead, and nothing else in this notebook changes:
#
# ```python
# client = Client("tcp://scheduler-address:8786")
# ```
#
# (set `SPARSE3D_DASK_SCHEDULER` to try that here). The dashboard shows the tasks as they run.
#
# Worker processes are started by re-importing the main program, so a plain Python *script*
# that starts a `LocalCluster` of processes needs its work under `if __name__ == "__main__":`.
# A notebook does not; when this file runs as a script, it uses threads instead.

# %%
address = os.environ.get("SPARSE3D_DASK_SCHEDULER")
if address:
    client = Client(address)
else:
    in_notebook = "__file__" not in globals()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=in_notebook)
    client = Client(cluster)
print("dashboard:", client.dashboard_link)

# %% [markdown]
# ## The star field
#
# Stars are scattered uniformly over the image, each with a Gaussian point spread function
# sampled on a 9 × 9 stamp around its position. The environment variables
# `SPARSE3D_TUTORIAL_IMSIZE`, `SPARSE3D_TUTORIAL_NSOURCES` and `SPARSE3D_TUTORIAL_NFRAMES`
# shrink the problem (the rendered documentation uses a small one).

# %%
imsize = int(os.environ.get("SPARSE3D_TUTORIAL_IMSIZE", 1024))
nsources = int(os.environ.get("SPARSE3D_TUTORIAL_NSOURCES", 20_000))
nframes = int(os.environ.get("SPARSE3D_TUTORIAL_NFRAMES", 200))
imshape = (imsize, imsize)

rng = np.random.default_rng(4)
star_row, star_col = rng.uniform(0, imsize, size=(2, nsources))
brightness = 10 ** rng.normal(1, 0.8, size=nsources)
R, C = np.mgrid[-4:5, -4:5]
row = R[:, :, None] + np.floor(star_row).astype(int)
col = C[:, :, None] + np.floor(star_col).astype(int)


def gaussian_psf(drow, dcol, sigma=1.2):
    """PSF values on the stamp; ``drow``/``dcol`` are stamp pixel offsets from the star."""
    return np.exp(-(drow**2 + dcol**2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)


S = Sparse3D(gaussian_psf(row - star_row, col - star_col), row, col, imshape)
print(S, f"{S.nbytes / 2**20:.0f} MiB of stamps")

# %% [markdown]
# ## Light curves and frames, lazily
#
# Every star gets a constant brightness; some vary sinusoidally and a few dim briefly, as a
# planet passing in front of them would. A few numbers per star describe its light curve, and
# `light_curves(t)` evaluates all of them at some times. Dask calls it once per chunk of 20
# frames, so the light curves `w`, `(nsources, k)`, are a **lazy** Dask array chunked along
# time. (Wrapping a NumPy array of all light curves with `da.from_array` would work too, but
# would put its 30 MiB into every task graph sent to the cluster: generate data where it is
# used, or `client.scatter` it once.) `S.dot` turns `w` into a lazy model cube; noise is
# added chunk by chunk. Nothing has been computed yet: `frames` is a recipe.

# %%
variable = rng.random(nsources) < 0.2
period = rng.uniform(10, 80, size=nsources)
transiting = rng.choice(nsources, size=max(1, nsources // 100), replace=False)
transit_start = np.full(nsources, -nframes)  # before the first frame: no transit
transit_start[transiting] = rng.integers(0, max(1, nframes - 15), size=transiting.size)


def light_curves(t):
    """Brightness of every star at the frame times ``t``: ``(nsources, len(t))``."""
    lc = np.repeat(brightness[:, None], len(t), axis=1)
    lc[variable] *= 1 + 0.3 * np.sin(2 * np.pi * t / period[variable, None])
    lc[(t >= transit_start[:, None]) & (t < transit_start[:, None] + 12)] *= 0.7
    return lc


t = np.arange(nframes)
t_chunks = da.arange(nframes, chunks=20)
w = t_chunks.map_blocks(light_curves, new_axis=0, chunks=((nsources,), t_chunks.chunks[0]), dtype=float)
model = S.dot(w)  # lazy (H, W, k), chunked like w along time
noise_level = 0.5


def add_noise(block, block_info=None):
    first = block_info[0]["array-location"][2][0]  # frame index of the block, for reproducibility
    rng = np.random.default_rng(first)
    return block + rng.normal(scale=noise_level, size=block.shape)


frames = model.map_blocks(add_noise, dtype=model.dtype)
frames

# %% [markdown]
# The Sparse3D went into the task graph once, as a single key that every chunk's task refers
# to. With a distributed client active, a large array is not put into the graph at all: it is
# scattered to the cluster once (`client.scatter`), and the graph holds its future. Every
# `compute` below reuses it, and the graphs sent to the scheduler stay small (no "Sending large
# graph" warning). The fit's factorised solver is shipped the same way.
#
# A quick look at one frame computes only the chunk holding it:

# %%
frame0 = frames[:, :, 0].compute()
fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(np.arcsinh(frame0), origin="lower", cmap="Greys_r")
ax.set(title="frame 0 (arcsinh stretch)", xlabel="column", ylabel="row")
plt.show()

# %% [markdown]
# ## Fitting every frame
#
# `S.fit` on Dask frames builds and factorises the normal matrix once, on the client, and
# ships the factorised solver to the workers as one graph key; each chunk of frames is one
# task that solves for its light-curve values and its chi-square. The weights come back lazy,
# `(nsources, k)` chunked like the frames.

# %%
errors = np.full(imshape, noise_level)  # one noise map, shared by every frame
res = S.fit(frames, errors=errors)
print(res.weights)
res = res.compute()  # streams the frames through the workers; only light curves return
print("fitted light curves:", res.weights.shape)
print("median chi-square per pixel:", np.median(res.chi2 / res.n_pixels))

# %% [markdown]
# The fit recovers the injected light curves to within the uncertainties `res.weights_err`
# (one per star: every frame has the same noise map).

# %%
lightcurves = light_curves(t)  # the truth, for comparison
pull = (res.weights - lightcurves) / res.weights_err[:, None]
print(f"pulls: mean {pull.mean():.3f}, std {pull.std():.3f}")

show = [transiting[0], *np.flatnonzero(variable & (brightness > np.median(brightness)))[:2]]
fig, axes = plt.subplots(len(show), 1, figsize=(8, 2.2 * len(show)), sharex=True)
for ax, i in zip(np.atleast_1d(axes), show):
    ax.errorbar(t, res.weights[i], res.weights_err[i], fmt=".", ms=3, label="fitted")
    ax.plot(t, lightcurves[i], "k-", lw=1, label="injected")
    ax.set_ylabel(f"star {i}")
np.atleast_1d(axes)[0].legend(loc="upper right")
np.atleast_1d(axes)[-1].set_xlabel("frame")
plt.show()

# %% [markdown]
# ## Scenes too big for one machine
#
# Above, the stamps themselves (`S`) fit in memory and only the frames were streamed. When
# the stamps do not fit either, `SourceChunked.from_function` computes them chunk by chunk
# from per-source parameters, on the workers; `persist()` keeps the chunks in the cluster's
# memory, and `dot` sums the chunk images lazily (tutorial 8 *fits* such a scene, tile by
# tile on the workers). Here the same Gaussian stars in chunks of a few thousand:

# %%
star_row_d = da.from_array(star_row, chunks=max(1, nsources // 4))
star_col_d = da.from_array(star_col, chunks=max(1, nsources // 4))


def stamps(star_row, star_col):
    drow = R[:, :, None] + np.floor(star_row).astype(int) - star_row
    dcol = C[:, :, None] + np.floor(star_col).astype(int) - star_col
    return gaussian_psf(drow, dcol)


SC = SourceChunked.from_function(
    stamps,
    {"star_row": star_row_d, "star_col": star_col_d},
    row=R[:, :, None] + da.floor(star_row_d).astype(int),
    col=C[:, :, None] + da.floor(star_col_d).astype(int),
    imshape=imshape,
    chunks=max(1, nsources // 4),
).persist()
print(SC)
totals_chunked, totals = dask.compute(SC.dot(w).sum(axis=(0, 1)), model.sum(axis=(0, 1)))
print("same per-frame totals as the in-memory scene:", np.allclose(totals_chunked, totals))

# %%
client.close()
