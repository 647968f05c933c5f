"""Grid stamps (pixel ``(i, j)`` at ``corner + (i, j)``): detection and the row-wise scatter of
``dot``, against dense NumPy references.

``MIN_ELEMENTS`` is lowered to 0 so that the compiled loops run on these small scenes.
"""

import numpy as np
import pytest

from sparse3d import Sparse3D, _grid_kernels, _kernels
from sparse3d.testing import random_grouped_scene, random_scene

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")

CORNERS = [(0, 0), (-7, 12), (40_000, -3)]


@pytest.fixture(autouse=True)
def kernels_always(monkeypatch):
    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)


def _model(D, w):
    """``Σ_k D[:, :, k] w[k]`` in complex128 (an independent reference)."""
    return np.tensordot(D.astype(np.complex128), np.asarray(w).astype(np.complex128), axes=([2], [0]))


def _check(got, D, w, dtype):
    ref = _model(D, w)
    tol = 1e-5 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-12
    np.testing.assert_allclose(got, ref if np.iscomplexobj(got) else ref.real, rtol=tol, atol=tol)


def _grid_used(monkeypatch):
    calls = []
    orig = _grid_kernels.scatter

    def spy(*args):
        calls.append(True)
        return orig(*args)

    monkeypatch.setattr(_grid_kernels, "scatter", spy)
    return calls


@pytest.mark.parametrize("imcorner", CORNERS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("k", [None, 1, 3])
def test_grid_dot_matches_dense(monkeypatch, imcorner, dtype, k):
    """Stamps hanging over every edge, several blocks of sources (block lowered to 4)."""
    monkeypatch.setattr(_grid_kernels, "SCATTER_BLOCK", 4)
    rng = np.random.default_rng(7)
    sc = random_scene(rng, imcorner=imcorner, dtype=dtype, nsources=23, stamp=(4, 3))
    S = sc.build()
    assert S._structure.grid_corners() is not None
    w = rng.normal(size=23 if k is None else (23, k)).astype(dtype)
    calls = _grid_used(monkeypatch)
    got = S.dot(w)
    assert calls and got.dtype == np.dtype(dtype)
    assert got.shape == (sc.imshape if k is None else (*sc.imshape, k))
    _check(got, sc.dense(), w, dtype)


def test_float32_sums_in_float32_and_repeat_bit_identically(monkeypatch):
    rng = np.random.default_rng(3)
    sc = random_scene(rng, dtype=np.float32, nsources=60, imshape=(7, 8), stamp=(4, 4))
    w = rng.uniform(size=60).astype(np.float32)
    first = sc.build().dot(w)
    again = sc.build().dot(w)  # a fresh array: the kernel again
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    # float32 accumulation: the sum of float32 products in source order, as NumPy would
    D = sc.dense()
    ref = np.zeros(sc.imshape, np.float32)
    for kk in range(60):
        ref += D[:, :, kk] * w[kk]
    np.testing.assert_array_equal(first, ref)


@pytest.mark.parametrize("dtype", [bool, np.int32, np.float32])
def test_mixed_value_and_weight_dtypes(monkeypatch, dtype):
    rng = np.random.default_rng(5)
    sc = random_scene(rng, dtype=dtype, nsources=12)
    w = rng.normal(size=12)  # float64 weights: a float64 result
    got = sc.build().dot(w)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, _model(sc.dense(), w).real, rtol=1e-12, atol=1e-12)


