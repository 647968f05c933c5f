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
# # Start here: a tour of the `Sparse3D` API
#
# This notebook walks through everything you need for day-to-day use of `Sparse3D`, on a
# scene small enough to print: how to build an array from stamps, what NumPy operations
# mean on it, how to multiply, slice and move it, how to convert it to other formats, and
# the errors you are likely to meet along the way.

# %%
import matplotlib.pyplot as plt
import numpy as np

import sparse3d
from sparse3d import Sparse3D

# %% [markdown]
# ## Building an array from stamps
#
# A `Sparse3D` is a stack of small dense *stamps*, one per source, placed in a common image.
# You give it three arrays of the same shape `(nr, nc, nsources)`:
#
# * `data`: the stamp values,
# * `row`, `col`: the absolute image pixel of every stamp value,
#
# plus the image size `imshape = (H, W)`. The usual recipe makes an offset grid for one stamp
# and broadcasts it against the integer source positions.
#
# Here: three sources with 3 × 3 stamps on a 10 × 12 image.

# %%
imshape = (10, 12)
src_row = np.array([2, 5, 8])
src_col = np.array([3, 9, 5])
nsources = len(src_row)

R, C = np.mgrid[-1:2, -1:2]  # offsets -1, 0, 1
row = R[:, :, None] + src_row  # shape (3, 3, nsources)
col = C[:, :, None] + src_col
values = np.stack([np.full((3, 3), k + 1.0) for k in range(nsources)], axis=-1)

S = Sparse3D(values, row, col, imshape=imshape)
S

# %% [markdown]
# The logical shape is `(H, W, nsources)`; the stored stamps have `stamp_shape`; `nnz` counts
# the stored values that land inside the image. In a notebook, the rich display shows a
# summary:

# %%
print("shape:", S.shape, " stamp_shape:", S.stamp_shape, " nnz:", S.nnz, " dtype:", S.dtype)
S

# %% [markdown]
# Summing over the source axis gives a dense image, which makes it easy to look at:


