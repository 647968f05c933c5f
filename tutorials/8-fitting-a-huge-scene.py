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
# # Fitting a huge scene on a cluster
#
# Tutorial 4 scaled out the *frames*: many images of one scene, fitted with one factorisation.
# Here one *scene* is the problem: a survey mosaic with millions of stars, whose stamps, design
# matrix and image do not fit in one process. `SourceChunked.fit` fits such a scene on a Dask
# cluster, and returns the same fluxes and errors as the eager `S.fit` (within a small fraction
# of each error bar), without any process holding the whole design matrix, normal matrix or
# image.
#
# **When to use it.** When the scene does not fit in one process (the eager fit of 200,000
# sources with 10 × 10 stamps needs about 2 GiB; memory grows linearly with the sources), or
# when the image is already on the workers. Below that, `S.fit` is simpler and faster.
#
# **How it works.** The image is cut into tiles. Each source belongs to the tile holding its
# stamp centre; each tile also holds the sources within a *halo* of it (at least one stamp
# wide, two by default), so that the light of its neighbours is accounted for. A worker
# builds each tile's normal matrix and factorises it once. Then conjugate gradients solve
# the *global* normal equations: every matrix-vector product is computed tile by tile, and
# each tile's factorisation serves as the preconditioner. The start is every tile's own fit
# with its halo, which is already close; a few iterations remove what crosses the halos.
# The 1-σ errors come from each tile's factorisation: correlations between fluxes die out
# within a stamp or two, so they equal the global ones to a fraction of a per cent.
#
# **What it costs.** Each tile's factorisation is the eager fit's work on slightly more
# sources (the halo); each iteration moves one vector of fluxes to the workers and back, twice.
# The client holds only vectors of `nsources` numbers.

# %%
import os
import warnings

import dask.array as da
import matplotlib.pyplot as plt
import numpy as np
from dask.distributed import LocalCluster

from sparse3d import Sparse3D
from sparse3d.dask import SourceChunked

# %% [markdown]
# ## A cluster, here or elsewhere
#
# The fit runs on the default `dask.distributed` client, or on the one passed as `client=`:
# a `Client`, or the address of a running scheduler as a string,
# `S.fit(..., client="tcp://scheduler-host:8786")`. The workers need `sparse3d` installed;
# nothing else changes. Here a `LocalCluster` of two worker processes stands in for the
# cluster (threads when this file runs as a plain script), and we pass its *address*,
# exactly as for a remote one. Set `SPARSE3D_DASK_SCHEDULER` to use a real cluster.

# %%
address = os.environ.get("SPARSE3D_DASK_SCHEDULER")
if not address:
    in_notebook = "__file__" not in globals()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=in_notebook, dashboard_address=None)
    address = cluster.scheduler_address
print("scheduler:", address)

# %% [markdown]
# ## A scene whose stamps are made on the workers
#
# The stars' positions are small (two numbers each) and can live on the client; their stamps
# are a hundred numbers each and are computed chunk by chunk on the workers with
# `SourceChunked.from_function`. (`SPARSE3D_TUTORIAL_IMSIZE` and `SPARSE3D_TUTORIAL_NSOURCES`
# shrink the scene; the rendered documentation uses a small one.)

# %%
imsize = int(os.environ.get("SPARSE3D_TUTORIAL_IMSIZE", 1024))
nsources = int(os.environ.get("SPARSE3D_TUTORIAL_NSOURCES", 50_000))
imshape = (imsize, imsize)

rng = np.random.default_rng(8)
star_row, star_col = rng.uniform(0, imsize, size=(2, nsources))
flux = 10 ** rng.uniform(1, 3, size=nsources)
R, C = np.mgrid[-4:5, -4:5]  # 9 x 9 stamps
row = R[:, :, None] + np.floor(star_row).astype(int)
col = C[:, :, None] + np.floor(star_col).astype(int)


def psf(row_phase, col_phase, sigma=1.2):
    """A Gaussian PSF on the stamp, for stars at sub-pixel phases ``row_phase``, ``col_phase``."""
    return np.exp(-((R[:, :, None] - row_phase) ** 2 + (C[:, :, None] - col_phase) ** 2) / (2 * sigma**2))


params = {"row_phase": star_row % 1, "col_phase": star_col % 1}
SC = SourceChunked.from_function(psf, params, row, col, imshape, chunks=max(1, nsources // 8))
SC

# %% [markdown]
# An image to fit: here we simulate it from the same stamps (with the eager `Sparse3D`, since
# the tutorial scene is small) and add unit noise. In real use the image would be a Dask array
# read on the workers, e.g. `da.from_zarr(...)`: `SC.fit` cuts it into tiles there.

# %%
S = Sparse3D(psf(params["row_phase"], params["col_phase"]), row, col, imshape)
image = S.dot(flux) + rng.normal(size=imshape)
data = da.from_array(image, chunks=imsize // 4)

# %% [markdown]
# ## The fit
#
# `tile_size` sets the tiles (here a 4 × 4 grid), `halo` the border, in pixels, each tile also
# sees (default: two stamps). `tol` stops the iteration when the estimated remaining change of
# every flux is below that fraction of its error bar.

# %%
res = SC.fit(data, tile_size=imsize // 4, client=address)
print(f"{res.n_tiles} tiles, {res.n_iterations} iterations, converged: {res.converged}")
print({k: f"{v:.1f} s" for k, v in res.timings.items()})

# %% [markdown]
# ## Is it the eager fit?
#
# On a scene this small the eager fit is possible, so we compare: each flux's difference in
# units of its error bar, and the ratio of the errors.

# %%
eager = S.fit(image)
dw = np.abs(res.weights - eager.weights) / eager.weights_err
ratio = res.weights_err / eager.weights_err
print(f"largest |Δflux| / σ: {np.nanmax(dw):.1e}")
print(f"errors: ratio in [{np.nanmin(ratio):.6f}, {np.nanmax(ratio):.6f}]")

fig, ax = plt.subplots(1, 2, figsize=(10, 4))
ax[0].loglog(flux, res.weights, ".", ms=2)
ax[0].set(xlabel="true flux", ylabel="fitted flux (distributed)")
ax[1].hist(np.log10(dw[np.isfinite(dw)] + 1e-12), bins=50)
ax[1].set(xlabel="log10 |distributed − eager| / σ", ylabel="sources")
fig.tight_layout()

# %% [markdown]
# ## Frame stacks, errors, masks and priors
#
# `SC.fit` takes frames `(H, W, k)` as well (one error map `(H, W)` shared by every frame: the
# tiles factorise once and all frames iterate together), a `mask` of pixels to ignore and
# Gaussian priors, as `S.fit` does.

# %%
frames = da.stack([data, data * 1.1], axis=-1)
errors = np.ones(imshape)
stacked = SC.fit(frames, errors=errors, tile_size=imsize // 4, client=address)
print(stacked.weights.shape, np.nanmedian(stacked.weights[:, 1] / stacked.weights[:, 0]))

# %% [markdown]
# ## Measured at scale
#
# `benchmarks/distributed_fit.py` fits a 16384 × 16384 image with 2,000,000 stars (10 × 10
# stamps) on two local worker processes, with the scene generated on the workers; the README
# lists the numbers (wall time, memory of the client and of each worker, time per source
# against the eager fit of 200,000 stars).

# %%
if "cluster" in globals():
    cluster.close()