def test_off_image_nan_never_reaches_the_image(monkeypatch):
    R, C = np.mgrid[:3, :3]
    row = R[:, :, None] + np.array([-1, 4, 6, 7])
    col = C[:, :, None] + np.array([2, -2, 5, 7])
    data = np.ones((3, 3, 4))
    data[0, :, 0] = np.nan  # row -1
    data[:, 0, 1] = np.inf  # col -2
    data[1:, :, 3] = np.nan  # rows 8, 9 of an 8-row image
    data[:, 1:, 3] = -np.inf  # cols 8, 9
    S = Sparse3D(data, row, col, imshape=(8, 8))
    assert S._structure.grid_corners() is not None
    img = S.dot(np.ones(4))
    np.testing.assert_array_equal(img, _model(np.nan_to_num(S.todense(force=True)), np.ones(4)).real)
    assert np.isfinite(img).all() and img.sum() == 6 + 3 + 6 + 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_grid_dot_sums_each_pixel_in_source_order(dtype):
    """Bit for bit the serial sum ``image[stamp] += values * w`` in source order (no FMA, no
    reassociation), over many blocks of mostly interior stamps: the path whose image rows are
    prefetched ``PREFETCH_AHEAD`` sources ahead, next to edge-hanging stamps."""
    rng = np.random.default_rng(15)
    n, (nr, nc), (H, W) = 700, (6, 10), (40, 57)
    top = rng.integers(-3, H - 2, size=n)
    left = rng.integers(-5, W - 4, size=n)
    R, C = np.mgrid[:nr, :nc]
    values = rng.normal(size=(nr, nc, n)).astype(dtype)
    w = rng.normal(size=n).astype(dtype)
    S = Sparse3D(values, R[:, :, None] + top, C[:, :, None] + left, (H, W))
    assert S._structure.grid_corners() is not None and n > 4 * _grid_kernels.PREFETCH_AHEAD
    ref = np.zeros((H + 2 * nr, W + 2 * nc), dtype=dtype)  # a margin holds the off-image pixels
    for k in range(n):
        ref[top[k] + nr : top[k] + 2 * nr, left[k] + nc : left[k] + 2 * nc] += values[:, :, k] * w[k]
    got = S.dot(w)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, ref[nr : nr + H, nc : nc + W])


def test_zero_and_one_source(monkeypatch):
    empty = Sparse3D(np.zeros((2, 2, 0)), np.zeros((2, 2, 0), int), np.zeros((2, 2, 0), int), (4, 5))
    np.testing.assert_array_equal(empty.dot(np.zeros(0)), np.zeros((4, 5)))
    np.testing.assert_array_equal(empty.dot(np.zeros((0, 2))), np.zeros((4, 5, 2)))
    R, C = np.mgrid[:2, :3]
    one = Sparse3D(np.arange(6.0).reshape(2, 3, 1), R[:, :, None] + 3, C[:, :, None] + 3, (4, 5))
    ref = np.zeros((4, 5))
    ref[3, 3:5] = [0.0, 2.0]  # row 4 and column 5 are off the image
    np.testing.assert_array_equal(one.dot(np.array([2.0])), ref)
    zero_w = one.dot(np.zeros((1, 0)))
    assert zero_w.shape == (4, 5, 0)


@pytest.mark.parametrize("shift", [(0, 0), (3, -4), (-20, 0)])
def test_translated_arrays_use_the_shared_corners(monkeypatch, shift):
    rng = np.random.default_rng(1)
    sc = random_scene(rng, imcorner=(-2, 5), nsources=15)
    S = sc.build()
    T = S.translate(shift)
    assert T._structure.grid_corners() is S._structure.grid_corners()
    w = rng.normal(size=15)
    D = random_scene_dense(sc, shift)
    _check(T.dot(w), D, w, np.float64)


def random_scene_dense(sc, shift):
    from sparse3d.testing import dense_reference

    return dense_reference(sc.data, sc.row + shift[0], sc.col + shift[1], sc.imshape, sc.imcorner)


def test_grouped_arrays(monkeypatch):
    rng = np.random.default_rng(9)
    gs = random_grouped_scene(rng, imcorner=(3, -2))
    S = gs.build()
    n = S.nsources
    w = rng.normal(size=(n, 2))
    calls = _grid_used(monkeypatch)
    got = S.dot(w)
    assert len(calls) == len(gs.parts)
    _check(got, gs.dense(), w, np.float64)