# %%
def show(image, title, ax=None):
    """Plot an (H, W) image with its pixel grid."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 3.4))
    im = ax.imshow(image, origin="lower", cmap="viridis")
    ax.set(title=title, xlabel="column", ylabel="row")
    plt.colorbar(im, ax=ax, shrink=0.8)
    return ax


show(np.sum(S, axis=2), "np.sum(S, axis=2)")
# %% [markdown]
# ## Stamp semantics
#
# Ufuncs and arithmetic act on the **stored stamp values only**. Everywhere off a source's
# stamp the array is zero, and it stays zero whatever function you apply. This is what you
# want when a `Sparse3D` holds a model: `np.exp` of an exponent is a Gaussian on each
# stamp, not a sea of ones.
#
# `sparse.COO` (from the `sparse` package) instead follows *fill-value semantics*: the implicit
# zeros are real zeros of the array, and a function applied to them changes the fill value.
# Compare `np.exp` on both:

# %%
E = -0.5 * (Sparse3D(R[:, :, None] * np.ones(nsources), row, col, imshape) ** 2)
g = np.exp(E)  # Sparse3D: exp on the stamps, zero elsewhere
coo_g = np.exp(E.to_sparse())  # sparse.COO: exp(0) = 1 off the stamps
print("Sparse3D result:", type(g).__name__, "| off-stamp value:", g.todense()[0, 0, 0])
print("sparse.COO result fill_value:", coo_g.fill_value)

fig, axs = plt.subplots(1, 2, figsize=(8, 3.4))
show(np.sum(g, axis=2), "Sparse3D: np.exp, summed over sources", ax=axs[0])
show(coo_g.sum(axis=2).todense(), "sparse.COO: np.exp, summed over sources", ax=axs[1])
fig.tight_layout()
# %% [markdown]
# The same difference shows up when you subtract a per-source value. With stamp semantics
# this shifts every stamp; `sparse.COO` refuses, because the result would no longer be sparse:

# %%
shifted = S - np.array([0.5, 1.0, 1.5])
print("Sparse3D: stamp centres after subtracting", shifted.data[1, 1])
try:
    S.to_sparse() - np.array([1.0, 2.0, 3.0])
except ValueError as err:
    print("sparse.COO:", type(err).__name__, "-", err)

# %% [markdown]
# ## Broadcasting rules
#
# Plain operands are broadcast against the **logical** shape `(H, W, nsources)`, as NumPy
# would, and then evaluated on the stamp pixels:
#
# | operand shape | meaning |
# |---|---|
# | scalar | the same number for every stamp value |
# | `(nsources,)` or `(1, 1, nsources)` | one number per source |
# | `(H, W, 1)` or `(H, W)` with a new axis | one number per image pixel, looked up at each stamp pixel |
# | `(H, W, nsources)` | per pixel and per source |
# | another `Sparse3D` | must have the same stamps (positions, stamp shape, image bounds) |

# %%
per_source = np.array([10.0, 20.0, 30.0])
image = np.arange(np.prod(imshape), dtype=float).reshape(imshape)  # value = r * W + c

a = S * 2  # scalar
b = S * per_source  # per source
c = S * image[:, :, None]  # image-shaped: each stamp pixel picks up the image value there
d = S + S  # same stamps
print(a.max(), b.max(), c.max(), d.max())

# %% [markdown]
# Stamp-shaped values `(nr, nc, nsources)` are *not* broadcast (they would be ambiguous with
# the logical shape). To put new values on the same stamps use `with_data`:

# %%
weights3d = np.linspace(0, 1, S.data.size).reshape(S.stamp_shape)
S2 = S.with_data(S.data * weights3d)
S2

# %% [markdown]
# ## Reductions and their return types
#
# Reductions follow NumPy's axis rules and return what NumPy returns (never a sparse object):
#
# | `axis` | result |
# |---|---|
# | `None` | a NumPy scalar |
# | `2` (sources) | a dense image, `ndarray (H, W)` |
# | `(0, 1)` (pixels) | a dense `ndarray (nsources,)` |
# | `(0, 2)` / `(1, 2)` | a dense `ndarray (W,)` / `(H,)` |
# | `0` / `1` | a dense `ndarray (W, nsources)` / `(H, nsources)` |

# %%
for axis in [None, 2, (0, 1), (1, 2), 0]:
    r = np.sum(S, axis=axis)
    print(f"np.sum(S, axis={axis!s:>6}) -> {type(r).__name__:8} shape {np.shape(r)}")

# %% [markdown]
# ## Products: `dot`, `@` and `tensordot`
#
# `np.dot(S, w)`, `S.dot(w)` and `S @ w` contract the source axis, with NumPy's shape rules:
# weights of shape `(nsources,)` give an image `(H, W)`; weights of shape `(nsources, k)`
# give `k` images, `(H, W, k)`.

# %%
w = np.array([1.0, 0.5, 2.0])
print((S @ w).shape, np.dot(S, w).shape, S.dot(np.ones((nsources, 4))).shape)

# %% [markdown]
# The opposite contraction projects an image onto every source: the per-source sum of
# `S * image`, i.e. $A^\mathsf{T} y$ in linear-algebra terms. Use `np.tensordot` over the
# two image axes:

# %%
proj = np.tensordot(S, image, axes=([0, 1], [0, 1]))
proj, np.sum(S * image[:, :, None], axis=(0, 1))

# %% [markdown]
# ## Indexing and cutouts
#
# Indexing follows NumPy's shape rules:
#
# * unit-step slices on rows and columns make a **cutout**: a smaller image window, with the
#   stamps kept (its `imcorner` records where the window starts) → `Sparse3D`;
# * a slice, integer list or boolean mask on the source axis selects sources → `Sparse3D`;
# * an integer on the source axis drops that axis → that source's dense image `ndarray (H, W)`;
# * anything else (an integer row, a strided slice) → the dense `ndarray` NumPy returns,
#   computed from the smallest cutout that holds it.

# %%
cut = S[3:10, 4:12]
print("cutout:", cut, "imcorner:", cut.imcorner, "nnz:", cut.nnz)
print("two sources:", S[:, :, [0, 2]])
print("one source:", type(S[:, :, 1]).__name__, S[:, :, 1].shape)
print("a pixel row:", type(S[5]).__name__, S[5].shape)

# %%
fig, axs = plt.subplots(1, 2, figsize=(8, 3.4))
show(np.sum(S, axis=2), "S", ax=axs[0])
show(np.sum(cut, axis=2), "S[3:10, 4:12] (a cutout)", ax=axs[1])
fig.tight_layout()
# %% [markdown]
# ## Moving stamps: `translate` and `imcorner`
#
# `translate((drow, dcol))` returns a **new** array with every stamp shifted by whole pixels;
# the original is unchanged. Stamp pixels pushed off the image are kept (they just do not
# count in `nnz`), so translating back restores them.

# %%
moved = S.translate((0, 4))
back = moved.translate((0, -4))
print("nnz: original", S.nnz, "| moved", moved.nnz, "| moved back", back.nnz)
print("original unchanged:", np.array_equal(S.row, row), "| round trip equal:", np.array_equal(back, S))

# %% [markdown]
# `row` and `col` are absolute positions. By default the image's pixel `[0, 0]` is at absolute
# position `(0, 0)`; `imcorner` moves the image window. This is handy when your positions come
# from a larger frame and you only model part of it: here the same stamps are placed in a
# window whose corner is at absolute pixel `(2, 3)`.

# %%
W2 = Sparse3D(values, row, col, imshape=(6, 8), imcorner=(2, 3))
print(W2, "imcorner:", W2.imcorner, "nnz:", W2.nnz)
np.array_equal(np.sum(W2, axis=2), np.sum(S, axis=2)[2:8, 3:11])

# %% [markdown]
# ## Conversions
#
# | method | result |
# |---|---|
# | `S.tocsr()`, `S.tocsc()`, `S.tocoo()` | SciPy sparse matrix `(H * W, nsources)`, pixel index `r * W + c` |
# | `S.to_sparse()` | `sparse.COO` of shape `(H, W, nsources)`, fill value 0 |
# | `S.todense()` | dense `ndarray (H, W, nsources)`, guarded against huge allocations |
# | `S.to_xarray()` | labeled xarray views (see the xarray tutorial) |

# %%
print(repr(S.tocsr()))
print(repr(S.to_sparse()))
print(S.todense().shape)

# %% [markdown]
# `todense()` materialises `H * W * nsources` values, which for a real image is usually far
# too many. Above a limit (2 GiB by default) it refuses with a `DenseAllocationError` before
# allocating anything. Change the limit with `sparse3d.set_options`, as a plain call or, as
# here, temporarily in a `with` block:

# %%
with sparse3d.set_options(max_dense_bytes=1_000):
    try:
        S.todense()
    except sparse3d.DenseAllocationError as err:
        print(type(err).__name__, "-", err)
print(sparse3d.get_options())

# %% [markdown]
# ## Errors you will meet
#
# `Sparse3D` never densifies silently and never guesses. The messages say what went wrong and
# what to do instead. A small helper prints them:


# %%
def attempt(description, func):
    try:
        func()
    except Exception as err:  # noqa: BLE001 - we want to show any error
        print(f"{description}\n    {type(err).__name__}: {err}\n")


attempt("Combining arrays whose stamps differ:", lambda: S + S.translate((1, 0)))
attempt("Stamp-shaped values in an operator:", lambda: S * weights3d)
attempt("A NumPy function without stamp semantics:", lambda: np.sort(S))
attempt("Implicit conversion to a dense ndarray:", lambda: np.asarray(S))
attempt("Weights of the wrong length:", lambda: S.dot(np.ones(nsources + 1)))
attempt("Writing into an output array:", lambda: np.exp(S, out=np.empty(S.shape)))
attempt("Looping over the array:", lambda: list(S))
attempt("Stamp values are read-only:", lambda: S.data.__setitem__((0, 0, 0), 5.0))

# %% [markdown]
# In-place operators do not mutate either: `S += 1` rebinds the name `S` to a new array, so
# other references to the old array see the old values.

# %%
T = S
T += 1
print(S.max(), T.max())

# %% [markdown]
# The full list of NumPy functions and what they return on a `Sparse3D` is on the
# documentation's *Supported NumPy functions* page, and the *Bad inputs and errors* page
# collects the error messages in one table.
