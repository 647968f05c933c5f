"""Many-frame fits in threads (sparse3d._threads): the same bits for any thread count, and the
dense least-squares answer per frame.

The threads split work that is independent per frame column (the supernodal solve), per band
of sources (the stamp right-hand side's image sweep) or per range of pixel blocks (the data
check, the square sums), and the right-hand sides run ahead, in a worker thread, while the
normal matrix is factorised. Every test forces the compiled paths and threads on small scenes.
"""

import dataclasses
import threading
import warnings

import numpy as np
import pytest
from fit_reference import dense_design, lstsq_fit

import sparse3d
from sparse3d import Sparse3D, _threads
from sparse3d.fit import UnconstrainedSourceWarning, fit_design, rhs
from sparse3d.testing import random_scene


@pytest.fixture
def threaded(compiled_kernels, monkeypatch):
    """Threads whatever the problem size (the compiled paths, every problem 'large')."""
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 0)


def _scene(seed, n=60, imshape=(23, 29), imcorner=(-3, 5), dtype=np.float64):
    """Regular positive stamps over (and off) every image edge, a non-zero image corner."""
    sc = random_scene(
        np.random.default_rng(seed), imshape=imshape, stamp=(4, 3), nsources=n, imcorner=imcorner, dtype=dtype
    )
    sc = dataclasses.replace(sc, data=(np.abs(sc.data) + 0.1).astype(sc.data.dtype))
    return sc, Sparse3D(sc.data, sc.row, sc.col, sc.imshape, sc.imcorner)


def _fit(S, d, nt, **kw):
    with sparse3d.set_options(num_threads=nt), warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconstrainedSourceWarning)
        return fit_design(S, d, imshape=S.imshape, solver="nd", **kw)


# ---- the thread count and the split -------------------------------------------------------


def test_num_threads_from_option_environment_and_cpus(monkeypatch):
    monkeypatch.delenv(_threads.ENV_VAR, raising=False)
    default = _threads.num_threads()
    assert 1 <= default <= _threads.MAX_DEFAULT_THREADS
    monkeypatch.setenv(_threads.ENV_VAR, "3")
    assert _threads.num_threads() == 3
    with sparse3d.set_options(num_threads=5):
        assert _threads.num_threads() == 5  # the option wins over the environment
        assert sparse3d.get_options()["num_threads"] == 5
    assert _threads.num_threads() == 3
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv(_threads.ENV_VAR, bad)
        with pytest.raises(ValueError, match=_threads.ENV_VAR):
            _threads.num_threads()
    with pytest.raises(ValueError, match="num_threads"):
        sparse3d.set_options(num_threads=-1)


def test_threads_for_small_work_and_inside_workers(monkeypatch):
    with sparse3d.set_options(num_threads=3):
        assert _threads.threads_for(_threads.PARALLEL_MIN_WORK - 1) == 1
        assert _threads.threads_for(_threads.PARALLEL_MIN_WORK) == 3
        # nested: a worker thread runs its own work serially
        assert _threads.submit(_threads.threads_for, 1 << 40).result() == 1
        assert (
            threading.current_thread().name
            != _threads.submit(lambda: threading.current_thread().name).result()
        )


def test_threads_for_leaves_a_thread_to_running_background_work(monkeypatch):
    monkeypatch.delenv(_threads.ENV_VAR, raising=False)
    monkeypatch.setattr(_threads, "num_threads", lambda: 2)
    monkeypatch.setattr(_threads, "idle_cpus", lambda: None)
    big = 1 << 40
    assert _threads.threads_for(big) == 2
    go = threading.Event()
    fut = _threads.submit(go.wait, 30)
    try:
        assert _threads.threads_for(big) == 1  # one core stays with the submitted work
        with sparse3d.set_options(num_threads=2):
            assert _threads.threads_for(big) == 2  # an explicit count is used as given
    finally:
        go.set()
    assert fut.result() is True
    assert _threads.threads_for(big) == 2  # finished: counted no longer
    with pytest.raises(ZeroDivisionError):  # a failing task is counted out too
        _threads.submit(lambda: 1 / 0).result()
    assert _threads.threads_for(big) == 2


