"""The elementwise pipeline in threads: deferred chains, the copy with bounds, the grid check.

Every threaded path is run with 1, 2 and 3 threads (thresholds lowered so that small random
scenes split) and compared bit for bit with NumPy on the raw stamp values or with a dense
reference; each test also checks that the work really was split (a test of threads that
never ran could not fail). Errors raised in a worker reach the caller unchanged, and the
floating-point error state the caller sets does not change what a deferred chain does.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import sparse3d
from sparse3d import Sparse3D, _deferred, _grid_kernels, _kernels, _threads
from sparse3d._deferred import Node
from sparse3d.testing import dense_reference, random_scene

THREADS = (1, 2, 3)


@pytest.fixture(autouse=True, params=["ufuncs", "compiled"])
def split_everything(request, monkeypatch):
    """Small arrays deferred and split into threads; runs of cheap operations compiled or not."""
    monkeypatch.setattr(_deferred, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 0)
    if request.param == "compiled":
        if not _kernels.available():
            pytest.skip("numba is not installed")
        monkeypatch.setattr(_deferred, "COMPILED_MIN_ELEMENTS", 0)
        monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)
    else:
        monkeypatch.setattr(_deferred, "COMPILED_MIN_ELEMENTS", 1 << 62)
    yield request.param
    sparse3d.set_options(num_threads=0)


@pytest.fixture
def blocks(monkeypatch):
    """The number of participants of every ``_threads.share`` call, in order (the threads
    it was given, at most its items)."""
    seen: list[int] = []
    original = _threads.share

    def share(fn, items, threads, state=None):
        seen.append(max(1, min(threads, len(items))))
        return original(fn, items, threads, state)

    monkeypatch.setattr(_threads, "share", share)
    monkeypatch.setattr(_deferred, "COPY_SPAN", 64)  # small arrays copied in several spans
    return seen


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def _gaussian(X, Y, rp, cp, sigma=1.3):
    return np.exp(-0.5 * ((X - rp) ** 2 / sigma**2 + (Y - cp) ** 2 / sigma**2)) * 1 / (2 * np.pi * sigma**2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nsources", [0, 1, 9, 70])
@pytest.mark.parametrize("chunk", [16, 1 << 16])
def test_chains_same_bits_for_every_thread_count(monkeypatch, blocks, dtype, nsources, chunk):
    monkeypatch.setattr(_deferred, "CHUNK", chunk)  # 16: many chunks, also with n >= CHUNK
    sc = random_scene(nsources, dtype=dtype, nsources=nsources, imcorner=(4, -7), stamp=(5, 4))
    y = np.random.default_rng(nsources + 1).uniform(-2, 2, size=sc.data.shape).astype(dtype)
    rng = np.random.default_rng(nsources + 2)
    rp, cp = rng.random(nsources).astype(dtype), rng.random(nsources).astype(dtype)
    ref = _gaussian(sc.data, y, rp, cp)  # NumPy, eager, on the raw stamp values
    single = np.exp(sc.data)
    for nt in THREADS:
        sparse3d.set_options(num_threads=nt)
        blocks.clear()
        X = Sparse3D(sc.data, sc.row, sc.col, sc.imshape, sc.imcorner)
        Y = Sparse3D(y, sc.row, sc.col, sc.imshape, sc.imcorner)
        L = _gaussian(X, Y, rp, cp)
        assert L._lazy is not None
        got = L.data
        assert got.dtype == ref.dtype == dtype
        np.testing.assert_array_equal(_bits(got), _bits(ref))
        dense = dense_reference(ref, sc.row, sc.col, sc.imshape, sc.imcorner)
        np.testing.assert_array_equal(L.todense(), dense)
        E = np.exp(X)  # one operation: split by stamp planes
        np.testing.assert_array_equal(_bits(E.data), _bits(single))
        if nsources and chunk == 16:
            assert max(blocks) == min(nt, 20)  # 20 stamp planes: the chain and exp were split


def test_long_chunks_per_source_operands_split(monkeypatch, blocks):
    """Chunks along the sources (n >= CHUNK): per-source operands sliced per chunk in every thread."""
    monkeypatch.setattr(_deferred, "CHUNK", 8)
    rng = np.random.default_rng(3)
    n = 37
    x = rng.uniform(-1, 1, size=(2, 3, n))
    v = rng.uniform(1, 2, size=n)
    R = np.arange(2)[:, None, None] + rng.integers(0, 5, n)
    C = np.arange(3)[None, :, None] + rng.integers(0, 5, n)
    ref = np.exp(x * v - 0.5) / (v + 1.0)
    for nt in THREADS:
        sparse3d.set_options(num_threads=nt)
        X = Sparse3D(x, R, C, (9, 9))
        got = (np.exp(X * v - 0.5) / (v + 1.0)).data
        np.testing.assert_array_equal(_bits(got), _bits(ref))
    assert max(blocks) == 3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("bad", [None, np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 450_000, -5])
def test_copy_with_bounds_threads(blocks, dtype, bad, where):
    """Thread counts split the copy (compiled or chunked); bounds reduced as with one
    thread; NaN/inf in the first, a middle or the last block."""
    rng = np.random.default_rng(2)
    a = rng.uniform(-3, 5, size=(3, 2, 150_001)).astype(dtype)  # several chunks, not a whole number
    a.reshape(-1)[7] = -0.0
    if bad is not None:
        a.reshape(-1)[where] = bad
    for nt in THREADS:
        sparse3d.set_options(num_threads=nt)
        blocks.clear()
        out, bounds = _deferred.copy_with_bounds(a)
        np.testing.assert_array_equal(out, a)
        assert not out.flags.writeable and out.dtype == a.dtype
        assert bounds == (None if bad is not None else (float(a.min()), float(a.max())))
        assert blocks == [nt]


def test_elementwise_passes_follow_threads_for_by_default(monkeypatch, blocks):
    """By default the copy, the grid check and a chain's evaluation use ``threads_for``
    threads (above ``PARALLEL_MIN_WORK`` values); a count asked for applies to all three."""
    monkeypatch.delenv(_threads.ENV_VAR, raising=False)
    monkeypatch.setattr(_threads, "_usable_cpus", lambda: 3)
    monkeypatch.setattr(_threads, "idle_cpus", lambda: None)  # the machine's load not known
    sparse3d.set_options(num_threads=0)
    assert _kernels.elementwise_threads(10**9) == 3
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 100)
    assert _kernels.elementwise_threads(99) == 1
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 0)
    sc = random_scene(1, nsources=30, stamp=(6, 5))
    X = Sparse3D(sc.data, sc.row, sc.col, sc.imshape, sc.imcorner)
    blocks.clear()
    got = np.exp(X).data  # one operation: the stamp rows in pieces, three threads
    np.testing.assert_array_equal(_bits(got), _bits(np.exp(sc.data)))
    assert blocks == [3]
    blocks.clear()
    got = (X * 2.5).data  # one cheap operation streams memory: one thread
    np.testing.assert_array_equal(_bits(got), _bits(sc.data * 2.5))
    assert blocks == [1]
    monkeypatch.setenv(_threads.ENV_VAR, "2")
    assert _kernels.elementwise_threads(10**9) == 2
    sparse3d.set_options(num_threads=3)
    assert _kernels.elementwise_threads(10**9) == 3


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_share_gives_every_item_once_in_order(threads):
    """``share`` returns ``[fn(item, state)]`` in item order; every participant (at most one per
    thread) enters its state once, in its own thread; with two participants forced to meet
    (a barrier on their first items) both really took items."""
    import threading

    items = list(range(40))
    entered: list[int] = []
    barrier = threading.Barrier(min(threads, 2), timeout=30)

    class State:
        def __enter__(self):
            entered.append(threading.get_ident())
            self.first = True
            return self

        def __exit__(self, *exc):
            return False

    def fn(item, st):
        if st.first and threads > 1:
            st.first = False
            if len(entered) <= 2:  # the first two participants wait for each other once
                barrier.wait()
        return (item * item, threading.get_ident())

    got = _threads.share(fn, items, threads, State)
    assert [g[0] for g in got] == [i * i for i in items]
    assert len(entered) <= threads  # a worker may run two participants one after the other
    takers = {g[1] for g in got}
    assert takers <= set(entered)
    assert len(takers) == 1 if threads == 1 else len(takers) >= 2  # the barrier made two take items


def test_share_raises_a_participants_error():
    def fn(item, _):
        if item == 7:
            raise ZeroDivisionError("item 7")
        return item

    with pytest.raises(ZeroDivisionError, match="item 7"):
        _threads.share(fn, list(range(20)), 2)
    assert _threads.share(fn, [], 2) == []


def _grid(rng, nr, nc, n, lo=-50, hi=50, dtype=np.int64):
    r0, c0 = rng.integers(lo, hi, n), rng.integers(lo, hi, n)
    R = (np.arange(nr)[:, None, None] + r0).astype(dtype)
    C = (np.arange(nc)[None, :, None] + c0).astype(dtype)
    full = (nr, nc, n)
    return np.ascontiguousarray(np.broadcast_to(R, full)), np.ascontiguousarray(np.broadcast_to(C, full))


@pytest.mark.parametrize("pos", [np.int16, np.int32, np.int64])
@pytest.mark.parametrize("corner", [np.int16, np.int32, np.int64])
def test_match_grid_every_thread_count(blocks, pos, corner, monkeypatch):
    """One pass over row and col in spans of planes (odd spans and plane counts included):
    a pixel off the grid in any plane of either array is found, whatever the thread count."""
    if not _kernels.available():
        pytest.skip("numba is not installed")
    monkeypatch.setattr(_grid_kernels, "MATCH_SPAN", 40)  # spans of 2 planes of 33 sources
    rng = np.random.default_rng(5)
    for nr, nc in ((7, 4), (5, 3)):  # 28 and 15 planes: an even and an odd count
        R, C = _grid(rng, nr, nc, 33, dtype=pos)
        r0, c0 = R[0, 0].astype(corner), C[0, 0].astype(corner)
        for nt in THREADS:
            sparse3d.set_options(num_threads=nt)
            assert _grid_kernels.match_grid(R, C, r0, c0)
            for which in (0, 1):
                for i, j in ((nr - 1, 0), (4, nc - 1), (0, 1), (3, 2), (nr - 1, nc - 1), (0, 0)):
                    bad = [R.copy(), C.copy()]
                    bad[which][i, j, 17] += 1
                    expect = np.array_equal(bad[0], R) and np.array_equal(bad[1], C)
                    assert _grid_kernels.match_grid(bad[0], bad[1], r0, c0) is expect is False
    assert max(blocks) == 3


def test_match_grid_near_the_corner_type_limit():
    """Corners near their type's limit: ``corner + i`` is computed in int64, never wrapped."""
    if not _kernels.available():
        pytest.skip("numba is not installed")
    for nt in THREADS:
        sparse3d.set_options(num_threads=nt)
        first = np.array([32_760, 5], dtype=np.int16)
        R = first.astype(np.int64) + np.arange(12)[:, None, None] * np.ones((12, 2, 2), np.int64)
        C = first.astype(np.int64) + np.arange(2)[None, :, None] * np.ones((12, 2, 2), np.int64)
        R, C = np.ascontiguousarray(R), np.ascontiguousarray(C)
        assert _grid_kernels.match_grid(R, C, first, first)
        wrapped = R - 2**16  # what first + i wrapped in int16 would give
        assert not _grid_kernels.match_grid(wrapped, C, first, first)