def _layouts(rng, n):
    """Stamp layouts that are distinct but not a grid: flipped, transposed, scattered."""
    R, C = np.mgrid[:3, :4]
    top = rng.integers(-2, 10, n)
    left = rng.integers(-3, 12, n)
    yield R[::-1, :, None] + top, C[:, :, None] + left  # rows flipped
    yield R[:, :, None] + top, C[:, ::-1, None] + left  # columns flipped
    R3, C3 = np.mgrid[:3, :3]
    yield C3[:, :, None] + top, R3[:, :, None] + left  # transposed: row varies along j
    perm = rng.permutation(12).reshape(3, 4)
    yield (perm // 4)[:, :, None] + top, (perm % 4)[:, :, None] + left  # shuffled pixels
    row = R[:, :, None] + top
    row = row.copy()
    row[:, :, -1] = row[::-1, :, -1]  # one source flipped among grid ones
    yield row, C[:, :, None] + left


def test_non_grid_layouts_use_the_element_scatter(monkeypatch):
    rng = np.random.default_rng(2)
    from sparse3d.testing import dense_reference

    for row, col in _layouts(rng, 11):
        data = rng.normal(size=row.shape)
        S = Sparse3D(data, row, col, imshape=(10, 12), imcorner=(0, 0))
        assert S._structure.grid_corners() is None
        calls = _grid_used(monkeypatch)
        w = rng.normal(size=11)
        got = S.dot(w)
        assert not calls
        _check(got, dense_reference(data, row, col, (10, 12)), w, np.float64)


@pytest.mark.parametrize("compiled", [True, False])
def test_is_grid_matches_a_numpy_rule(monkeypatch, compiled):
    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0 if compiled else 10**9)
    rng = np.random.default_rng(4)
    for row, col in _layouts(rng, 5):
        row, col = np.broadcast_arrays(row, col)
        assert not _grid_kernels.is_grid(row, col)
    R, C = np.mgrid[:3, :4]
    for dtype in (np.int16, np.int32, np.int64):
        top, left = rng.integers(-100, 100, 6), rng.integers(-100, 100, 6)
        row = (R[:, :, None] + top).astype(dtype)
        col = (C[:, :, None] + left).astype(dtype)
        assert _grid_kernels.is_grid(row, col)
        assert not _grid_kernels.is_grid(row.transpose(1, 0, 2)[:3], col.transpose(1, 0, 2)[:3])
        # a single stamp pixel 1 off
        bad = row.copy()
        bad[2, 1, 3] += 1
        assert not _grid_kernels.is_grid(bad, col)


def _positions_cases(rng, imcorner):
    """``(name, row, col, is a grid)`` for many kinds of position input, offset by ``imcorner``."""
    R, C = np.mgrid[:3, :4]
    top = rng.integers(-3, 12, 7) + imcorner[0]
    left = rng.integers(-4, 15, 7) + imcorner[1]
    row, col = R[:, :, None] + top, C[:, :, None] + left
    yield "grid int64", row, col, True
    if abs(top).max() < 30_000:
        yield "grid int16", row.astype(np.int16), col.astype(np.int16), True
    if top.min() >= 0:
        yield "grid uint16 rows", row.astype(np.uint16), col, True
    yield "grid, Fortran order", np.asfortranarray(row), np.asfortranarray(col), True
    yield "grid, strided", np.repeat(row, 2, axis=2)[:, :, ::2], np.repeat(col, 2, axis=2)[:, :, ::2], True
    yield "grid beyond int16", row + 40_000, col, True
    yield "flipped rows", row[::-1], col, False
    yield "float positions", row.astype(float), col.astype(float), True
    yield "broadcast", R[:, :, None] + top, C[:, :, None] + left[None, None, :], True


@pytest.mark.parametrize("imcorner", [(0, 0), (-5, 3), (40_000, 0)])
def test_construction_from_many_position_inputs(imcorner):
    """One pass copies, ranges and grid-tests the positions; same arrays as the general path."""
    from sparse3d.testing import dense_reference

    rng = np.random.default_rng(12)
    for name, row, col, grid in _positions_cases(rng, imcorner):
        data = rng.normal(size=row.shape)
        S = Sparse3D(data, row, col, imshape=(9, 11), imcorner=imcorner)
        np.testing.assert_array_equal(S.row, row, err_msg=name)
        np.testing.assert_array_equal(S.col, col, err_msg=name)
        s = S._structure
        expect_range = ((int(row.min()), int(row.max())), (int(col.min()), int(col.max())))
        assert s.position_range == expect_range, name
        assert (s.grid_corners() is not None) == grid, name
        assert not s._row.flags.writeable and not s._col.flags.writeable
        w = rng.normal(size=row.shape[2])
        _check(S.dot(w), dense_reference(data, row, col, (9, 11), imcorner), w, np.float64)


def test_construction_still_refuses_repeated_pixels():
    R, C = np.mgrid[:3, :3]
    row = R[:, :, None] + np.array([0, 5])
    col = C[:, :, None] + np.array([0, 5])
    row = row.copy()
    row[2, 2, 1] = row[0, 2, 1]  # source 1 covers a pixel twice
    with pytest.raises(ValueError, match="stamp 1 covers pixel"):
        Sparse3D(np.ones(row.shape), row, col, imshape=(10, 10))