@pytest.mark.parametrize("total", [0, 1, 7, 8, 17, 100, 4097])
@pytest.mark.parametrize("parts", [1, 2, 3, 16])
@pytest.mark.parametrize("align", [1, 8])
def test_split_covers_in_aligned_nonempty_blocks(total, parts, align):
    e = _threads.split(total, parts, align)
    assert e[0] == 0 and e[-1] == total and len(e) - 1 <= parts
    assert all(b > a for a, b in zip(e[:-1], e[1:])) or total == 0
    assert all(x % align == 0 for x in e[1:-1])


def test_run_returns_in_order_and_raises_the_error():
    assert _threads.run(lambda a, b: a * b, [(1, 2), (3, 4), (5, 6)]) == [2, 12, 30]
    assert _threads.run(lambda a: a, []) == []

    def boom(i):
        if i == 0:
            raise KeyError("worker")
        return i

    with pytest.raises(KeyError, match="worker"):
        _threads.run(boom, [(0,), (1,)])


# ---- the same bits for any thread count ---------------------------------------------------


def _stamps(S):
    values = np.ascontiguousarray(S.data, dtype=np.float64)
    values.flags.writeable = False
    r0, c0 = (np.ascontiguousarray(x[0, 0], dtype=np.intp) for x in (S.row, S.col))
    return values, r0, c0, S.imshape, S.imcorner


@pytest.mark.parametrize("n", [0, 1, 2, 60])
def test_banded_right_hand_side_is_bit_identical(n, threaded):
    # the image sweep in bands of sources (1, 2, 3 and more threads than rows of sources),
    # weights and a mask inside the kernel: the bits of one sweep, and the dense product
    rng = np.random.default_rng(3 + n)
    sc, S = _scene(3 + n, n=n)
    stamps = _stamps(S)
    A = dense_design(sc)
    U = rng.normal(size=(A.shape[0], 9))
    ivar = rng.uniform(0.5, 2.0, A.shape[0])
    keep = rng.random(A.shape[0]) > 0.2
    U[~keep, 2] = np.inf  # masked pixels may hold anything
    with sparse3d.set_options(num_threads=1):
        ref = rhs._stamp_rhs(stamps, U, ivar, keep)
    np.testing.assert_allclose(
        ref, A.T @ np.where(keep[:, None], ivar[:, None] * U, 0.0), rtol=1e-12, atol=1e-12
    )
    for nt in (2, 3, 40):
        with sparse3d.set_options(num_threads=nt):
            np.testing.assert_array_equal(rhs._stamp_rhs(stamps, U, ivar, keep), ref)


@pytest.mark.parametrize("n", [0, 1, 60])
@pytest.mark.parametrize("weighted", [False, True])
def test_sweep_square_sums_match_the_dense_sums_and_the_row_blocks(n, weighted, threaded):
    # d^T C^-1 d made by the image sweep of the right-hand sides (many frames: in the same read
    # of the frames; 0 sources: no sweep, its own pass): the dense sum over the kept pixels, and
    # the bits of the separate pass by image rows, in 1, 2, 3 and 40 threads (bands of sources)
    rng = np.random.default_rng(50 + n)
    sc, S = _scene(50 + n, n=n)
    stamps = _stamps(S)
    A = dense_design(sc)
    U = rng.normal(size=(A.shape[0], 9)) * 3.0
    ivar = rng.uniform(0.5, 2.0, A.shape[0]) if weighted else None
    keep = rng.random(A.shape[0]) > 0.2
    U[~keep, 2] = np.nan  # masked pixels may hold anything
    w = np.where(keep, 1.0 if ivar is None else ivar, 0.0)
    ref = (w[:, None] * np.where(keep[:, None], 0.25 * U, 0.0) ** 2).sum(axis=0)
    rows = rhs._stamp_square_sum(U, ivar, keep, 0.25, block=rhs._square_sum_block(stamps))
    np.testing.assert_allclose(rows, ref, rtol=1e-13)
    for nt in (1, 2, 3, 40):
        with sparse3d.set_options(num_threads=nt):
            got, sq = rhs._stamp_rhs(stamps, U, ivar, keep, square_scale=0.25)
            np.testing.assert_array_equal(got, rhs._stamp_rhs(stamps, U, ivar, keep))
            np.testing.assert_array_equal(sq, rows)
    wu = np.where(keep[:, None], (1.0 if ivar is None else ivar[:, None]) * U, 0.0)
    np.testing.assert_allclose(got, A.T @ wu, rtol=1e-12, atol=1e-12)


