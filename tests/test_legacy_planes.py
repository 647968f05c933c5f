"""The legacy jitter loop's product in one call (``_functions.planes.translated_planes``) and the
O(1) absolute ``translate`` of ``sparse3d.legacy``, against dense NumPy references.

Kernels and lending are forced on the small scenes (``MIN_ELEMENTS = 0``, ``MIN_BYTES = 0``).
"""

from __future__ import annotations

import numpy as np
import pytest
from translation_cases import CORNERS, OFFSETS  # tests/ is on sys.path

from sparse3d import _kernels, _planes_kernels, _pool, legacy
from sparse3d.legacy import _sparse3d as legacy_module
from sparse3d.testing import dense_reference, random_scene

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")


@pytest.fixture
def fast_calls(monkeypatch, small_kernels):
    """Kernels and lending on small arrays; records what the one-call product returned."""
    calls: list = []
    orig = legacy_module.translated_planes

    def spy(a, w, offset):
        got = orig(a, w, offset)
        calls.append(None if got is None else (offset, got.shape))
        return got

    monkeypatch.setattr(legacy_module, "translated_planes", spy)
    _pool.clear()
    yield calls
    _pool.clear()


def _legacy(sc):
    full = np.broadcast_to
    return legacy.Sparse3D(
        sc.data, full(sc.row, sc.data.shape), full(sc.col, sc.data.shape), sc.imshape, sc.imcorner
    )


def _model(sc, d, w):
    """``(k, H, W)``: the stamps at the positions + ``d``, contracted with ``w`` in complex128."""
    D = dense_reference(sc.data, sc.row + d[0], sc.col + d[1], sc.imshape, sc.imcorner)
    m = np.tensordot(D.astype(np.complex128), w.astype(np.complex128), axes=([2], [0]))
    return np.moveaxis(m, -1, 0).real


