"""Models of translated arrays (a jitter loop's products) against dense ``np.add.at`` references.

The paths under test: the pixel-sorted scatter of a family's later products (its unrolled
branches for 1-4 weight columns and the plain loop beyond), written into buffers lent by
``sparse3d._pool.lend`` or into a caller's array (``dot(..., _into=)``, which the legacy
namespace uses for 1.x's ``(k, H, W)`` layout). Kernels and lending are forced on the small
scenes (``MIN_ELEMENTS = 0``, ``MIN_BYTES = 0``).
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from translation_cases import CORNERS, OFFSETS  # tests/ is on sys.path

import sparse3d
from sparse3d import _functions, _kernels, _pool
from sparse3d.testing import dense_reference, random_grouped_scene, random_scene

needs_numba = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")


@pytest.fixture
def forced(monkeypatch, small_kernels):
    """Kernels and lending on small arrays; records the product path of every call."""
    seen: list = []
    orig = _functions.products._fast_product

    def spy(*args):
        seen.append(orig(*args))
        return seen[-1]

    monkeypatch.setattr(_functions.products, "_fast_product", spy)
    _pool.clear()
    yield seen
    _pool.clear()


def _dense_at(sc, d, data=None):
    data = sc.data if data is None else data
    return dense_reference(data, sc.row + d[0], sc.col + d[1], sc.imshape, sc.imcorner)


def _model(D, w):
    """Dense model ``(H, W[, k])`` in complex128 (exact enough for every dtype here)."""
    return np.tensordot(D.astype(np.complex128), w.astype(np.complex128), axes=([2], [0]))


def _check(got, ref, dtype):
    tol = 2e-5 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-12
    ref = ref if np.iscomplexobj(got) else ref.real
    assert got.shape == ref.shape and got.dtype == dtype
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


@needs_numba
@pytest.mark.parametrize("imcorner", CORNERS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("nsources", [0, 1, 9])
def test_translated_models_match_dense_and_survive_later_calls(forced, imcorner, dtype, nsources):
    rng = np.random.default_rng(nsources + 10 * len(str(imcorner)))
    sc = random_scene(rng, imcorner=imcorner, nsources=nsources, dtype=dtype)
    S = sc.build()
    kept = []  # every result stays alive: a lent buffer must never be handed out twice
    for d in OFFSETS:
        T = S.translate(d)
        D = _dense_at(sc, d)
        for k in (None, 1, 2, 3, 4, 5, 9):
            shape = (nsources,) if k is None else (nsources, k)
            w = rng.normal(size=shape).astype(dtype)
            got = T.dot(w)
            _check(got, _model(D, w), dtype)
            kept.append((got, got.copy()))
    for got, snapshot in kept:
        np.testing.assert_array_equal(got, snapshot)
    if nsources:
        assert "sorted" in forced


@needs_numba
def test_dropped_models_are_reused_and_fully_overwritten(forced):
    rng = np.random.default_rng(1)
    sc = random_scene(rng, imcorner=(3, -2), nsources=7, imshape=(16, 19))
    S = sc.build()
    w = rng.normal(size=(7, 3))
    S.dot(w)  # the family's first product: the kernel path
    addresses = set()
    for d in [(0, 1), (-2, 3), (30, 0), (4, -4), (0, 1)]:
        got = S.translate(d).dot(w * (1 + d[0]))
        np.testing.assert_allclose(got, _model(_dense_at(sc, d), w * (1 + d[0])).real, atol=1e-12)
        addresses.add(got.__array_interface__["data"][0])
        del got  # dropped: its buffer may serve the next model
    assert forced[1:] == ["sorted"] * 5
    if _pool._EXACT_REFCOUNTS:
        assert len(addresses) == 1  # one buffer served every model


@needs_numba
@pytest.mark.parametrize("layout", ["planes", "c", "strided"])
@pytest.mark.parametrize("grouped", [False, True])
def test_dot_into_a_callers_array_every_path(forced, layout, grouped):
    rng = np.random.default_rng(2)
    if grouped:
        sc = random_grouped_scene(rng, imcorner=(-5, 4))
    else:
        sc = random_scene(rng, imcorner=(-5, 4), nsources=8)
    S = sc.build()
    n = S.nsources
    H, W = S.imshape
    w = rng.normal(size=(n, 3))
    for d in [(0, 0), (0, 0), (1, -1), (1, -1), (2, 5), (-30, 0)]:
        T = S.translate(d)  # (0, 0) is S itself: its second product takes the CSR path
        if layout == "planes":  # sparse3d 1.x's (k, H, W)
            target = np.full((3, H, W), np.nan)
            into = target.transpose(1, 2, 0)
        elif layout == "c":
            target = into = np.full((H, W, 3), np.nan)
        else:
            target = np.full((H, W, 6), np.nan)
            into = target[..., ::2]
        got = _functions.dot(T, w, _into=into)
        assert got is into
        if grouped:
            D = np.concatenate([_dense_at(p, d) for p in sc.parts], axis=2)
        else:
            D = _dense_at(sc, d)
        np.testing.assert_allclose(into, _model(D, w).real, atol=1e-12)
        if layout == "strided":
            assert np.isnan(target[..., 1::2]).all()  # nothing written outside the view
    if not grouped:
        assert {"kernel", "sorted", "csr"} <= set(forced)  # every compiled product path


def test_dot_into_refuses_what_it_cannot_fill():
    rng = np.random.default_rng(3)
    S = random_scene(rng, nsources=4).build()
    H, W = S.imshape
    with pytest.raises(ValueError, match="shape"):
        _functions.dot(S, np.ones((4, 2)), _into=np.zeros((H, W, 3)))
    with pytest.raises(ValueError, match="dtype"):
        _functions.dot(S, np.ones((4, 2)), _into=np.zeros((H, W, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(nsources, k\) weights"):
        _functions.dot(S, np.ones(4), _into=np.zeros((H, W)))


# -- the pool's lent buffers --------------------------------------------------------------
@pytest.fixture
def small_pool(monkeypatch):
    monkeypatch.setattr(_pool, "MIN_BYTES", 0)
    _pool.clear()
    yield
    _pool.clear()


def _address(a):
    return a.__array_interface__["data"][0]


@pytest.mark.skipif(not _pool._EXACT_REFCOUNTS, reason="lending is off on this interpreter")
def test_lend_reuses_only_buffers_no_one_holds(small_pool):
    a = _pool.lend((4, 5), np.float64)
    where = _address(a)
    b = _pool.lend((4, 5), np.float64)
    assert _address(b) != where  # ``a`` is still held
    view = a[1:]
    del a
    c = _pool.lend((4, 5), np.float64)
    assert _address(c) not in (where, _address(b))  # the view keeps ``a``'s buffer
    del view
    d = _pool.lend((4, 5), np.float64)
    assert _address(d) == where  # nothing reaches it any more
    assert d.flags.writeable and d.flags.c_contiguous
    assert _address(_pool.lend((5, 4), np.float64)) != where  # other shape: a new buffer
    assert _pool.lent_bytes() > 0
    _pool.clear()
    assert _pool.lent_bytes() == 0


@pytest.mark.skipif(not _pool._EXACT_REFCOUNTS, reason="lending is off on this interpreter")
@pytest.mark.parametrize("holder", ["view", "owner", "weakref-to-owner", "transpose"])
def test_lent_buffers_held_through_their_memory_owner_are_never_reused(small_pool, holder):
    a = _pool.lend((6, 7), np.float64)
    where = _address(a)
    a[...] = 1.0
    owner = a.base  # aligned_empty: a view of the uint8 array that owns the memory
    keep = {"view": a[2:], "owner": owner, "transpose": a.T}.get(holder)
    if holder == "weakref-to-owner":
        keep = weakref.ref(owner)
    del a, owner
    gc.collect()
    b = _pool.lend((6, 7), np.float64)
    assert _address(b) != where
    b[...] = 2.0
    if holder in ("view", "transpose"):
        assert np.all(keep == 1.0)  # the held view still sees its values
    del keep, b
    gc.collect()
    reused = [_address(_pool.lend((6, 7), np.float64)) for _ in range(2)]
    assert where in reused  # once nothing holds it, the buffer is lent again


@pytest.mark.parametrize("shape", [(3, 512, 512), (1, 2 << 20), (300, 301), (5,), (0, 4)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128, np.int16])
def test_aligned_empty_starts_at_cache_line_and_huge_page_boundaries(shape, dtype):
    a = _pool.aligned_empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    if a.nbytes >= 2 * _pool.HUGE_PAGE_BYTES:
        assert _address(a) % _pool.HUGE_PAGE_BYTES == 0
        # its last huge page is wholly inside the owner's memory (nothing else shares it)
        end = _address(a) + a.nbytes
        last_page_end = -(-end // _pool.HUGE_PAGE_BYTES) * _pool.HUGE_PAGE_BYTES
        assert last_page_end <= _address(a.base) + a.base.nbytes
    elif a.size:
        assert _address(a) % 64 == 0
    a[...] = 3
    assert np.all(a == 3) and a.base.dtype == np.uint8 and a.base.flags.owndata


@pytest.mark.parametrize("holder", ["memoryview", "weakref", "readonly-flag"])
def test_lend_respects_every_kind_of_holder(small_pool, holder):
    a = _pool.lend((3, 3), np.float64)
    where = _address(a)
    if holder == "memoryview":
        keep = memoryview(a)
    elif holder == "weakref":
        keep = weakref.ref(a)
        keep_strong = a  # noqa: F841 - a weakly referenced buffer is never reused, even once dropped
    else:
        a.flags.writeable = False
        keep = a
    del a
    gc.collect()
    b = _pool.lend((3, 3), np.float64)
    assert _address(b) != where
    del keep


def test_lend_is_bounded_by_the_pool_option(small_pool):
    with sparse3d.set_options(buffer_pool_bytes=4 * 800):
        held = [_pool.lend((100,), np.float64) for _ in range(3)]  # 800 bytes each
        assert _pool.lent_bytes() <= 2 * 800  # half the option; the oldest are forgotten
        assert all(h.shape == (100,) for h in held)
        big = _pool.lend((200,), np.float64)  # above a quarter of the option: not tracked
        assert _pool.lent_bytes() <= 2 * 800 and big.shape == (200,)
    with sparse3d.set_options(buffer_pool_bytes=0):
        _pool.clear()
        x = _pool.lend((10,), np.float64)
        assert _pool.lent_bytes() == 0 and x.shape == (10,)


@pytest.mark.skipif(not _pool._EXACT_REFCOUNTS, reason="lending is off on this interpreter")
@pytest.mark.parametrize("dtype", [np.float64, "f8", np.dtype("<f8"), float])
def test_lend_takes_any_dtype_spelling_and_numpy_integer_shapes(small_pool, dtype):
    a = _pool.lend((np.int64(4), 5), dtype)
    assert a.dtype == np.float64 and a.shape == (4, 5) and type(a.shape[0]) is int
    where = _address(a)
    del a
    b = _pool.lend((4, np.int32(5)), np.dtype(np.float64))
    assert _address(b) == where  # the same buffer, whatever the spelling
    assert _pool.lend((4, 5), np.float32).dtype == np.float32  # another dtype: another buffer


@pytest.mark.parametrize(
    "a, b",
    [("f8", "f8"), ("f4", "f4"), ("f4", "f8"), ("i2", "f4"), ("?", "?"), ("c8", "f8")]
    + [(">f8", ">f8"), ("<f8", ">f8")],
)
def test_result_dtype_is_numpys_promotion(a, b):
    from sparse3d._functions.products import _result_dtype

    got = _result_dtype(np.dtype(a), np.dtype(b))
    assert got == np.result_type(np.dtype(a), np.dtype(b)) and got.isnative


# -- the legacy namespace's jitter loop ---------------------------------------------------
@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nsources", [0, 1, 6])
def test_legacy_translated_dot_cubes_match_dense(forced, dtype, nsources):
    from sparse3d import legacy

    rng = np.random.default_rng(4 + nsources)
    sc = random_scene(rng, imcorner=(2, -3), nsources=nsources, dtype=dtype)
    full = np.broadcast_to
    L = legacy.Sparse3D(
        sc.data, full(sc.row, sc.data.shape), full(sc.col, sc.data.shape), sc.imshape, sc.imcorner
    )
    kept = []
    for d in OFFSETS:
        L.translate(d)
        D = _dense_at(sc, d)
        for k in (1, 3, 4, 7):
            w = rng.normal(size=(nsources, k))
            got = L.dot(w)
            ref = np.moveaxis(_model(D, w), -1, 0)
            _check(got, ref, np.result_type(dtype, np.float64))
            assert got.flags.c_contiguous  # 1.x's (k, H, W), not a transposed view
            kept.append((got, got.copy()))
    for got, snapshot in kept:
        np.testing.assert_array_equal(got, snapshot)


# -- constant weights: windows of one canvas model ----------------------------------------
@needs_numba
@pytest.mark.parametrize("imcorner", CORNERS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nsources", [0, 1, 9])
def test_constant_weights_loop_matches_dense_and_the_csr_bits(forced, monkeypatch, imcorner, dtype, nsources):
    calls = []
    orig = _functions.translated._window
    monkeypatch.setattr(_functions.translated, "_window", lambda *a: calls.append(1) or orig(*a))
    rng = np.random.default_rng(20 + nsources)
    sc = random_scene(rng, imcorner=imcorner, nsources=nsources, dtype=dtype)
    S = sc.build()
    w = rng.normal(size=(nsources, 3)).astype(dtype)
    kept = []
    for d in OFFSETS + [(-1, 3), (40, 40), (-2, -2)]:
        T = S.translate(d)
        got = T.dot(w)
        _check(got, _model(_dense_at(sc, d), w), dtype)
        if forced[-1] == "sorted":  # pixel-sorted sums, as the CSR product's: the same bits
            np.testing.assert_array_equal(got, np.asarray(T.tocsr() @ w).reshape(got.shape))
        kept.append((got, got.copy()))
    for got, snapshot in kept:
        np.testing.assert_array_equal(got, snapshot)
    if nsources:
        assert calls  # the loop took windows of the canvas model


@needs_numba
def test_canvas_is_keyed_by_the_weights_content_not_their_identity(forced):
    rng = np.random.default_rng(21)
    sc = random_scene(rng, imcorner=(5, -6), nsources=7)
    S = sc.build()
    w = rng.normal(size=(7, 2))
    S.dot(w)
    for i, d in enumerate([(1, 0), (0, 2), (-1, -1), (3, 1), (2, 2)]):
        if i == 3:
            w[2, 1] += 1.0  # the same array object, new content
        if i == 4:
            w[0, 0] = -0.0 if w[0, 0] == 0 else w[0, 0]
        got = S.translate(d).dot(w)
        np.testing.assert_allclose(got, _model(_dense_at(sc, d), w).real, atol=1e-12)
    legacy_w = w.copy()
    from sparse3d import legacy

    full = np.broadcast_to
    L = legacy.Sparse3D(
        sc.data, full(sc.row, sc.data.shape), full(sc.col, sc.data.shape), sc.imshape, sc.imcorner
    )
    for d in [(1, 1), (0, -3), (2, 0), (1, 1)]:
        L.translate(d)
        got = L.dot(legacy_w)
        ref = np.moveaxis(_model(_dense_at(sc, d), legacy_w).real, -1, 0)
        np.testing.assert_allclose(got, ref, atol=1e-12)
        assert got.flags.c_contiguous


@needs_numba
@pytest.mark.parametrize("order", ["C", "F"])
def test_canvas_tells_weights_apart_beyond_their_first_row(forced, monkeypatch, order):
    """Weights are compared bit for bit in any memory order (1.x's ``flux[:, frames]`` is
    Fortran-ordered): equal first rows with a change further down are new weights, and equal
    content in another order is the same weights (the canvas window)."""
    calls = []
    orig = _functions.translated._window
    monkeypatch.setattr(_functions.translated, "_window", lambda *a: calls.append(1) or orig(*a))
    rng = np.random.default_rng(23)
    sc = random_scene(rng, imcorner=(-2, 3), nsources=8)
    S = sc.build()
    flux = rng.normal(size=(8, 6))
    w = np.asarray(flux[:, [0, 2, 4]], order=order)
    S.dot(w)
    changed = w.copy(order=order)
    changed[-1, 2] += 1.0  # same first row, new last row
    for d, weights, window in [
        ((1, 0), w, False),  # the family's first sorted product: w remembered
        ((0, 2), changed, False),  # not w: its first row alone does not decide
        ((1, 1), changed, True),  # the same weights again: a window of the canvas model
        ((2, -1), np.asarray(changed, order="C" if order == "F" else "F"), True),  # same bits
        ((0, 0), w, False),
    ]:
        calls.clear()
        got = S.translate(d).dot(weights)
        np.testing.assert_allclose(got, _model(_dense_at(sc, d), weights).real, atol=1e-12)
        assert bool(calls) == window, d


@needs_numba
def test_canvas_is_skipped_when_stamps_spread_far_beyond_the_image(forced):
    rng = np.random.default_rng(22)
    sc = random_scene(rng, imcorner=(0, 0), nsources=6)
    row = np.broadcast_to(sc.row, sc.data.shape).copy()
    row[:, :, 0] += 500  # a canvas 40x the image
    col = np.broadcast_to(sc.col, sc.data.shape)
    S = sparse3d.Sparse3D(sc.data, row, col, sc.imshape, sc.imcorner)
    w = rng.normal(size=(6, 2))
    for d in [(0, 1), (1, 0), (-500, 2), (2, 2)]:
        got = S.translate(d).dot(w)
        D = dense_reference(sc.data, row + d[0], col + d[1], sc.imshape, sc.imcorner)
        np.testing.assert_allclose(got, _model(D, w).real, atol=1e-12)
    assert S._family.get("canvas") is None


@needs_numba
def test_large_weights_are_not_remembered(forced, monkeypatch):
    monkeypatch.setattr(_functions.translated, "CANVAS_MAX_WEIGHT_BYTES", 8)
    rng = np.random.default_rng(23)
    sc = random_scene(rng, nsources=5)
    S = sc.build()
    w = rng.normal(size=(5, 2))
    for d in [(0, 1), (1, 0), (1, 1)]:
        got = S.translate(d).dot(w)
        np.testing.assert_allclose(got, _model(_dense_at(sc, d), w).real, atol=1e-12)
    assert S._family.get("canvas") is None


@needs_numba
def test_numpy_products_amortise_numba_per_process(monkeypatch):
    """Small arrays start on NumPy's path; once the *process* has run ``REPEAT_ELEMENTS``
    stamp elements of products (counted over every family, as numba's load is paid once per
    process) the next product takes the kernels, even a family's first. Every result stays
    equal to the dense reference."""
    products = _functions.products
    rng = np.random.default_rng(5)
    kw = dict(imshape=(25, 31), stamp=(4, 3), nsources=30, imcorner=(2, -3))
    scenes = [random_scene(rng, **kw) for _ in range(3)]
    arrays = [sparse3d.Sparse3D(sc.data, sc.row, sc.col, sc.imshape, imcorner=sc.imcorner) for sc in scenes]
    size = arrays[0]._values.size
    monkeypatch.setattr(products, "REPEAT_ELEMENTS", 3 * size)
    monkeypatch.setattr(products, "REPEAT_MIN_ELEMENTS", 1)
    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 10 * size)
    monkeypatch.setattr(_kernels, "loaded", lambda: False)  # as in a fresh process
    monkeypatch.setitem(products._PROCESS, "elements", 0)
    seen: list = []
    orig = products._fast_product

    def spy(*args):
        seen.append(orig(*args))
        return seen[-1]

    monkeypatch.setattr(products, "_fast_product", spy)
    w = rng.normal(size=30)
    for S, sc in zip(arrays, scenes):
        got = S.dot(w)
        np.testing.assert_allclose(got, _model(_dense_at(sc, (0, 0)), w).real, rtol=1e-12, atol=1e-12)
    assert seen[:2] == [None, None]  # two first products, 2 * size elements in the process
    assert seen[2] is not None  # the third family's first product: the process passed 3 * size