def test_solve_kernel_column_blocks_are_bit_identical(compiled_kernels):
    # block_solve over any range of columns: each column the bits of the whole call
    from sparse3d.fit import normal_matrix
    from sparse3d.fit._supernodal_kernels import block_solve
    from sparse3d.fit.ordering import stamp_boxes
    from sparse3d.fit.supernodal import _NDFactor

    _, S = _scene(8, n=150, imshape=(40, 44))
    G = normal_matrix(S, None)
    import scipy.sparse

    G = (G + scipy.sparse.diags(np.full(S.nsources, 0.05 * G.diagonal().max()), format="csr")).tocsr()
    F = _NDFactor(G, stamp_boxes(S, None))
    b = np.random.default_rng(2).normal(size=(S.nsources, 11))
    whole = np.full(b.shape, np.nan)
    block_solve(*F._blocks, F.perm, b, whole, 0, 11, np.empty((S.nsources, 11)))
    full = (G + G.T - scipy.sparse.diags(G.diagonal())).toarray()
    np.testing.assert_allclose(whole, np.linalg.solve(full, b), rtol=1e-10, atol=1e-12)
    for edges in ([0, 1, 11], [0, 3, 4, 9, 11], [0, 5, 6, 7, 8, 10, 11]):
        out = np.full(b.shape, np.nan)
        for t0, t1 in zip(edges[:-1], edges[1:]):
            block_solve(*F._blocks, F.perm, b, out, t0, t1, np.full((S.nsources, t1 - t0), np.nan))
        np.testing.assert_array_equal(out, whole)


@pytest.mark.parametrize("k", [1, 2, 3, 17, 100])
@pytest.mark.parametrize("options", ["plain", "errors_mask"])
def test_fit_of_k_frames_bit_identical_for_any_thread_count(k, options, threaded):
    # the whole fit (ahead right-hand sides, banded sweep, column-block solve, threaded data
    # check and square sums) in 1, 2 and 3 threads: weights, chi-square, errors the same bits
    rng = np.random.default_rng(k)
    _, S = _scene(k)
    d = rng.normal(size=(*S.imshape, k))
    kw = {}
    if options == "errors_mask":
        kw = dict(errors=rng.uniform(0.5, 2.0, S.imshape), mask=rng.random(S.imshape) < 0.15)
        d[kw["mask"]] = np.nan
    ref = _fit(S, d, 1, **kw)
    for nt in (2, 3):
        res = _fit(S, d, nt, **kw)
        np.testing.assert_array_equal(res.weights, ref.weights)
        np.testing.assert_array_equal(res.chi2, ref.chi2)
        np.testing.assert_array_equal(res.weights_err, ref.weights_err)


def test_fit_runs_the_right_hand_sides_ahead(threaded, monkeypatch):
    # with threads and enough frames the right-hand sides are made in a worker thread while
    # the normal matrix is factorised, and used (not recomputed); never with one thread
    made, used = [], []
    start, take = rhs._Ahead.start.__func__, rhs._Ahead.take

    def counting_start(cls, *a):
        out = start(cls, *a)
        made.append(out is not None)
        return out

    def counting_take(self, what, D):
        out = take(self, what, D)
        used.append((what, out is not None))
        return out

    monkeypatch.setattr(rhs._Ahead, "start", classmethod(counting_start))
    monkeypatch.setattr(rhs._Ahead, "take", counting_take)
    _, S = _scene(5)
    d = np.random.default_rng(5).normal(size=(*S.imshape, 12))
    _fit(S, d, 2)
    assert made == [True] and sorted(used) == [("rhs", True), ("square_sum", True)]
    made.clear()
    used.clear()
    _fit(S, d, 1)
    assert made == [False] and used == []


