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
# # Exploring a model with xarray
#
# [xarray](https://docs.xarray.dev) puts names and coordinates on array axes. A `Sparse3D`
# offers two labeled views of itself:
#
# * the **image view**, `S.to_xarray()`: dims `("row", "col", "source")` with *absolute* pixel
#   coordinates. It wraps the `Sparse3D` itself, so nothing is densified; selections and
#   reductions go through the same stamp-aware code as plain NumPy calls;
# * the **stamp view**, `S.to_xarray(view="stamps")`: the dense stamp values with dims
#   `("stamp_row", "stamp_col", "source")`, plus `row`/`col` coordinates giving the absolute
#   position of every stamp pixel. This is the one to plot stamps from and to save to disk.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from sparse3d import Sparse3D

# %% [markdown]
# ## A star field
#
# We build Gaussian stamps the same way as in the astronomy tutorial, on the same scene size
# (1024 × 1024 pixels, 50,000 stars; the same environment variables resize it).

# %%
imsize = int(os.environ.get("SPARSE3D_TUTORIAL_IMSIZE", 1024))
nsources = int(os.environ.get("SPARSE3D_TUTORIAL_NSOURCES", 50_000))
imshape = (imsize, imsize)
sigma, stamp_size = 1.5, 12

rng = np.random.default_rng(7)
brightness = 10 ** rng.normal(1, 0.8, size=nsources)
pos_row, pos_col = rng.uniform(0, imsize, size=(2, nsources))
row_int, col_int = np.floor(pos_row).astype(int), np.floor(pos_col).astype(int)

R, C = np.mgrid[:stamp_size, :stamp_size] - stamp_size // 2
row3d, col3d = R[:, :, None] + row_int, C[:, :, None] + col_int
dr = R[:, :, None] - (pos_row - row_int)
dc = C[:, :, None] - (pos_col - col_int)
psf = np.exp(-0.5 * (dr**2 + dc**2) / sigma**2) / (2 * np.pi * sigma**2)

S = Sparse3D(psf, row3d, col3d, imshape=imshape) * brightness  # each stamp scaled by its star
S

# %% [markdown]
# ## The image view
#
# Give the sources meaningful labels (here catalogue-style names) and a name for the array:

# %%
names = np.array([f"star-{k:05d}" for k in range(nsources)])
img = S.to_xarray(sources=names, name="flux")
img

# %% [markdown]
# The underlying data is still the `Sparse3D`:

# %%
type(img.data).__name__, img.attrs

# %% [markdown]
# ### Summing over sources
#
# Reducing over `source` adds up every star into a model image, a plain dense DataArray with
# `row` and `col` coordinates:

# %%
model = img.sum("source")
model

# %%
fig, ax = plt.subplots(figsize=(6, 5))
model.plot.imshow(ax=ax, origin="lower", cmap="Greys_r", vmin=0, vmax=float(model.quantile(0.99)))
ax.set_title("Model image: img.sum('source')")
# %% [markdown]
# The total flux per star is the sum over the two pixel dims. Stars close to the edge lose
# the part of their stamp that falls off the image:

# %%
per_star = img.sum(["row", "col"])
(per_star / brightness).to_series().describe()

# %% [markdown]
# ### Cutouts with `sel` and `isel`
#
# Label-based selection uses absolute pixel coordinates (and, as always in xarray, includes
# both ends of a slice). Slicing `row` and `col` gives a cutout: still a lazy view on a
# `Sparse3D`, now with a smaller image window.

# %%
r0, c0 = imsize // 4, imsize // 4
cut = img.sel(row=slice(r0, r0 + 63), col=slice(c0, c0 + 63))
print(type(cut.data).__name__, cut.data.imshape, "imcorner:", cut.data.imcorner)
cut.coords["row"].values[[0, -1]]

# %%
fig, ax = plt.subplots(figsize=(5, 4.5))
cut.sum("source").plot.imshow(ax=ax, origin="lower", cmap="Greys_r", robust=True)
ax.set_title("A 64 x 64 cutout")
# %% [markdown]
# Selecting sources works by label or by position, and keeps the array sparse:

# %%
brightest = names[np.argsort(brightness)[-5:]]
img.sel(source=brightest)

# %%
img.isel(source=slice(0, 10)).data

# %% [markdown]
# ## The stamp view
#
# The stamp view holds the stored values themselves, `(stamp_row, stamp_col, source)`,
# with the absolute `row` and `col` of every stamp pixel as coordinates:

# %%
stamps = S.to_xarray(view="stamps", sources=names, name="flux")
stamps

# %% [markdown]
# Plotting one stamp against its absolute pixel coordinates places it where it sits in the
# image:

# %%
star = brightest[-1]
fig, ax = plt.subplots(figsize=(5, 4.5))
stamps.sel(source=star).plot(ax=ax, x="col", y="row", cmap="magma")
ax.set_title(f"The stamp of {star}")
# %% [markdown]
# Per-source statistics on the stamps are ordinary xarray code, e.g. the peak value of
# every stamp:

# %%
stamps.max(["stamp_row", "stamp_col"]).sortby(stamps.max(["stamp_row", "stamp_col"]))[-3:]

# %% [markdown]
# ## Saving to netCDF and loading back
#
# The stamp view is a self-contained description of the array: values, positions, and the
# image bounds in its attributes. Save it with any xarray netCDF engine (`scipy` needs no
# extra packages) and rebuild the `Sparse3D` with `Sparse3D.from_xarray`:

# %%
folder = Path(tempfile.mkdtemp())
path = folder / "stars.nc"
stamps.to_netcdf(path, engine="scipy")
print(f"{path.name}: {path.stat().st_size / 1024**2:.2f} MiB")

with xr.open_dataarray(path, engine="scipy") as loaded:
    S_back = Sparse3D.from_xarray(loaded.load())
S_back

# %%
np.array_equal(S_back, S), np.array_equal(S_back.dot(np.ones(nsources)), S.dot(np.ones(nsources)))

# %% [markdown]
# Clean up the temporary file:

# %%
path.unlink()
folder.rmdir()