def test_match_grid_adds_no_kernel_signature():
    if not _kernels.available():
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(8)
    R, C = _grid(rng, 6, 3, 11, dtype=np.int32)
    sparse3d.set_options(num_threads=1)
    _grid_kernels.match_grid(R, C, R[0, 0].astype(np.int16), C[0, 0].astype(np.int16))
    before = len(_grid_kernels._compiled("_match_loop").signatures)
    sparse3d.set_options(num_threads=3)
    _grid_kernels.match_grid(R, C, R[0, 0].astype(np.int16), C[0, 0].astype(np.int16))
    assert len(_grid_kernels._compiled("_match_loop").signatures) == before


def test_construction_and_interning_off_grid_in_a_late_block(blocks):
    """A pixel off the grid only in the last stamp rows: the general path, the same array."""
    rng = np.random.default_rng(11)
    nr, nc, n = 6, 5, 40
    R, C = _grid(rng, nr, nc, n, lo=0, hi=40)  # every pixel inside the image
    data = rng.uniform(1, 2, size=(nr, nc, n))
    R2 = R.copy()
    R2[nr - 1, 0, 13] += 2  # the probe of the last plane (nr-1, nc-1) does not see it
    shape, corner = (60, 70), (-3, -2)
    for nt in THREADS:
        sparse3d.set_options(num_threads=nt)
        for rows in (R, R2):
            S = Sparse3D(data, rows, C, shape, corner)
            np.testing.assert_array_equal(S.todense(), dense_reference(data, rows, C, shape, corner))
            T = Sparse3D(data * 2, rows, C, shape, corner)  # interned against S (or not)
            np.testing.assert_array_equal(T.todense(), dense_reference(data * 2, rows, C, shape, corner))
        assert not np.array_equal(
            Sparse3D(data, R, C, shape, corner).todense(), Sparse3D(data, R2, C, shape, corner).todense()
        )