@pytest.mark.parametrize("nt", [1, 2])
def test_many_frames_nonfinite_data_raises_the_same_error(nt, threaded):
    # with threads the finiteness of many frames is read from the worker's square sums: NaN or
    # inf in a kept pixel raises the one error (before any other: invalid errors too), masked
    # ones pass; finite values whose squares overflow are fitted as without the worker
    _, S = _scene(6)
    rng = np.random.default_rng(6)
    d = rng.normal(size=(*S.imshape, 12))
    for bad in (np.nan, np.inf, -np.inf):
        for frame in (0, 5, 11):
            d2 = d.copy()
            d2[4, 7, frame] = bad
            with pytest.raises(ValueError, match="data contains non-finite values in unmasked pixels"):
                _fit(S, d2, nt)
            err = np.ones(S.imshape)
            err[2, 2] = -1.0
            with pytest.raises(ValueError, match="data contains non-finite values in unmasked pixels"):
                _fit(S, d2, nt, errors=err)
            mask = np.zeros(S.imshape, bool)
            mask[4, 7] = True
            res = _fit(S, d2, nt, mask=mask)
            np.testing.assert_array_equal(
                res.weights, _fit(S, np.where(mask[..., None], 0.0, d2), 1, mask=mask).weights
            )
    d2 = d.copy()
    d2[4, 7, 3] = np.nan
    masks = np.zeros((*S.imshape, 12), bool)
    masks[1, 1, ::2] = True  # two distinct masks: two factorisations
    with pytest.raises(ValueError, match="data contains non-finite values in unmasked pixels"):
        _fit(S, d2, nt, mask=masks)
    with pytest.raises(ValueError, match="data contains non-finite values in unmasked pixels"):
        fit_design(S.tocsr(), d2, imshape=S.imshape)  # a sparse matrix: no stamps
    masks[4, 7, 3] = True
    assert np.isfinite(_fit(S, d2, nt, mask=masks).chi2).all()
    big = d * 1e160  # finite, its squares overflow: the explicit check passes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = _fit(S, big, nt).weights
        np.testing.assert_array_equal(got, _fit(S, big, 1).weights)
    np.testing.assert_allclose(got, 1e160 * _fit(S, d, 1).weights, rtol=1e-9)


# ---- against the dense least squares ------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 17])
def test_threaded_fit_matches_lstsq_per_frame(k, threaded):
    # float32 frames as an (H, W, k) stack, a mask per frame (two distinct masks: two
    # factorisations), errors, stamps over every edge, a non-zero image corner: every frame
    # against np.linalg.lstsq on its kept pixels, in 2 threads
    rng = np.random.default_rng(20 + k)
    sc, S = _scene(20 + k, n=50, dtype=np.float32)
    A = dense_design(sc)
    H, W = S.imshape
    frames = rng.normal(size=(H, W, k)).astype(np.float32)
    m1, m2 = rng.random((H, W)) < 0.1, rng.random((H, W)) < 0.25
    mask = np.stack([m1 if j % 2 else m2 for j in range(k)], axis=2)
    err = rng.uniform(0.5, 1.5, (H, W))
    d = np.where(mask, np.float32(np.nan), frames)
    res = _fit(S, d, 2, mask=mask, errors=err)
    for j in range(k):
        w, e, chi2, *_ = lstsq_fit(
            A, frames[:, :, j].ravel().astype(float), err.ravel(), mask[:, :, j].ravel()
        )
        np.testing.assert_allclose(res.weights[:, j], w, rtol=1e-8, atol=1e-10 * np.nanmax(np.abs(w)))
        np.testing.assert_allclose(res.chi2[j], chi2, rtol=1e-8)
    # one mask for all frames (one factorisation, the ahead path) against the same reference
    res = _fit(S, np.where(m1[:, :, None], np.nan, frames), 2, mask=m1, errors=err)
    for j in range(k):
        w, *_ = lstsq_fit(A, frames[:, :, j].ravel().astype(float), err.ravel(), m1.ravel())
        np.testing.assert_allclose(res.weights[:, j], w, rtol=1e-8, atol=1e-10 * np.nanmax(np.abs(w)))


