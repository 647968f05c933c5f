"""Reusing buffers (temporary elision, the buffer pool) never modifies an array anyone holds.

Each test keeps an array reachable in one way (a name, a list, a dict, a cache, a view of
its data, an xarray view, another array sharing its values, a Dask graph...), runs operator
chains on it and on other arrays, and checks the held values against a snapshot taken
before. Results are checked against plain NumPy on the stamp values.
"""

import functools
import gc
import sys

import numpy as np
import pytest

import sparse3d
from sparse3d import Sparse3D, _pool, _ufuncs
from sparse3d.testing import random_scene

ELISION = sys.implementation.name == "cpython" and sys.version_info < (3, 14)


@pytest.fixture(autouse=True)
def small_pool(monkeypatch):
    """Pool even tiny buffers, so that these small scenes exercise it."""
    monkeypatch.setattr(_pool, "MIN_BYTES", 0)
    gc.collect()  # earlier tests' garbage returns its buffers now, not in the middle of a test
    _pool.clear()
    yield
    _pool.clear()


@pytest.fixture
def S():
    return random_scene(3, nsources=7).build()


@pytest.fixture
def reuses(monkeypatch):
    """Count the operator calls that reuse a temporary's buffer."""
    seen = []
    orig = _ufuncs.apply_elementwise

    def spy(func, args, kwargs=None, name=None, reuse=None):
        seen.append(reuse is not None)
        return orig(func, args, kwargs, name, reuse)

    monkeypatch.setattr(_ufuncs, "apply_elementwise", spy)
    return seen


def _chain(x):
    """A tutorial-like chain of operators and ufuncs."""
    return np.exp(-0.5 * ((x - 0.25) ** 2 / 4.0 + (x + 1.0) ** 2 / 9.0)) * 1 / 3.0


def _chain_np(v):
    return np.exp(-0.5 * ((v - 0.25) ** 2 / 4.0 + (v + 1.0) ** 2 / 9.0)) * 1 / 3.0


@pytest.mark.skipif(not ELISION, reason="temporary elision is only enabled on CPython < 3.14")
def test_the_tutorial_chain_reuses_its_temporaries(S, reuses):
    before = S.data.copy()
    got = _chain(S)
    np.testing.assert_allclose(got.data, _chain_np(before))
    np.testing.assert_array_equal(S.data, before)
    # x - 0.25 and x + 1.0 read a named array, np.exp is a call, * 1 makes no pass (it
    # shares the values): the other 7 reuse
    assert sum(reuses) >= 7, reuses


def test_named_arrays_are_never_reused(S, reuses):
    before = S.data.copy()
    t = S - 1.0
    t_before = t.data.copy()
    u = t * 2.0
    v = -t
    w = 3.0 + t
    assert not any(reuses)
    np.testing.assert_array_equal(t.data, t_before)
    np.testing.assert_array_equal(S.data, before)
    np.testing.assert_allclose(u.data, t_before * 2.0)
    np.testing.assert_allclose(v.data, -t_before)
    np.testing.assert_allclose(w.data, 3.0 + t_before)


def test_arrays_held_by_containers_are_never_modified(S):
    held = {"list": [S + 1.0], "dict": {"a": S + 2.0}, "tuple": (S + 3.0,)}
    snap = {k: (held[k][0] if k != "dict" else held[k]["a"]).data.copy() for k in held}
    results = [held["list"][0] * 2.0, held["dict"]["a"] ** 2, -held["tuple"][0], _chain(held["list"][0])]
    for k in held:
        arr = held[k][0] if k != "dict" else held[k]["a"]
        np.testing.assert_array_equal(arr.data, snap[k])
    np.testing.assert_allclose(results[0].data, snap["list"] * 2.0)
    np.testing.assert_allclose(results[1].data, snap["dict"] ** 2)


def test_arrays_held_only_by_a_cache_are_never_modified(S):
    @functools.cache
    def cached():
        return S * 5.0

    first = (cached() * 2.0).data.copy()
    second = (cached() * 2.0).data.copy()  # the cached array was an operand: unchanged
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(cached().data, S.data * 5.0)


def test_values_shared_with_another_array_or_a_view_are_never_modified(S):
    keep = []

    def make(kind):
        t = S + 1.0
        if kind == "data":
            keep.append(t.data)  # a read-only view of the buffer
        elif kind == "translate":
            keep.append(t.translate((1, -1)))  # another Sparse3D on the same values
        elif kind == "slice":
            keep.append(t[:, :, :])  # a Sparse3D sharing the values
        elif kind == "csr":
            keep.append(t.tocsr())
        elif kind == "coo":
            keep.append(t.to_sparse())
        return t

    expected = S.data + 1.0
    for kind in ("data", "translate", "slice", "csr", "coo"):
        r = make(kind) * 10.0  # the operand is a temporary, but its values are reachable
        np.testing.assert_allclose(r.data, expected * 10.0)
        held = keep[-1]
        if isinstance(held, np.ndarray):
            np.testing.assert_array_equal(held, expected)
        elif isinstance(held, Sparse3D):
            np.testing.assert_array_equal(held.data, expected)
        elif hasattr(held, "toarray"):
            np.testing.assert_allclose(held.toarray().sum(), expected[S.in_image].sum())
        else:
            np.testing.assert_allclose(held.data.sum(), expected[S.in_image].sum())
    gc.collect()
    for _ in range(3):  # pooled buffers of dead arrays must not be the held ones
        _chain(S * 2.0)
    np.testing.assert_array_equal(keep[0], expected)
    np.testing.assert_array_equal(keep[1].data, expected)
    np.testing.assert_array_equal(keep[2].data, expected)


