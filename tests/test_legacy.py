"""sparse3d.legacy: the 1.x API on the 2.x core.

Three kinds of check:

* results equal to sparse3d 1.2.11's, to 1e-12, on the scenarios of
  ``scripts/gen_legacy_fixtures.py`` (values stored in ``tests/data/legacy_1_2_11.npz``,
  computed with 1.2.11; CI cannot import both versions at once);
* the 1.x behaviours (absolute in-place translate, layouts, scipy interoperability) and the
  1.x bugs that the namespace fixes, against dense NumPy references;
* the adapter holds no mathematics of its own: its results are the 2.x arrays' results.
"""

from __future__ import annotations

import copy
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
from scipy import sparse as sp

import sparse3d
from sparse3d.legacy import ROISparse3D, Sparse3D, stack

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "data" / "legacy_1_2_11.npz"


def _load_generator():
    path = ROOT / "scripts" / "gen_legacy_fixtures.py"
    spec = importlib.util.spec_from_file_location("gen_legacy_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()


# ---- dense references ---------------------------------------------------------------------------
def dense(data, row, col, imshape, imcorner=(0, 0), offset=(0, 0)):
    """The (H, W, n) cube of stamps ``data`` at ``row + offset``, ``col + offset``."""
    H, W = imshape
    n = data.shape[-1]
    out = np.zeros((H, W, n), dtype=np.result_type(data, float))
    r = np.broadcast_to(row, data.shape) + offset[0] - imcorner[0]
    c = np.broadcast_to(col, data.shape) + offset[1] - imcorner[1]
    k = np.broadcast_to(np.arange(n), data.shape)
    m = (r >= 0) & (r < H) & (c >= 0) & (c < W)
    np.add.at(out, (r[m], c[m], k[m]), data[m])
    return out


def model(cube, w):
    """1.x layout: (H, W) for 1-D weights, (k, H, W) for 2-D."""
    if w.ndim == 1:
        return cube @ w
    return np.einsum("hwn,nk->khw", cube, w)


def windows(image, corners, size, imcorner=(0, 0)):
    """Cut ``size`` windows at absolute ``corners`` out of ``image`` (..., H, W); zero outside."""
    H, W = image.shape[-2:]
    h, w = size
    out = np.zeros((len(corners), *image.shape[:-2], h, w))
    for j, (r0, c0) in enumerate(corners):
        for a in range(h):
            for b in range(w):
                r, c = r0 + a - imcorner[0], c0 + b - imcorner[1]
                if 0 <= r < H and 0 <= c < W:
                    out[j, ..., a, b] = image[..., r, c]
    return out


@pytest.fixture
def parts():
    return GEN.scene(np.random.default_rng(7))


# ---- equal to 1.2.11 ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def computed():
    return GEN.scenarios(Sparse3D, ROISparse3D, stack)


STORED = np.load(FIXTURES)


def test_fixture_covers_every_scenario(computed):
    stale = "regenerate tests/data with scripts/gen_legacy_fixtures.py"
    assert sorted(computed) == sorted(STORED.files), stale


@pytest.mark.parametrize("name", sorted(STORED.files))
def test_equal_to_1_2_11(computed, name):
    expected = STORED[name]
    actual = np.asarray(computed[name])
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


# ---- 1.x conventions ----------------------------------------------------------------------------
def test_is_a_coo_matrix_of_shape_pixels_by_sources(parts):
    data, row, col, imshape, imcorner = parts
    S = Sparse3D(data, row, col, imshape, imcorner)
    H, W = imshape
    assert isinstance(S, sp.coo_matrix)
    assert S.shape == S.cooshape == (H * W, data.shape[-1])
    assert S.subshape == data.shape and S.nsubimages == data.shape[-1] == len(S)
    np.testing.assert_array_equal(S.subrow, row - imcorner[0])
    np.testing.assert_array_equal(S.subcol, col - imcorner[1])
    np.testing.assert_array_equal(S.subdepth[1, 2], np.arange(data.shape[-1]))
    cube = dense(data, row, col, imshape, imcorner)
    np.testing.assert_allclose(S.toarray(), cube.reshape(H * W, -1))
    np.testing.assert_allclose(S.tocsr().toarray(), cube.reshape(H * W, -1))
    np.testing.assert_allclose(S.tocsc().toarray(), cube.reshape(H * W, -1))
    np.testing.assert_allclose(S.T.toarray(), cube.reshape(H * W, -1).T)
    np.testing.assert_allclose(np.asarray(S.sum(axis=0)).ravel(), cube.sum(axis=(0, 1)))
    assert S.nnz == int(((S.subrow >= 0) & (S.subrow < H) & (S.subcol >= 0) & (S.subcol < W)).sum())
    assert repr(S) == f"<{(*imshape, data.shape[-1])} Sparse3D array of type float64>"


def test_translate_is_absolute_and_in_place(parts):
    data, row, col, imshape, imcorner = parts
    S = Sparse3D(data, row, col, imshape, imcorner)
    w = np.linspace(1, 2, data.shape[-1])
    for off in [(1, 0), (1, 0), (-3, 2), (0, 0), (40, 0)]:
        assert S.translate(off) is None
        assert S.coord == off
        np.testing.assert_allclose(S.dot(w), model(dense(data, row, col, imshape, imcorner, off), w))
    S.reset()
    np.testing.assert_allclose(S.dot(w), model(dense(data, row, col, imshape, imcorner), w))


def test_dot_layouts(parts):
    data, row, col, imshape, imcorner = parts
    S = Sparse3D(data, row, col, imshape, imcorner)
    n = data.shape[-1]
    cube = dense(data, row, col, imshape, imcorner)
    for k in (1, 3, 6):
        w = np.random.default_rng(k).normal(size=(n, k))
        out = S.dot(w)
        assert out.shape == (k, *imshape)
        np.testing.assert_allclose(out, model(cube, w))
        np.testing.assert_allclose(S @ w, cube.reshape(-1, n) @ w)
    w = np.arange(1.0, n + 1)
    assert S.dot(w).shape == imshape
    assert (S @ w).shape == (imshape[0] * imshape[1],)
    image = np.random.default_rng(1).normal(size=imshape[0] * imshape[1])
    np.testing.assert_allclose(image @ S, image @ cube.reshape(-1, n))
    with pytest.raises(NotImplementedError, match="dot products with type"):
        S.dot("weights")


def test_dot_with_a_unit_keeps_it(parts):
    class Quantity(np.ndarray):  # the two attributes sparse3d looks at on astropy quantities
        unit = 2.0  # stands for a unit: the result is multiplied by it

        @property
        def value(self):
            return np.asarray(self)

    data, row, col, imshape, imcorner = parts
    S = Sparse3D(data, row, col, imshape, imcorner)
    cube = dense(data, row, col, imshape, imcorner)
    w = np.ones(data.shape[-1])
    np.testing.assert_allclose(S.dot(w.view(Quantity)), 2.0 * model(cube, w))
    W2 = np.ones((data.shape[-1], 2))
    np.testing.assert_allclose(S.dot(W2.view(Quantity)), 2.0 * model(cube, W2))


def test_operators_broadcast_arrays_against_the_stamps(parts):
    data, row, col, imshape, imcorner = parts
    S = Sparse3D(data, row, col, imshape, imcorner)
    stamp = np.random.default_rng(3).uniform(1, 2, data.shape)
    per_source = np.arange(1.0, data.shape[-1] + 1)
    for result, expected in [
        (S + stamp, data + stamp),
        (stamp * S, stamp * data),
        (S - stamp[:, :1], data - stamp[:, :1]),
        (S / per_source, data / per_source),
        (S.multiply(stamp), data * stamp),
    ]:
        assert type(result) is Sparse3D
        np.testing.assert_allclose(result.subdata, expected)
    with pytest.raises(ValueError, match="does not broadcast against the stamp shape"):
        S + np.ones((2, 2, 2))


def test_results_keep_the_class_and_the_offset(parts):
    data, row, col, imshape, imcorner = parts
    corners = [(imcorner[0], imcorner[1]), (imcorner[0] + 5, imcorner[1] + 4)]
    Q = ROISparse3D(data, row, col, imshape, nROIs=2, ROI_size=(6, 6), ROI_corners=corners, imcorner=imcorner)
    Q.translate((2, -1))
    w = np.ones(data.shape[-1])
    for R in (Q * 2, np.sqrt(Q), Q[:, :, 1:3], Q.multiply(w), Q.copy(), stack([Q, Q])):
        assert type(R) is ROISparse3D and R.coord == (2, -1)
        assert R.ROI_corners == corners and R.nROIs == 2
    T = Q.to_Sparse3D()
    assert type(T) is Sparse3D and T.coord == (2, -1)
    np.testing.assert_allclose((Q * 2).dot(w), 2 * Q.dot(w))
    other = Q.copy()
    other.reset()
    with pytest.raises(ValueError, match="translated to different offsets"):
        Q + other
    with pytest.raises(ValueError, match="translated to the same offset"):
        stack([Q, other])


def test_clear_empties_until_translate(parts):
    data, row, col, imshape, imcorner = parts
    S = Sparse3D(data, row, col, imshape, imcorner)
    S.translate((1, 2))
    S.clear()
    # as 1.x: no COO entries at all (not stored zeros), in every view, back at coord (0, 0)
    assert S.nnz == 0 and len(S.data) == len(S.row) == len(S.col) == 0 and S.coord == (0, 0)
    assert S.tocsr().nnz == S.tocsc().nnz == S.tocoo().nnz == 0 and S.tocsr().shape == S.shape
    assert not S.toarray().any()
    assert not S.dot(np.ones(data.shape[-1])).any()
    assert not S.dot(np.ones((data.shape[-1], 2))).any()
    for R in (S.copy(), copy.copy(S), copy.deepcopy(S), pickle.loads(pickle.dumps(S))):
        assert R.nnz == 0 and not R.dot(np.ones(data.shape[-1])).any()  # 1.x copied the cleared state
        R.reset()
        assert R.dot(np.ones(data.shape[-1])).any()
    S.translate((0, 0))
    assert S.dot(np.ones(data.shape[-1])).any()


def test_indexing_rules(parts):
    data, row, col, imshape, imcorner = parts
    S = Sparse3D(data, row, col, imshape, imcorner)
    np.testing.assert_array_equal(S[:, :, -1].subdata, data[:, :, -1:])  # 1.x: empty
    np.testing.assert_array_equal(S[:, :, np.int64(2)].subdata, data[:, :, 2:3])
    np.testing.assert_array_equal(S[:, :, ::2].subdata, data[:, :, ::2])
    with pytest.raises(IndexError, match="out of bounds"):
        S[:, :, 99]
    with pytest.raises(IndexError, match="The last index must be an integer or a slice"):
        S[:, :, [0, 1]]
    with pytest.raises(IndexError, match="Only full slices"):
        S[1:3, :, 0]


def test_stack_refuses_like_1x(parts):
    data, row, col, imshape, imcorner = parts
    S = Sparse3D(data, row, col, imshape, imcorner)
    Q = ROISparse3D(data, row, col, imshape, 1, (3, 3), [(0, 0)], imcorner)
    assert stack([S]) is S
    assert type(stack([S, Q])) is Sparse3D
    with pytest.raises(ValueError, match="Pass a list"):
        stack((S, S))
    with pytest.raises(ValueError, match="No arrays"):
        stack([])
    with pytest.raises(ValueError, match="same data type"):
        stack([S, 1])
    with pytest.raises(ValueError, match="same `imshape`"):
        stack([S, Sparse3D(data, row, col, (5, 5))])
    with pytest.raises(ValueError, match="ROI_corner"):
        stack([Q, ROISparse3D(data, row, col, imshape, 1, (3, 3), [(1, 0)], imcorner)])
    with pytest.raises(ValueError, match=r"same stamp shape \(subshape\[:2\]\)"):
        stack([S, S[:, :, :1].multiply(1.0), Sparse3D(data[:2], row[:2], col[:2], imshape, imcorner)])
    with pytest.raises(ValueError, match="Must pass corners for all ROIs"):
        ROISparse3D(data, row, col, imshape, 2, (3, 3), [(1, 0)])
    with pytest.raises(ValueError, match="Pass a 3D array"):
        Sparse3D(data[0], row[0], col[0], imshape)
    with pytest.raises(ValueError, match="same 3rd dimension"):
        Sparse3D(data, row[:, :, :2], col, imshape)


def test_fractional_positions_are_truncated_as_in_1x():
    R, C = np.mgrid[:2, :2].astype(float)
    S = Sparse3D(np.ones((2, 2, 1)), R[:, :, None] + 3.7, C[:, :, None] + 1.2, (8, 8))
    np.testing.assert_array_equal(S.subrow[:, 0, 0], [3, 4])
    np.testing.assert_array_equal(S.subcol[0, :, 0], [1, 2])


def test_copy_pickle_and_errors(parts):
    data, row, col, imshape, imcorner = parts
    Q = ROISparse3D(data, row, col, imshape, 2, (4, 4), [(0, 0), (3, 3)], imcorner)
    Q.translate((1, 1))
    w = np.ones(data.shape[-1])
    for R in (copy.copy(Q), copy.deepcopy(Q), pickle.loads(pickle.dumps(Q))):
        assert type(R) is ROISparse3D and R.coord == (1, 1)
        np.testing.assert_array_equal(R.dot(w), Q.dot(w))
    with pytest.raises(TypeError, match="toarray"):
        np.asarray(Q)
    S = Q.to_Sparse3D()
    S += 1  # rebinds, as in 1.x
    assert type(S) is Sparse3D
    np.testing.assert_allclose(S.subdata, data + 1)


# ---- ROI ----------------------------------------------------------------------------------------
def test_roi_layouts_and_full_frame_tocsr(parts):
    data, row, col, imshape, imcorner = parts
    corners = [(imcorner[0] - 2, imcorner[1] + 3), (imcorner[0] + 10, imcorner[1] + imshape[1] - 4)]
    size = (7, 9)  # the second window hangs over the right edge of the image
    Q = ROISparse3D(data, row, col, imshape, len(corners), size, corners, imcorner)
    n = data.shape[-1]
    w = np.linspace(0.5, 1.5, n)
    W3 = np.random.default_rng(2).normal(size=(n, 3))
    for off in [(0, 0), (2, -3)]:
        Q.translate(off)
        cube = dense(data, row, col, imshape, imcorner, off)
        np.testing.assert_allclose(Q.dot(w), windows(model(cube, w), corners, size, imcorner))
        out = Q.dot(W3)
        assert out.shape == (2, 3, *size)
        np.testing.assert_allclose(out, windows(model(cube, W3), corners, size, imcorner))
        np.testing.assert_allclose(Q.dot(W3.T), out)  # (k, nsources) accepted, as in 1.x
        np.testing.assert_allclose(Q.dot(sp.csr_matrix(W3)), out)
        np.testing.assert_allclose(Q.tocsr().toarray(), cube.reshape(-1, n))
    assert "2 Regions of Interest" in repr(Q)


def test_roi_square_weights_are_not_transposed(parts):
    data, row, col, imshape, imcorner = parts
    n = data.shape[-1]
    Q = ROISparse3D(data, row, col, imshape, 1, imshape, [imcorner], imcorner)
    Wsq = np.random.default_rng(4).normal(size=(n, n))
    expected = model(dense(data, row, col, imshape, imcorner), Wsq)[None]
    np.testing.assert_allclose(Q.dot(Wsq), expected)  # 1.x computed with Wsq.T


# ---- the 1.x bugs, fixed ------------------------------------------------------------------------
def test_fixed_ge_computes_ge(parts):
    data, row, col, imshape, imcorner = parts
    data = np.round(data, 1)
    S = Sparse3D(data, row, col, imshape, imcorner)
    np.testing.assert_array_equal((S >= 1.0).subdata, data >= 1.0)  # 1.x: data > 1.0
    np.testing.assert_array_equal((S >= S).subdata, np.ones(data.shape, bool))


def test_fixed_operand_order_of_np_subtract_and_divide(parts):
    data, row, col, imshape, imcorner = parts
    S = Sparse3D(data, row, col, imshape, imcorner)
    np.testing.assert_allclose(np.subtract(S, 1).subdata, data - 1)  # 1.x: 1 - data
    np.testing.assert_allclose(np.subtract(S, 1).subdata, (S - 1).subdata)
    np.testing.assert_allclose(np.divide(2, S).subdata, 2 / data)  # 1.x: data / 2
    np.testing.assert_allclose((2 / S).subdata, 2 / data)


def test_fixed_ufunc_values_survive_translate(parts):
    data, row, col, imshape, imcorner = parts
    w = np.linspace(1, 2, data.shape[-1])
    for f in (np.exp, np.sqrt, lambda S: S**2, np.negative):
        R = f(Sparse3D(data, row, col, imshape, imcorner))
        R.translate((1, -2))  # 1.x: exp, sqrt and ** reverted to the values before the ufunc
        ref = f(data) if f in (np.exp, np.sqrt, np.negative) else data**2
        np.testing.assert_allclose(R.dot(w), model(dense(ref, row, col, imshape, imcorner, (1, -2)), w))


def test_fixed_negation_keeps_imcorner(parts):
    data, row, col, imshape, imcorner = parts
    S = Sparse3D(data, row, col, imshape, imcorner)
    w = np.ones(data.shape[-1])
    np.testing.assert_allclose((-S).dot(w), -S.dot(w))  # 1.x dropped imcorner for -S and abs(S)
    np.testing.assert_allclose(abs(-S).dot(w), S.dot(w))


def test_fixed_roi_window_past_the_right_edge_reads_zeros():
    R, C = np.mgrid[:3, :3]
    data = np.ones((3, 3, 1))
    # a stamp at the left edge of row 5; a window hanging over the right edge of row 4
    Q = ROISparse3D(data, R[:, :, None] + 5, C[:, :, None], (10, 10), 1, (4, 4), [(4, 8)])
    out = Q.dot(np.ones(1))
    np.testing.assert_array_equal(
        out,
        windows(model(dense(data, R[:, :, None] + 5, C[:, :, None], (10, 10)), np.ones(1)), [(4, 8)], (4, 4)),
    )
    assert out[0, :, 2:].sum() == 0  # 1.x read columns 0, 1 of the next image row here


def test_explicit_zeros_follow_the_ufunc(parts):
    data, row, col, imshape, imcorner = parts
    data = data.copy()
    data[0, 0, :] = 0.0
    S = Sparse3D(data, row, col, imshape, imcorner)
    w = np.ones(data.shape[-1])
    ref = model(dense(np.exp(data), row, col, imshape, imcorner), w)
    np.testing.assert_allclose(np.exp(S).dot(w), ref)  # 1.x: exp(0) left at 0 here ...
    np.testing.assert_allclose((np.exp(S) * 1).dot(w), ref)  # ... but not here


# ---- a thin adapter: the results are the 2.x arrays' ----------------------------------------------
def test_results_are_those_of_the_2x_core(parts):
    data, row, col, imshape, imcorner = parts
    S = Sparse3D(data, row, col, imshape, imcorner)
    V = sparse3d.Sparse3D(data, row, col, imshape, imcorner)
    W3 = np.random.default_rng(5).normal(size=(data.shape[-1], 3))
    S.translate((3, 1))
    np.testing.assert_array_equal(S.dot(W3), np.moveaxis(V.translate((3, 1)).dot(W3), -1, 0))
    assert isinstance(S.to_v2(), sparse3d.Sparse3D)
    np.testing.assert_array_equal(np.exp(S).to_v2().data, np.exp(V).data)
    corners = [(0, 0), (4, 6)]
    Q = ROISparse3D(data, row, col, imshape, 2, (5, 5), corners, imcorner)
    np.testing.assert_array_equal(Q.dot(W3), np.moveaxis(V.roi(corners, (5, 5)).dot(W3), -1, 1))


# ---- the shared small scenes: corners, float32, 0 and 1 sources, a one-pixel image -----------------
def test_scenes_against_dense(scene):
    data, row, col, imshape, imcorner = scene.data, scene.row, scene.col, scene.imshape, scene.imcorner
    n = data.shape[-1]
    rtol = 1e-5 if data.dtype == np.float32 else 1e-12
    rng = np.random.default_rng(n)
    w, W2 = rng.normal(size=n), rng.normal(size=(n, 2))
    S = Sparse3D(data, row, col, imshape, imcorner)
    corners = [imcorner, (imcorner[0] + imshape[0] - 2, imcorner[1] + imshape[1] - 2)]
    Q = ROISparse3D(data, row, col, imshape, 2, (3, 4), corners, imcorner)
    for off in [(0, 0), (1, -2), (-3, 4)]:
        S.translate(off)
        Q.translate(off)
        cube = dense(data, row, col, imshape, imcorner, off)
        np.testing.assert_allclose(S.dot(w), model(cube, w), rtol=rtol, atol=1e-6)
        np.testing.assert_allclose(S.dot(W2), model(cube, W2), rtol=rtol, atol=1e-6)
        np.testing.assert_allclose(S.toarray(), cube.reshape(imshape[0] * imshape[1], n), rtol=rtol)
        np.testing.assert_allclose(Q.dot(W2), windows(model(cube, W2), corners, (3, 4), imcorner), atol=1e-5)
        np.testing.assert_allclose((S * 2).dot(w), 2 * model(cube, w), rtol=rtol, atol=1e-5)
    assert S.shape == (imshape[0] * imshape[1], n)


# ---- found by the differential fuzzer against 1.2.11 ----------------------------------------------
def test_coo_entries_keep_the_1x_order_through_scipy_methods(parts):
    """1.x never cleared scipy's canonical flag: S.max() & co. did not re-sort S.data/row/col."""
    data, row, col, imshape, imcorner = parts
    S = Sparse3D(data, row, col, imshape, imcorner)
    S.translate((1, -2))
    # 1.x order: the stamp pixels in C order of (nrows, ncols, nsubimages), in-image ones only
    r, c = row + 1 - imcorner[0], col - 2 - imcorner[1]
    inside = (r >= 0) & (r < imshape[0]) & (c >= 0) & (c < imshape[1])
    k = np.broadcast_to(np.arange(data.shape[-1]), data.shape)
    expected = (data[inside], (r * imshape[1] + c)[inside], k[inside])
    S.max(), S.min(), S.nonzero(), S.sum_duplicates()
    for got, want in zip((S.data, S.row, S.col), expected):
        np.testing.assert_array_equal(got, want)
    assert S.max() == data[inside].max()


def test_operators_with_scipy_matrices_are_scipys_on_the_matrix(parts):
    """1.x fell back to scipy for S + M, S == M; every elementwise operator now does."""
    data, row, col, imshape, imcorner = parts
    S = Sparse3D(data, row, col, imshape, imcorner)
    S.translate((2, 1))
    A = dense(data, row, col, imshape, imcorner, (2, 1)).reshape(-1, data.shape[-1])
    M = sp.random(*A.shape, density=0.3, random_state=3, format="csr") + sp.csr_matrix(0.5 * (A > 0))
    B = M.toarray()
    cases = [
        (S + M, A + B),
        (M + S, A + B),
        (S - M, A - B),
        (M - S, B - A),
        (S * M, A * B),
        (S.multiply(M), A * B),
        (np.add(S, M), A + B),
        (S == M, A == B),
        (S != M, A != B),
        (S > M, A > B),
        (S < M, A < B),
        (S.T @ M, A.T @ B),
        (M.T @ S, B.T @ A),
        (S.T @ S, A.T @ A),
    ]
    for got, want in cases:
        assert sp.issparse(got)
        np.testing.assert_allclose(got.toarray(), want, rtol=1e-12)
    with pytest.raises(TypeError, match="scipy sparse matrix"):
        np.maximum(S, M)


def test_get_roi_mask_as_in_1x(parts):
    data, row, col, imshape, imcorner = parts
    corners = [(imcorner[0] - 1, imcorner[1] + 2), (imcorner[0] + 5, imcorner[1] + 3)]
    Q = ROISparse3D(data, row, col, imshape, 2, (4, 6), corners, imcorner)
    rr, cc = np.mgrid[-3:30, -3:30]
    mask = Q.get_ROI_mask(rr, cc)
    assert mask.shape == (2, *rr.shape) and mask.dtype == bool
    for j, (r0, c0) in enumerate(corners):
        want = [[r0 <= a < r0 + 4 and c0 <= b < c0 + 6 for b in range(-3, 30)] for a in range(-3, 30)]
        np.testing.assert_array_equal(mask[j], want)
    np.testing.assert_array_equal(Q.get_ROI_mask(corners[1][0], corners[1][1]), [False, True])


def test_roi_with_plain_array_gives_a_plain_array_as_in_1x(parts):
    """1.x: ROISparse3D (op) Sparse3D, either order, was a Sparse3D (its dot gives the full frame)."""
    data, row, col, imshape, imcorner = parts
    S = Sparse3D(data, row, col, imshape, imcorner)
    Q = ROISparse3D(data, row, col, imshape, 1, (3, 3), [imcorner], imcorner)
    w = np.ones(data.shape[-1])
    cube = dense(data, row, col, imshape, imcorner)
    for R in (Q + S, S + Q, np.add(Q, S), Q * S, S - Q):
        assert type(R) is Sparse3D
        assert R.dot(w).shape == imshape
    np.testing.assert_allclose((Q + S).dot(w), model(2 * cube, w), rtol=1e-12)
    assert type(Q + Q) is ROISparse3D and type(Q * 2) is ROISparse3D


def test_edited_coo_entries_are_what_products_read(parts):
    """S.data = ... changes 1.x's matrix until translate/reset: dot, @, tocsr, ROI windows read it."""
    data, row, col, imshape, imcorner = parts
    n = data.shape[-1]
    w, W2 = np.linspace(0.5, 2.0, n), np.random.default_rng(5).normal(size=(n, 2))
    corners = [(imcorner[0] - 2, imcorner[1] - 3), (imcorner[0] + 5, imcorner[1] + imshape[1] - 2)]
    size = (5, 6)
    plain = Sparse3D(data, row, col, imshape, imcorner)
    for S in (plain, ROISparse3D(data, row, col, imshape, 2, size, corners, imcorner)):
        S.translate((1, -1))
        cube = dense(data, row, col, imshape, imcorner, (1, -1))
        S.data = S.data * 3.0
        S.data[:2] = 0.0  # also in place
        edited = 3 * cube.reshape(-1, n)
        edited[S.row[:2], S.col[:2]] = 0.0
        edited = edited.reshape(cube.shape)
        np.testing.assert_allclose(S.tocsr().toarray(), edited.reshape(-1, n), rtol=1e-12)
        if isinstance(S, ROISparse3D):
            for x in (w, W2):
                expected = windows(model(edited, x), corners, size, imcorner)
                np.testing.assert_allclose(S.dot(x), expected, rtol=1e-12, atol=1e-12)
        else:
            np.testing.assert_allclose(S.dot(w), model(edited, w), rtol=1e-12)
            np.testing.assert_allclose(S.dot(W2), model(edited, W2), atol=1e-12)
            np.testing.assert_allclose(S @ w, edited.reshape(-1, n) @ w, rtol=1e-12)
            np.testing.assert_allclose(S.copy().dot(w), model(edited, w), rtol=1e-12)
        S.reset()
        original = dense(data, row, col, imshape, imcorner).reshape(-1, n)
        np.testing.assert_allclose(S.tocsr().toarray(), original)