@pytest.mark.parametrize("n", [0, 1])
def test_threaded_fit_of_zero_and_one_source(n, threaded):
    sc, S = _scene(30, n=n, imshape=(9, 8), imcorner=(2, -1))
    d = np.random.default_rng(30).normal(size=(*S.imshape, 6))
    ref = _fit(S, d, 1)
    res = _fit(S, d, 2)
    np.testing.assert_array_equal(res.weights, ref.weights)
    np.testing.assert_array_equal(res.chi2, ref.chi2)
    A = dense_design(sc)
    for j in range(6):
        w, _, chi2, *_ = lstsq_fit(A, d[:, :, j].ravel())
        np.testing.assert_allclose(res.weights[:, j], w, rtol=1e-10)
        np.testing.assert_allclose(res.chi2[j], chi2, rtol=1e-10)


_ONE_SIGNATURE = """
import sys, warnings
import numpy as np
import sparse3d, sparse3d._compiled, sparse3d._threads
sys.path.insert(0, sys.argv[1])
from test_fit_threads import _fit, _scene
sparse3d._compiled.COMPILED_MIN_NNZ = 0
sparse3d._threads.PARALLEL_MIN_WORK = 0
sparse3d.precompile()
_, S = _scene(40, n=80)
d = np.random.default_rng(40).normal(size=(*S.imshape, 20))
for nt in (1, 2):
    _fit(S, d, nt, errors=np.full(S.imshape, 0.5), mask=np.zeros(S.imshape, bool)).weights_err
    _fit(S, d, nt)
from sparse3d.fit import _rhs_kernels, _supernodal_kernels
for module in (_rhs_kernels, _supernodal_kernels):
    for kernel in module.SIGNATURES:
        got = getattr(module, kernel).signatures
        assert len(got) <= 1, (module.__name__, kernel, got)
print("ok")
"""