def _check(got, ref, dtype):
    tol = 2e-5 if np.dtype(dtype) == np.float32 else 1e-12
    assert got.shape == ref.shape and got.dtype == dtype and got.flags.c_contiguous
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("imcorner", CORNERS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nsources", [0, 1, 9])
def test_jitter_loop_in_one_call_matches_dense(fast_calls, imcorner, dtype, nsources):
    """A design translated in place to every offset, a (k, H, W) model at each: the family's
    products from the third on take the one-call path and build no translated array; every
    model is the dense one and stays untouched by later models."""
    rng = np.random.default_rng(nsources + len(str(imcorner)))
    sc = random_scene(rng, imshape=(23, 19), stamp=(5, 4), imcorner=imcorner, nsources=nsources, dtype=dtype)
    designs = [_legacy(sc)]
    kept = []
    for d in OFFSETS:
        for L in designs:
            L.translate(d)
        w = rng.normal(size=(nsources, 3)).astype(dtype)
        for L in designs:
            got = L.dot(w)
            _check(got, _model(sc, d, w), dtype)
            kept.append((got, got.copy()))
    for got, snapshot in kept:
        np.testing.assert_array_equal(got, snapshot)
    if nsources:  # the family's first product is the grid scatter, its second builds the planes inputs
        assert fast_calls[2:] == [(tuple(d), (3, *sc.imshape)) for d in OFFSETS[2:]]
        assert designs[0]._cur_array is None  # no translated 2.x array was built


def test_one_call_path_gives_the_bits_of_the_general_path(fast_calls, monkeypatch):
    rng = np.random.default_rng(4)
    sc = random_scene(rng, imshape=(31, 27), stamp=(6, 5), imcorner=(3, -9), nsources=30)
    fast, general = _legacy(sc), _legacy(sc)
    ws = [np.asfortranarray(rng.normal(size=(30, 4))) for _ in OFFSETS]  # 1.x's flux[:, frames]
    got = []
    for d, w in zip(OFFSETS, ws):
        fast.translate(d)
        got.append(fast.dot(w))
    assert sum(c is not None for c in fast_calls) >= len(OFFSETS) - 2
    monkeypatch.setattr(legacy_module, "translated_planes", lambda *args: None)
    for d, w, g in zip(OFFSETS, ws, got):
        general.translate(d)
        np.testing.assert_array_equal(general.dot(w), g)


def test_repeated_weights_clear_and_bad_weights_keep_the_general_path(fast_calls):
    rng = np.random.default_rng(6)
    sc = random_scene(rng, imshape=(19, 17), stamp=(4, 4), imcorner=(-2, 5), nsources=12)
    L = _legacy(sc)
    w = rng.normal(size=(12, 2))
    for d in [(0, 1), (2, 2), (-1, 3), (1, -4)]:  # the same weights at every offset: the canvas model
        L.translate(d)
        _check(L.dot(w), _model(sc, d, w), np.float64)
    for d in [(3, 0), (0, 0)]:  # new weights every time: the one-call path
        L.translate(d)
        w2 = rng.normal(size=(12, 2))
        _check(L.dot(w2), _model(sc, d, w2), np.float64)
    assert fast_calls[-1] is not None
    with pytest.raises(ValueError, match="nsources=12"):
        L.dot(np.ones((5, 2)))
    L.clear()  # no values until the next translate
    np.testing.assert_array_equal(L.dot(rng.normal(size=(12, 2))), 0)
    L.translate((1, 1))
    w3 = rng.normal(size=(12, 3))
    _check(L.dot(w3), _model(sc, (1, 1), w3), np.float64)


def test_translate_validates_at_once_and_builds_the_2x_array_only_when_asked(fast_calls):
    rng = np.random.default_rng(8)
    sc = random_scene(rng, imshape=(15, 13), stamp=(3, 3), imcorner=(4, -2), nsources=5)
    L = _legacy(sc)
    L.translate((2, -1))
    assert L.coord == (2, -1) and L._cur_array is None
    refused = [((1.5, 0), ValueError), ("ab", TypeError), ((1, 2, 3), ValueError), ((2**62, 0), ValueError)]
    for bad, err in refused:
        with pytest.raises(err):
            L.translate(bad)
        assert L.coord == (2, -1)  # a refused translation changes nothing
    L.translate((np.int64(1), 3.0))  # integral floats and NumPy integers, as 2.x translate takes them
    assert L.coord == (1, 3) and all(type(v) is int for v in L.coord)
    ref = dense_reference(sc.data, sc.row + 1, sc.col + 3, sc.imshape, sc.imcorner)
    H, W = sc.imshape
    np.testing.assert_allclose(L.toarray(), ref.reshape(H * W, -1))  # builds the 2.x array
    assert L.to_v2() is L._cur_array
    L.reset()
    assert L.coord == (0, 0) and L.to_v2() is L._base


def test_serial_below_the_threshold_whatever_the_thread_count(monkeypatch):
    """A jitter-loop-sized product runs in the calling thread even when threads are asked for."""
    import sparse3d
    from sparse3d import _functions, _threads

    used: list = []
    monkeypatch.setattr(_threads, "share", lambda *args: used.append(args) or [])
    rng = np.random.default_rng(2)
    sc = random_scene(rng, imshape=(40, 30), stamp=(5, 5), nsources=50)
    S = sc.build()
    inputs = _functions.translated._planes_inputs(S)
    w = rng.normal(size=(50, 3))
    ref = _model(sc, (0, 0), w)
    with sparse3d.set_options(num_threads=2):
        monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 0)
        out = _planes_kernels.planes_scatter(*inputs, w, S._structure.root_corner, np.empty((3, 40, 30)))
        assert not used
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
        monkeypatch.setattr(_planes_kernels, "SERIAL_BELOW", 0)
        _planes_kernels.planes_scatter(*inputs, w, S._structure.root_corner, np.empty((3, 40, 30)))
        assert used
