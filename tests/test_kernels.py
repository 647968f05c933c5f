"""The compiled scatter/gather of dot/tensordot against dense NumPy references.

``MIN_ELEMENTS`` is lowered to 0 so that the kernels (not the NumPy path) run on these
small scenes; every result is compared with the dense ``(H, W, n)`` array of
:func:`sparse3d.testing.dense_reference` contracted by NumPy.
"""

import numpy as np
import pytest

from sparse3d import Sparse3D, _functions, _kernels
from sparse3d.testing import random_scene

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")

CORNERS = [(0, 0), (-7, 12), (40_000, -3)]  # the last one needs int32 positions


@pytest.fixture(autouse=True)
def kernels_always(monkeypatch):
    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)


def _spy(monkeypatch):
    """Record which path each product takes."""
    seen = []
    orig = _functions.products._fast_product

    def spy(*args):
        seen.append(orig(*args))
        return seen[-1]

    monkeypatch.setattr(_functions.products, "_fast_product", spy)
    return seen


@pytest.mark.parametrize("imcorner", CORNERS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("seed", range(3))
def test_dot_matches_dense(monkeypatch, imcorner, dtype, seed):
    rng = np.random.default_rng(seed)
    sc = random_scene(rng, imcorner=imcorner, dtype=dtype, nsources=9)
    S = sc.build()
    D = sc.dense()
    w = rng.normal(size=9).astype(dtype)
    seen = _spy(monkeypatch)
    got = S.dot(w)
    assert seen == ["kernel"]
    ref = np.tensordot(D.astype(np.complex128), w.astype(np.complex128), axes=([2], [0]))
    assert got.dtype == np.result_type(dtype, dtype) and got.shape == sc.imshape
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, ref if np.iscomplexobj(got) else ref.real, rtol=tol, atol=tol)


@pytest.mark.parametrize("imcorner", CORNERS)
@pytest.mark.parametrize("k", [1, 3, 7])
def test_dot_many_weight_vectors(monkeypatch, imcorner, k):
    rng = np.random.default_rng(k)
    sc = random_scene(rng, imcorner=imcorner, nsources=8)
    w = rng.normal(size=(8, k))
    seen = _spy(monkeypatch)
    got = np.dot(sc.build(), w)
    assert seen == ["kernel"]
    np.testing.assert_allclose(got, np.tensordot(sc.dense(), w, axes=([2], [0])), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("imcorner", CORNERS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("frames", [None, 1, 4])
def test_tensordot_projection_matches_dense(monkeypatch, imcorner, dtype, frames):
    rng = np.random.default_rng(3)
    sc = random_scene(rng, imcorner=imcorner, dtype=dtype, nsources=10)
    shape = sc.imshape if frames is None else (*sc.imshape, frames)
    image = rng.normal(size=shape).astype(dtype)
    seen = _spy(monkeypatch)
    got = np.tensordot(sc.build(), image, axes=([0, 1], [0, 1]))
    assert seen == ["kernel"]
    assert got.dtype == dtype
    ref = np.tensordot(sc.dense().astype(np.float64), image.astype(np.float64), axes=([0, 1], [0, 1]))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


def test_projection_of_a_strided_image(monkeypatch):
    rng = np.random.default_rng(5)
    sc = random_scene(rng, nsources=7)
    big = rng.normal(size=(sc.imshape[1], sc.imshape[0]))
    image = big.T  # not C-contiguous
    got = np.tensordot(sc.build(), image, axes=([0, 1], [0, 1]))
    np.testing.assert_allclose(got, np.tensordot(sc.dense(), image, axes=([0, 1], [0, 1])), atol=1e-12)


def test_off_image_values_never_reach_a_result(monkeypatch):
    """NaN/inf stored on off-image stamp pixels (kept for translate) do not leak."""
    R, C = np.mgrid[:3, :3]
    row = R[:, :, None] + np.array([-1, 4, 6])  # source 0 hangs over the top edge
    col = C[:, :, None] + np.array([2, -2, 5])  # source 1 over the left edge
    data = np.ones((3, 3, 3))
    data[0, :, 0] = np.nan  # row -1: off the image
    data[:, 0, 1] = np.inf  # col -2: off the image
    S = Sparse3D(data, row, col, imshape=(8, 8))
    img = S.dot(np.ones(3))
    assert np.isfinite(img).all() and img.sum() == 6 + 3 + 6  # in-image pixels of each stamp
    proj = np.tensordot(S, np.ones((8, 8)), axes=([0, 1], [0, 1]))
    np.testing.assert_array_equal(proj, [6.0, 3.0, 6.0])


def test_zero_and_one_source_and_no_overlap(monkeypatch):
    empty = Sparse3D(np.zeros((2, 2, 0)), np.zeros((2, 2, 0), int), np.zeros((2, 2, 0), int), (4, 5))
    np.testing.assert_array_equal(empty.dot(np.zeros(0)), np.zeros((4, 5)))
    assert np.tensordot(empty, np.ones((4, 5)), axes=([0, 1], [0, 1])).shape == (0,)
    R, C = np.mgrid[:2, :2]
    one = Sparse3D(np.full((2, 2, 1), 2.0), R[:, :, None] + 1, C[:, :, None] + 3, (4, 5))
    ref = np.zeros((4, 5))
    ref[1:3, 3:5] = 6.0
    np.testing.assert_array_equal(one.dot(np.array([3.0])), ref)
    outside = Sparse3D(np.ones((2, 2, 1)), R[:, :, None] + 10, C[:, :, None], (4, 5))
    np.testing.assert_array_equal(outside.dot(np.ones(1)), np.zeros((4, 5)))
    np.testing.assert_array_equal(np.tensordot(outside, np.ones((4, 5)), axes=([0, 1], [0, 1])), [0.0])


def test_float32_accumulates_in_float32_and_is_deterministic(monkeypatch):
    rng = np.random.default_rng(11)
    sc = random_scene(rng, dtype=np.float32, nsources=40, imshape=(9, 9), stamp=(4, 4))
    S = sc.build()
    w = rng.uniform(size=40).astype(np.float32)
    first = S.dot(w)
    assert first.dtype == np.float32
    # a fresh array on the same stamps takes the kernel again: bit-identical results
    again = S.with_data(sc.data).dot(w)
    np.testing.assert_array_equal(first, again)
    ref = np.tensordot(sc.dense().astype(np.float64), w.astype(np.float64), axes=([2], [0]))
    np.testing.assert_allclose(first, ref, rtol=1e-5, atol=1e-5)


def test_a_reused_array_switches_to_its_cached_csr(monkeypatch):
    rng = np.random.default_rng(2)
    sc = random_scene(rng, imcorner=(-3, 4), nsources=12)
    S = sc.build()
    w = rng.normal(size=12)
    seen = _spy(monkeypatch)
    results = [S.dot(w) for _ in range(3)]
    assert seen == ["kernel", "csr", "csr"]
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-13, atol=1e-13)
    proj = np.tensordot(S, np.ones(sc.imshape), axes=([0, 1], [0, 1]))
    assert seen[-1] == "csr"
    np.testing.assert_allclose(proj, sc.dense().sum(axis=(0, 1)), atol=1e-12)


def test_kernel_and_numpy_paths_agree(monkeypatch):
    rng = np.random.default_rng(8)
    sc = random_scene(rng, imcorner=(2, -5), nsources=15)
    w = rng.normal(size=15)
    fast = sc.build().dot(w)
    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 10**12)
    slow = sc.build().dot(w)
    np.testing.assert_allclose(fast, slow, rtol=1e-13, atol=1e-13)