def test_threaded_paths_compile_one_signature():
    # the kernels that the threads call (bands, column blocks, block ranges) are called with the
    # signatures precompile() compiles: no second specialisation. In a fresh interpreter, so
    # that other tests' calls (float32, other layouts) cannot add signatures first.
    import subprocess
    import sys
    from pathlib import Path

    if not sparse3d._kernels.available():
        pytest.skip("numba is not installed")
    here = Path(__file__).resolve().parent
    out = subprocess.run(
        [sys.executable, "-c", _ONE_SIGNATURE, str(here)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_pool_works_in_a_forked_child():
    # a child forked after the pool ran work gets a new pool (the parent's threads are gone)
    import multiprocessing

    assert _threads.run(lambda i: i + 1, [(1,), (2,)]) == [2, 3]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.apply_async(_run_in_threads, ()).get(timeout=60) == [2, 3]


def _run_in_threads():
    return _threads.run(lambda i: i + 1, [(1,), (2,)])


class _FakeMachine:
    """``/proc/stat`` ticks and this process's CPU time, advanced by hand (100 ticks/s)."""

    def __init__(self, monkeypatch, cpus=2):
        self.busy = self.total = 0
        self.own = self.clock = 0.0
        monkeypatch.setattr(_threads, "_cpu_ticks", lambda: (self.busy, self.total))
        monkeypatch.setattr(_threads.time, "process_time", lambda: self.own)
        monkeypatch.setattr(_threads.time, "monotonic", lambda: self.clock)
        monkeypatch.setattr(_threads.os, "cpu_count", lambda: cpus)
        monkeypatch.setattr(_threads, "_usable_cpus", lambda: cpus)
        monkeypatch.setattr(_threads, "_LOAD", {"time": None, "ticks": None, "own": None, "idle": None})
        monkeypatch.delenv(_threads.ENV_VAR, raising=False)

    def advance(self, seconds, others_busy, own_busy):
        """``seconds`` pass with other processes using ``others_busy`` CPUs and this one ``own_busy``."""
        self.clock += seconds
        self.total += round(100 * seconds * _threads.os.cpu_count())
        self.busy += round(100 * seconds * (others_busy + own_busy))
        self.own += seconds * own_busy


def test_default_threads_follow_the_cpus_other_processes_leave_idle(monkeypatch):
    """Without a count asked for, large work uses at most the CPUs left idle by other processes
    (this process's own CPU time does not count); an explicit count is used as given."""
    m = _FakeMachine(monkeypatch, cpus=2)
    work = _threads.PARALLEL_MIN_WORK
    with sparse3d.set_options(num_threads=0):
        assert _threads.idle_cpus() is None  # one look: nothing known yet
        assert _threads.threads_for(work) == 2  # ... so every default thread
        m.advance(1.0, others_busy=0.0, own_busy=1.0)  # this process alone, one core busy
        assert _threads.idle_cpus() == pytest.approx(2.0)
        assert _threads.threads_for(work) == 2
        m.advance(1.0, others_busy=1.0, own_busy=1.0)  # another process holds the other core
        assert _threads.idle_cpus() == pytest.approx(1.0)
        assert _threads.threads_for(work) == 1
        assert _threads.threads_for(work - 1) == 1
        m.advance(0.1, others_busy=0.0, own_busy=0.0)  # within LOAD_INTERVAL: the last look holds
        assert _threads.idle_cpus() == pytest.approx(1.0)
        m.advance(1.0, others_busy=0.3, own_busy=1.7)  # a little load: rounds to both cores
        assert _threads.idle_cpus() == pytest.approx(2 * (1 - 30 / 220))  # over the 1.1 s since
        assert _threads.threads_for(work) == 2
        m.advance(1.0, others_busy=2.0, own_busy=0.0)  # every core busy elsewhere: still one
        assert _threads.threads_for(work) == 1
    with sparse3d.set_options(num_threads=2):  # asked for: used whatever the load
        assert _threads.threads_for(work) == 2
    monkeypatch.setenv(_threads.ENV_VAR, "3")
    assert _threads.threads_for(work) == 3


def test_idle_cpus_without_proc_stat(monkeypatch):
    monkeypatch.setattr(_threads, "_cpu_ticks", lambda: None)
    monkeypatch.setattr(_threads, "_LOAD", {"time": None, "ticks": None, "own": None, "idle": None})
    monkeypatch.delenv(_threads.ENV_VAR, raising=False)
    assert _threads.idle_cpus() is None
    with sparse3d.set_options(num_threads=0):
        assert _threads.threads_for(_threads.PARALLEL_MIN_WORK) == _threads.num_threads()


def test_many_frame_model_from_pooled_weights_after_a_dropped_fit(threaded, monkeypatch):
    # the model's weights (NaN of unconstrained sources as 0) land in a buffer lent by the pool:
    # a second fit reuses the first fit's dropped buffer (pool threshold lowered to this small
    # scene) and its model is still A w of its own weights, 0 for the unconstrained sources
    from sparse3d import _pool

    monkeypatch.setattr(_pool, "MIN_BYTES", 0)
    _pool.clear()
    sc, S = _scene(61, n=40)
    A = dense_design(sc)
    mask = np.zeros(S.imshape, bool)
    mask.ravel()[np.flatnonzero(A[:, 0])] = True  # source 0 has no unmasked pixel: NaN weight
    rng = np.random.default_rng(61)
    addresses = []
    for seed in range(2):
        d = rng.normal(size=(*S.imshape, 12)) + 10.0 * seed
        res = _fit(S, d, 2, mask=mask)
        assert np.isnan(res.weights[0]).all() and np.isfinite(res.weights).any()
        w = np.where(np.isnan(res.weights), 0.0, res.weights)
        np.testing.assert_allclose(res.model.reshape(-1, 12), A @ w, rtol=1e-12, atol=1e-12)
        ctx_wz = res._context.wz
        np.testing.assert_array_equal(ctx_wz, w)
        for j in (0, 11):  # the weights themselves (the solve's output, lent too): dense lstsq
            ref, *_ = lstsq_fit(A, d[:, :, j].ravel(), mask=mask.ravel())
            np.testing.assert_allclose(res.weights[:, j], ref, rtol=1e-9, atol=1e-10)
        addresses.append(ctx_wz.__array_interface__["data"][0])
        del res, ctx_wz
    assert addresses[0] == addresses[1]  # the first fit's buffer, overwritten by the second
    _pool.clear()  # no small buffer of this test left for others


def test_zero_nan_is_where_nan_zero():
    # the model's weights: every value of params but NaN, which is 0 (-0.0 and inf kept)
    from sparse3d.fit.solve import _zero_nan

    params = np.array([[1.5, np.nan], [-0.0, np.inf], [np.nan, -np.inf]])
    got = _zero_nan(params)
    ref = np.where(np.isnan(params), 0.0, params)
    np.testing.assert_array_equal(got, ref)
    assert np.signbit(got[1, 0]) and not np.shares_memory(got, params)