def test_position_errors_are_the_same_for_every_thread_count():
    rng = np.random.default_rng(12)
    R, C = _grid(rng, 6, 4, 30)
    R[5, 1, 20] = 2**62  # beyond the supported range, in the last rows
    messages = set()
    for nt in THREADS:
        sparse3d.set_options(num_threads=nt)
        with pytest.raises(ValueError) as err:
            Sparse3D(np.ones(R.shape), R, C, (50, 50))
        messages.add(str(err.value))
    assert len(messages) == 1 and "row" in messages.pop()


class _Refuse:
    """A ufunc stand-in raising on the chunk that holds ``bad`` (in whichever thread runs it)."""

    __name__ = "refuse"

    def __init__(self, bad):
        self.bad = bad

    def __call__(self, x, out):
        if (x == -self.bad).any():
            raise ArithmeticError(f"refused the value {self.bad}")
        np.negative(x, out=out)
        return out


def test_errors_in_a_worker_reach_the_caller_unchanged(monkeypatch, blocks):
    monkeypatch.setattr(_deferred, "CHUNK", 32)
    leaf = np.arange(4 * 5 * 30, dtype=np.float64).reshape(4, 5, 30)
    leaf.flags.writeable = False
    inner = Node(np.negative, (leaf,), np.dtype(np.float64), None, 1)
    for bad, nt in ((599.0, 3), (599.0, 2), (0.0, 3), (599.0, 1)):  # last block, first block
        sparse3d.set_options(num_threads=nt)
        root = Node(_Refuse(bad), (inner,), np.dtype(np.float64), None, 2)
        with pytest.raises(ArithmeticError, match=f"^refused the value {bad}$"):
            _deferred.evaluate(root, leaf.shape)
    good = Node(_Refuse(-1.0), (inner,), np.dtype(np.float64), None, 2)
    np.testing.assert_array_equal(_deferred.evaluate(good, leaf.shape), leaf)
    assert 3 in blocks