def test_reinterning_after_the_fast_pass_sees_changed_positions():
    R, C = np.mgrid[:3, :4]
    row = R[:, :, None] + np.arange(5)
    col = C[:, :, None] + np.arange(5)
    X = Sparse3D(np.ones(row.shape), row, col, imshape=(12, 12))
    Y = Sparse3D(np.ones(row.shape), row, col, imshape=(12, 12))
    assert Y._structure is X._structure
    row[1, 1, 2] += 7  # no longer a grid, and no longer the same positions
    Z = Sparse3D(np.ones(row.shape), row, col, imshape=(12, 12))
    assert Z._structure is not X._structure and Z._structure.grid_corners() is None
    np.testing.assert_array_equal(Z.row, row)


@pytest.mark.parametrize("imcorner", CORNERS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("frames", [None, 1, 3])
def test_grid_projection_matches_dense(monkeypatch, imcorner, dtype, frames):
    monkeypatch.setattr(_grid_kernels, "SCATTER_BLOCK", 4)
    rng = np.random.default_rng(8)
    sc = random_scene(rng, imcorner=imcorner, dtype=dtype, nsources=19, stamp=(3, 5))
    shape = sc.imshape if frames is None else (*sc.imshape, frames)
    image = rng.normal(size=shape).astype(dtype)
    calls = []
    orig = _grid_kernels.gather
    monkeypatch.setattr(_grid_kernels, "gather", lambda *a: calls.append(1) or orig(*a))
    got = np.tensordot(sc.build(), image, axes=([0, 1], [0, 1]))
    assert calls and got.dtype == np.dtype(dtype)
    D = sc.dense().astype(np.complex128)
    ref = np.tensordot(D, image.astype(np.complex128), axes=([0, 1], [0, 1]))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, ref if np.iscomplexobj(got) else ref.real, rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "dtypes", [(np.float64, np.float64), (np.float32, np.float32), (np.float32, np.float64)]
)
def test_grid_projection_has_the_bits_of_the_element_gather(dtypes):
    rng = np.random.default_rng(10)
    sc = random_scene(rng, imcorner=(4, -6), dtype=dtypes[0], nsources=40)
    S = sc.build()
    s = S._structure
    image = rng.normal(size=(*sc.imshape, 2)).astype(dtypes[1])
    dtype = np.result_type(*dtypes)
    a = _grid_kernels.gather(S._values, *s.grid_corners(), image, s.root_corner, dtype)
    b = _kernels.gather(s._row, s._col, S._values, image, s.root_corner, dtype)
    np.testing.assert_array_equal(a, b)


def test_projection_of_a_strided_image_uses_the_element_gather(monkeypatch):
    rng = np.random.default_rng(5)
    sc = random_scene(rng, nsources=7)
    image = rng.normal(size=(sc.imshape[1], sc.imshape[0])).T  # not C-contiguous
    calls = []
    orig = _grid_kernels.gather
    monkeypatch.setattr(_grid_kernels, "gather", lambda *a: calls.append(1) or orig(*a))
    got = np.tensordot(sc.build(), image, axes=([0, 1], [0, 1]))
    assert not calls
    np.testing.assert_allclose(got, np.tensordot(sc.dense(), image, axes=([0, 1], [0, 1])), atol=1e-12)


@pytest.mark.parametrize("compiled", [True, False])
def test_is_grid_of_broadcast_positions(monkeypatch, compiled):
    """Positions stored compactly (stride-0 axes) are tested on their distinct elements."""
    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0 if compiled else 10**9)
    R, C = np.mgrid[:3, :4]
    top, left = np.arange(5) * 7, np.arange(5) * 3
    row = np.broadcast_to((R[:, :1] + top)[:, :, None].reshape(3, 1, 5), (3, 4, 5))
    col = np.broadcast_to((C[:1] + left[:, None, None]).transpose(1, 2, 0), (3, 4, 5))
    assert 0 in row.strides and 0 in col.strides
    assert _grid_kernels.is_grid(row, col)
    assert not _grid_kernels.is_grid(col.transpose(1, 0, 2)[:3, :3], row[:3, :3])
    flat_rows = np.broadcast_to(top, (3, 4, 5))  # every stamp pixel on one row: not a grid
    assert not _grid_kernels.is_grid(flat_rows, col)
    S = Sparse3D(np.ones((3, 4, 5)), row, col, imshape=(40, 30))
    assert S._structure._row.base is not None  # stored compactly
    np.testing.assert_array_equal(S._structure.grid_corners()[0], top)
    np.testing.assert_array_equal(S.dot(np.arange(5.0)), _model(S.todense(force=True), np.arange(5.0)).real)