def test_unsupported_dtypes_use_the_numpy_path(monkeypatch):
    rng = np.random.default_rng(1)
    sc = random_scene(rng, dtype=np.int64, nsources=5)
    seen = _spy(monkeypatch)
    got = sc.build().dot(np.arange(5))
    assert seen == [None]
    np.testing.assert_array_equal(got, np.tensordot(sc.dense(), np.arange(5), axes=([2], [0])))
    assert not _kernels.use_kernel(10**9, np.float64, np.float16)
    assert not _kernels.use_kernel(10**9, np.float64, np.dtype(">f8"))


@pytest.mark.parametrize("imcorner", CORNERS)
def test_blocked_sweep_for_large_images_matches_dense(monkeypatch, imcorner):
    """Images beyond the cache are swept in blocks of sources; same sums."""
    monkeypatch.setattr(_kernels, "CACHE_IMAGE_BYTES", 0)
    rng = np.random.default_rng(21)
    sc = random_scene(rng, imcorner=imcorner, nsources=70)  # 3 blocks of 32 sources
    S = sc.build()
    w = rng.normal(size=(70, 2))
    np.testing.assert_allclose(np.dot(S, w), np.tensordot(sc.dense(), w, axes=([2], [0])), atol=1e-12)
    image = rng.normal(size=sc.imshape)
    got = np.tensordot(sc.build(), image, axes=([0, 1], [0, 1]))
    np.testing.assert_allclose(got, np.tensordot(sc.dense(), image, axes=([0, 1], [0, 1])), atol=1e-12)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint8])
def test_min_max_and_equal_match_numpy(dtype):
    rng = np.random.default_rng(4)
    info = np.iinfo(dtype)
    a = rng.integers(max(info.min, -1000), min(info.max, 1000), size=(3, 4, 5)).astype(dtype)
    assert _kernels.min_max(a) == (int(a.min()), int(a.max()))
    one = np.full((1, 1, 1), 7, dtype=dtype)
    assert _kernels.min_max(one) == (7, 7)
    b = a.astype(np.int64)
    assert _kernels.equal(a, b) and _kernels.equal(b, a)
    b[2, 3, 4] += 1
    assert not _kernels.equal(a, b)
    assert not _kernels.equal(a, b[:, :, :4])


def test_reinterning_sees_positions_changed_in_place():
    """The same row/col objects, mutated between two constructions, give a new structure."""
    sc = random_scene(6, nsources=5)
    row = sc.row.copy()
    A = Sparse3D(sc.data, row, sc.col, imshape=sc.imshape)
    B = Sparse3D(sc.data, row, sc.col, imshape=sc.imshape)
    assert B._structure is A._structure
    row[-1, -1, -1] += 1  # the last element: a comparison must read everything
    Cc = Sparse3D(sc.data, row, sc.col, imshape=sc.imshape)
    assert Cc._structure is not A._structure
    np.testing.assert_array_equal(Cc.row, row)


@pytest.mark.parametrize("dtype", [np.int16, np.int64, np.uint8, np.uint64])
def test_equal_finds_a_difference_in_any_chunk(dtype):
    """The compiled comparison works in chunks of 4096: a difference anywhere counts."""
    rng = np.random.default_rng(6)
    a = rng.integers(0, 100, size=(3, 5, 1000)).astype(dtype)  # 15,000: 3 chunks + a tail
    b = a.astype(np.int64)
    assert _kernels.equal(a, b)
    for flat in (0, 4095, 4096, 9000, 12_288, 14_999):
        c = b.copy()
        c.ravel()[flat] += 1
        assert not _kernels.equal(a, c) and not _kernels.equal(c, a)
    assert _kernels.min_max(a) == (int(a.min()), int(a.max()))