def test_caller_error_state_does_not_change_a_threaded_chain(blocks, monkeypatch):
    """np.errstate is per thread: workers evaluate under "ignore" as the caller's thread does,
    what was recorded silently stays silent, and the caller's own state is left as it was."""
    monkeypatch.setattr(_deferred, "CHUNK", 16)  # chains of several chunks: split among threads
    rng = np.random.default_rng(4)
    sc = random_scene(4, dtype=np.float32, nsources=20, stamp=(6, 3))
    for nt in THREADS:
        sparse3d.set_options(num_threads=nt)
        X = Sparse3D(sc.data, sc.row, sc.col, sc.imshape, sc.imcorner)
        with np.errstate(all="ignore"):
            Z = np.exp(X * 1000.0) / (X * 0.0)  # overflow, inf/0, 0/0: all ignored here
        assert Z._lazy is not None
        with warnings.catch_warnings(), np.errstate(all="raise"):
            warnings.simplefilter("error")
            state = np.geterr()
            got = Z.data  # evaluated in threads under other settings: nothing reported
            assert np.geterr() == state
        with np.errstate(all="ignore"):
            ref = np.exp(sc.data * 1000.0) / (sc.data * np.float32(0.0))
        np.testing.assert_array_equal(_bits(got), _bits(ref))
        # proven safe under "raise": deferred, and evaluated in threads without raising
        v = rng.uniform(1, 2, size=20).astype(np.float32)
        with np.errstate(over="raise", invalid="raise", divide="raise"):  # under: ignored (deferral)
            W = np.exp(-0.5 * (X - v) ** 2) / (v + 1)
            assert W._lazy is not None
            got = W.data
        np.testing.assert_array_equal(_bits(got), _bits(np.exp(-0.5 * (sc.data - v) ** 2) / (v + 1)))
        # not provable and reported: computed at once in the caller, which raises there
        with np.errstate(over="raise"), pytest.raises(FloatingPointError):
            np.exp(X * 1000.0)
    assert max(blocks) == 3