def _transpose_reference(values, k0, k1, block_len, o0, dtype):
    out = np.zeros((block_len, *values.shape[:2]), dtype=dtype)
    out[o0 : o0 + k1 - k0] = np.moveaxis(values[:, :, k0:k1], 2, 0)
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.int32])
@pytest.mark.parametrize("stamp", [(1, 1), (3, 3), (4, 4), (5, 4), (10, 10)])
@pytest.mark.parametrize("layout", ["C", "strided"])
def test_source_major_copy_is_the_transpose(dtype, stamp, layout):
    """The block transposition of the grid scatter and gather (8 planes × 8 sources in vector
    registers for C-contiguous float32/float64, element copies otherwise, the planes and
    sources left over one by one): ``out[o0 + k - k0] = values[:, :, k]``, every value moved
    unchanged (int32 values cast to the float64 buffer)."""
    _grid_kernels._compiled("_scatter_loop")  # compiles the helpers (the transposition among them)
    rng = np.random.default_rng(sum(stamp))
    n = 45
    big = (rng.normal(size=(*stamp, 2 * n)) * 1000).astype(dtype)
    values = np.ascontiguousarray(big[:, :, :n]) if layout == "C" else big[:, :, ::2]
    out_dtype = np.float64 if dtype == np.int32 else dtype
    for k0, k1, block, o0 in [(0, 45, 16, 0), (3, 40, 13, 2), (8, 24, 8, 0), (0, 7, 64, 1)]:
        out = np.zeros((k1 - k0 + o0, *stamp), dtype=out_dtype)
        _grid_kernels._transpose_loop(values, k0, k1, out, o0, block)
        ref = _transpose_reference(values, k0, k1, len(out), o0, out_dtype)
        np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stamp", [(3, 3), (5, 4), (8, 8), (10, 10)])
@pytest.mark.parametrize("block", [8, 16])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_grid_dot_with_vector_transposes_is_the_serial_sum(monkeypatch, dtype, stamp, block, threads):
    """Blocks of 8 sources and more (the vector transposition), stamps over every edge and a
    non-zero image corner, in 1-3 threads (bands of rows): bit for bit the serial sum in
    source order."""
    import sparse3d
    from sparse3d import _threads

    monkeypatch.setattr(_grid_kernels, "SCATTER_BLOCK", block)
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 0)
    rng = np.random.default_rng(block + stamp[0])
    (nr, nc), n, (H, W), corner = stamp, 83, (21, 26), (-4, 9)
    top = rng.integers(-nr + 1, H, size=n)
    left = rng.integers(-nc + 1, W, size=n)
    R, C = np.mgrid[:nr, :nc]
    values = rng.normal(size=(nr, nc, n)).astype(dtype)
    w = rng.normal(size=n).astype(dtype)
    S = Sparse3D(values, R[:, :, None] + top + corner[0], C[:, :, None] + left + corner[1], (H, W), corner)
    assert S._structure.grid_corners() is not None
    ref = np.zeros((H + 2 * nr, W + 2 * nc), dtype=dtype)  # a margin holds the off-image pixels
    for k in range(n):
        ref[top[k] + nr : top[k] + 2 * nr, left[k] + nc : left[k] + 2 * nc] += values[:, :, k] * w[k]
    calls = []
    orig = _grid_kernels._scatter_bands
    monkeypatch.setattr(_grid_kernels, "_scatter_bands", lambda *a: calls.append(1) or orig(*a))
    with sparse3d.set_options(num_threads=threads):
        got = S.dot(w)
    assert bool(calls) == (threads > 1)  # the bands ran
    np.testing.assert_array_equal(got, ref[nr : nr + H, nc : nc + W])


def test_the_grid_kernels_name_the_transposition_they_inline():
    """numba caches the grid loops by their own file: the digest of the intrinsic's file recorded
    there must be the file's (else cached loops would keep an older transposition)."""
    import hashlib
    from pathlib import Path

    path = Path(_grid_kernels.__file__).with_name("_simd_transpose.py")
    text = path.read_bytes().replace(b"\r\n", b"\n")  # the same digest for any line endings
    assert hashlib.sha256(text).hexdigest()[:16] == _grid_kernels.SIMD_TRANSPOSE_DIGEST