def test_xarray_views_are_never_modified(S):
    pytest.importorskip("xarray")
    da = (S + 1.0).to_xarray()
    stamps = (S + 2.0).to_xarray(view="stamps") if "view" in S.to_xarray.__doc__ else None
    before = da.data.data.copy() if isinstance(da.data, Sparse3D) else None
    results = [np.exp(da.data * 2.0) if isinstance(da.data, Sparse3D) else None, _chain(S)]
    del results
    gc.collect()
    _chain(S + 1.0)
    if before is not None:
        np.testing.assert_array_equal(da.data.data, before)
    np.testing.assert_allclose(da.sum("source").values, (S + 1.0).sum(axis=2))
    if stamps is not None:
        np.testing.assert_allclose(np.asarray(stamps.values), S.data + 2.0)


def test_the_pool_recycles_only_unreachable_buffers(S):
    t = S * 3.0
    view = t.data
    snap = view.copy()
    del t
    gc.collect()
    assert _pool.pooled_bytes() == 0  # the view keeps the buffer out of the pool
    u = S * 4.0
    del u
    gc.collect()
    assert _pool.pooled_bytes() == S.data.nbytes  # unreachable: pooled
    for k in range(5):
        r = _chain(S + float(k))  # takes pooled buffers, overwrites them whole
        np.testing.assert_allclose(r.data, _chain_np(S.data + float(k)))
    np.testing.assert_array_equal(view, snap)


def test_pooled_buffers_are_overwritten_completely(S):
    junk = S * np.nan
    del junk
    gc.collect()
    assert _pool.pooled_bytes() > 0
    fresh = S + 1.0  # built on the pooled buffer full of NaN
    np.testing.assert_array_equal(fresh.data, S.data + 1.0)
    with_data = S.with_data(np.ones(S.stamp_shape))
    del fresh
    gc.collect()
    again = S.with_data(np.full(S.stamp_shape, 2.0))  # construction copies into a pooled buffer
    np.testing.assert_array_equal(again.data, 2.0)
    np.testing.assert_array_equal(with_data.data, 1.0)


def test_the_pool_can_be_disabled(S):
    with sparse3d.set_options(buffer_pool_bytes=0):
        t = S * 2.0
        del t
        gc.collect()
        assert _pool.pooled_bytes() == 0


def test_user_inputs_are_never_modified():
    sc = random_scene(4, nsources=6)
    data, row, col = sc.data.copy(), sc.row.copy(), sc.col.copy()
    X = sc.build()
    r = _chain(X)
    del r, X
    gc.collect()
    _chain(sc.build())
    np.testing.assert_array_equal(sc.data, data)
    np.testing.assert_array_equal(sc.row, row)
    np.testing.assert_array_equal(sc.col, col)


def test_errors_raised_by_numpy_leave_operands_intact(S):
    t_snap = (S - S).data.copy()
    with np.errstate(all="raise"):
        with pytest.raises(FloatingPointError):
            (S - S) / 0.0
    np.testing.assert_array_equal((S - S).data, t_snap)


def test_positions_held_by_a_view_or_another_structure_are_never_recycled():
    sc = random_scene(9, nsources=8)
    S = sc.build()
    row_view, col_view = S.row, S.col
    cutout = S[1:-1, 2:-2]  # another structure on the same position arrays
    snap = row_view.copy(), col_view.copy()
    del S
    gc.collect()
    for k in range(4):  # new structures of the same shape take pooled position buffers
        other = random_scene(100 + k, nsources=8).build()
        other.dot(np.ones(8))
        del other
        gc.collect()
    np.testing.assert_array_equal(row_view, snap[0])
    np.testing.assert_array_equal(col_view, snap[1])
    np.testing.assert_array_equal(cutout.row, snap[0])
    np.testing.assert_allclose(cutout.todense(), sc.dense()[1:-1, 2:-2])


def test_weakly_referenced_arrays_are_never_reused(S):
    import weakref

    cache = weakref.WeakValueDictionary()

    def remember(x):
        cache["x"] = x
        return x

    t = remember(S + 1.0)
    snap = t.data.copy()
    r = remember(S + 2.0) * 3.0  # the operand is a temporary, but weakly referenced
    np.testing.assert_allclose(r.data, (S.data + 2.0) * 3.0)
    np.testing.assert_array_equal(t.data, snap)
    values = weakref.ref((S * 7.0)._values)  # the buffer of a dead array, weakly held
    gc.collect()
    assert values() is None or not any(b is values() for b in _pool._BUFFERS)


def test_operators_in_threads_are_correct_and_never_touch_shared_arrays(S):
    import threading

    shared = S * 2.0
    snap = shared.data.copy()
    errors = []

    def work(k):
        try:
            for _ in range(20):
                r = _chain(shared + float(k))
                np.testing.assert_allclose(r.data, _chain_np(snap + float(k)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    np.testing.assert_array_equal(shared.data, snap)


def test_identity_products_share_values_and_never_let_them_be_reused(S):
    """``S * 1`` shares S's immutable values; no later operator may then write into them."""
    before = S.data.copy()
    T = S * 1
    assert np.shares_memory(T._values, S._values)
    U = (S * 1) + 1.0  # the temporary S * 1 holds S's buffer: it must not be reused
    V = (T / 1) * 2.0
    np.testing.assert_array_equal(S.data, before)
    np.testing.assert_array_equal(T.data, before)
    np.testing.assert_array_equal(U.data, before + 1.0)
    np.testing.assert_array_equal(V.data, before * 2.0)
    del S, T
    gc.collect()
    W = U * 1  # U's values now held by U and W: the pool must not take them when U dies
    del U
    gc.collect()
    X = random_scene(3, nsources=7).build() + 0.0  # a result that could take a pooled buffer
    np.testing.assert_array_equal(W.data, before + 1.0)
    assert not np.shares_memory(X._values, W._values)