def test_grid_positions_in_a_lent_buffer_are_reused_only_after_death(monkeypatch):
    """Grid positions share one lent buffer (sparse3d._pool.lend): a live array keeps its
    positions while other grids are built, they are read-only, and once the
    arrays die the next grid of that shape reuses the buffer."""
    from sparse3d import _kernels, _pool

    if not _kernels.available():
        pytest.skip("numba is not installed")
    monkeypatch.setattr(_pool, "MIN_BYTES", 0)
    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)  # the compact grid path at this small size
    rng = np.random.default_rng(21)
    nr, nc, n = 4, 3, 50
    R1, C1 = _grid(rng, nr, nc, n, lo=0, hi=30)
    R2, C2 = _grid(rng, nr, nc, n, lo=0, hi=30)
    data = rng.uniform(1, 2, size=(nr, nc, n))
    S1 = Sparse3D(data, R1, C1, (40, 40))
    s1 = S1._structure
    assert s1._row.base is not None and s1._row.strides[1] == 0  # stored compactly
    S2 = Sparse3D(data, R2, C2, (40, 40))
    for S, R, C in ((S1, R1, C1), (S2, R2, C2)):
        np.testing.assert_array_equal(S._structure._row, R)
        np.testing.assert_array_equal(S._structure._col, C)
        np.testing.assert_array_equal(S.todense(), dense_reference(data, R, C, (40, 40)))
        assert not S._structure._row.flags.writeable and not S._structure._col.flags.writeable
    buffers = {id(S1._structure._row.base), id(S2._structure._row.base)}
    assert len(buffers) == 2  # S1's buffer was in use: S2 got another
    del S1, S2, s1
    import gc

    gc.collect()
    S3 = Sparse3D(data, R2, C2, (40, 40))
    assert id(S3._structure._row.base) in buffers  # an already-faulted buffer again
    np.testing.assert_array_equal(S3._structure._row, R2)
    np.testing.assert_array_equal(S3.todense(), dense_reference(data, R2, C2, (40, 40)))


@pytest.mark.parametrize("sigma", [1.3, "per-source"])
def test_gaussian_design_block_same_bits_in_threads(blocks, sigma):
    """The Gaussian PSF's stamp block (one product per value) is split by stamp rows among
    threads: the same bits as NumPy's single product, for every thread count."""
    from sparse3d.psf import Gaussian

    rng = np.random.default_rng(3)
    n = 25
    row, col = rng.uniform(-3, 30, n), rng.uniform(-3, 20, n)
    s = rng.uniform(0.8, 2.0, n) if sigma == "per-source" else sigma
    ref = None
    for nt in THREADS:
        sparse3d.set_options(num_threads=nt)
        blocks.clear()
        L = Gaussian(s).design(row, col, (28, 18), (7, 6), imcorner=(0, 0))
        assert nt == 1 or nt in blocks  # the block was split
        got = L.data
        if ref is None:  # one thread: the profile at the pixel centres, computed directly
            dr, dc, s2 = L.row - row, L.col - col, np.asarray(s) ** 2
            profile = np.exp(-0.5 * (dr**2 + dc**2) / s2) / (2 * np.pi * s2)
            np.testing.assert_allclose(got, profile, rtol=1e-12)
            ref = got.copy()
        np.testing.assert_array_equal(_bits(got), _bits(ref))
