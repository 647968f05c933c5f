"""Grouped arrays joined without a copy: ``np.concatenate`` shares its parts' values.

``np.concatenate`` of arrays with different stamp shapes keeps every part's values block as
its group's values (no copy); the single 1-D block that most operations read is joined on
first use only. Every operation is tested here on a *fresh* joined array (nothing joined yet),
against the dense NumPy reference built independently from the parts' stamps, and the
parts' values are checked never to be written (temporaries, the buffer pool).
"""

from __future__ import annotations

import gc
import pickle

import numpy as np
import pytest
from test_groups import _registry_cases, _same  # noqa: I001 - tests/ is on sys.path

from sparse3d import Sparse3D
from sparse3d._functions import GROUPED_UNSUPPORTED
from sparse3d.testing import random_grouped_scene


def _fresh(gscene):
    """The parts, their values (snapshots) and the joined array built from them."""
    parts = [p.build() for p in gscene.parts]
    S = np.concatenate(parts, axis=2)
    return parts, [p.data.copy() for p in parts], S


def _joined(S) -> bool:
    return S._pending_groups is not None


def _unchanged(parts, snapshots):
    for p, v in zip(parts, snapshots):
        np.testing.assert_array_equal(p.data, v)


def test_concatenate_shares_the_parts_values(gscene):
    parts, snap, S = _fresh(gscene)
    if len(S.groups) == 1:
        assert not _joined(S)
        return
    assert _joined(S)
    shapes = [p.data.shape[:2] for p in parts if p.nsources]
    for p in parts:  # a part alone in its stamp shape is its group's values, not a copy
        if p.nsources and shapes.count(p.data.shape[:2]) == 1:
            g = S.stamp_shapes.index(p.data.shape[:2])
            assert np.shares_memory(S.groups[g].data, p.data)
    assert S.dtype == np.result_type(*[p.dtype for p in parts])
    assert S.nbytes == sum(g.nbytes for g in S.groups)
    _same(S, gscene.dense())
    assert _joined(S)  # todense, groups, dtype and nbytes work group by group
    _unchanged(parts, snap)


def _ops(gs, S, D, rng):
    """``{name: (sparse3d call, dense reference)}`` for the array's operators and methods.

    Elementwise references transform the parts' stamp values (stamp semantics: 0 off the
    stamps), then scatter them independently.
    """
    n = S.nsources
    o = np.cumsum([0] + [p.data.shape[2] for p in gs.parts])

    def on_stamps(f):
        return gs.dense([f(p.data, slice(o[i], o[i + 1])) for i, p in enumerate(gs.parts)])

    H, W = S.imshape
    Dp = D.astype(np.float64)
    w = rng.uniform(-1, 1, size=n)
    img = rng.uniform(-1, 1, size=(H, W, 1))
    cube = rng.uniform(-1, 1, size=(H, W, n))
    sel = np.arange(n)[::-1][: max(1, n - 1)] if n else np.arange(0)
    return {
        "scalar": (lambda: S * 2.0 - 1, lambda: on_stamps(lambda v, k: v * 2.0 - 1)),
        "per source": (lambda: S - w, lambda: on_stamps(lambda v, k: v - w[k])),
        "per source 3-D": (lambda: S / (2 + w[None, None]), lambda: Dp / (2 + w)),
        "exp": (lambda: np.exp(S), lambda: on_stamps(lambda v, k: np.exp(v))),
        "image operand": (lambda: S * img, lambda: Dp * img),
        "cube operand": (lambda: S * cube, lambda: Dp * cube),
        "with itself": (lambda: S * S + S, lambda: D * D + D),
        "temporaries": (lambda: -(S * 3.0) * 2.0, lambda: -(Dp * 3.0) * 2.0),
        "unary": (lambda: np.abs(S), lambda: np.abs(D)),
        "identity": (lambda: S * 1, lambda: D * 1),
        "dot": (lambda: S.dot(w), lambda: Dp @ w),
        "tocsr": (lambda: S.tocsr().toarray(), lambda: D.reshape(H * W, n)),
        "tocsc": (lambda: S.tocsc().toarray(), lambda: D.reshape(H * W, n)),
        "tocoo": (lambda: S.tocoo().toarray(), lambda: D.reshape(H * W, n)),
        "to_sparse": (lambda: S.to_sparse().todense(), lambda: D),
        "sources across groups": (lambda: S[:, :, sel], lambda: D[:, :, sel]),
        "cutout": (lambda: S[1:, : W - 1, :], lambda: D[1:, : W - 1, :]),
        "sum": (lambda: S.sum(axis=2), lambda: D.sum(axis=2)),
        "translate": (lambda: S.translate((1, -2)).translate((-1, 2)), lambda: D),
        "astype": (lambda: S.astype(np.complex128), lambda: D.astype(np.complex128)),
        "copy": (lambda: S.copy(), lambda: D),
        "pickle": (lambda: pickle.loads(pickle.dumps(S)), lambda: D),
        "with_data": (lambda: S.with_data([2 * g.data for g in S.groups]), lambda: 2 * D),
    }


def _op_names():
    gs = random_grouped_scene(0)
    S = gs.build()
    return list(_ops(gs, S, S.todense(), np.random.default_rng(0)))


@pytest.mark.parametrize("op", _op_names())
def test_every_operation_on_a_fresh_joined_array(gscene, op):
    parts, snap, S = _fresh(gscene)
    D = gscene.dense()
    call, ref = _ops(gscene, S, D, np.random.default_rng(3))[op]
    with np.errstate(all="ignore"):
        got, want = call(), ref()
    _same(got, want)
    _unchanged(parts, snap)
    _same(S, D)  # and the joined array itself is unchanged


def test_every_registry_function_on_a_fresh_joined_array(gscene):
    D = gscene.dense()
    names = list(_registry_cases(gscene, gscene.build(), D, np.random.default_rng(5)))
    for func in names:
        if func in GROUPED_UNSUPPORTED:
            continue
        if func is np.gradient and min(p.data.shape[1] for p in gscene.parts) < 2:
            continue
        parts, snap, S = _fresh(gscene)
        call, ref = _registry_cases(gscene, S, D, np.random.default_rng(5))[func]
        with np.errstate(all="ignore"):
            got, want = call(), ref()
        if isinstance(want, (bool, tuple, int, np.dtype)):
            assert got == want, func.__name__
        else:
            _same(got, want)
        _unchanged(parts, snap)


def test_pipeline_never_joins_the_values():
    """The tutorial pipeline on ``np.concatenate``d X and Y works group by group: no joined copy."""
    gs = random_grouped_scene(4, imshape=(20, 24), stamps=((5, 5), (9, 9)), nsources=(30, 4))
    X = np.concatenate([p.build() for p in gs.parts], axis=2)
    Y = np.concatenate([p.build() * 0.5 for p in gs.parts], axis=2)
    rng = np.random.default_rng(1)
    rp, cp, w = rng.uniform(0, 1, size=(3, X.nsources))
    L = np.exp(-0.5 * ((X - rp) ** 2 / 1.5**2 + (Y - cp) ** 2 / 1.5**2)) * 1 / (2 * np.pi * 1.5**2)
    image = L.dot(w)
    assert _joined(X) and _joined(Y)
    DX, DY = gs.dense(), gs.dense() * 0.5
    stamps = gs.dense([np.ones_like(p.data) for p in gs.parts]) != 0  # stamp semantics
    dense = np.where(stamps, np.exp(-0.5 * ((DX - rp) ** 2 / 1.5**2 + (DY - cp) ** 2 / 1.5**2)), 0)
    _same(image, dense / (2 * np.pi * 1.5**2) @ w)


def test_pool_never_recycles_a_joined_block():
    """Parts that die after joining keep their buffers out of the pool while the join holds them."""
    n = 20_000  # 3 x 3 x 20,000 float64 (1.4 MB) is above the pool's 1 MiB minimum
    R, C = np.mgrid[:3, :3]
    rng = np.random.default_rng(2)
    top = rng.integers(0, 60, size=n)
    a = rng.uniform(-1, 1, size=(3, 3, n))
    b = rng.uniform(-1, 1, size=(5, 5, 7))
    Rb, Cb = np.mgrid[:5, :5]
    row, col = R[:, :, None] + top, C[:, :, None] + top[::-1]
    brow, bcol = Rb[:, :, None] + np.arange(7) * 5, Cb[:, :, None] + 3
    S = np.concatenate(
        [Sparse3D(a, row, col, (64, 64)) * 2.0, Sparse3D(b, brow, bcol, (64, 64)) * 2.0], axis=2
    )  # both parts are temporaries: dead once joined
    gc.collect()
    # arrays of the part's shape, alive together: the pool would hand out a dead part's buffer
    junk = [Sparse3D(np.full((3, 3, n), 7.0), row, col, (64, 64)) + 1.0 for _ in range(4)]
    expected = np.concatenate(
        [
            Sparse3D(a * 2.0, row, col, (64, 64)).todense(),
            Sparse3D(b * 2.0, brow, bcol, (64, 64)).todense(),
        ],
        axis=2,
    )
    assert _joined(S)
    _same(S, expected)
    np.testing.assert_array_equal(S.groups[0].data, a * 2.0)
    assert all(np.all(j.data == 8.0) for j in junk)


def test_joining_on_first_use():
    """An operation that needs one values block joins it once; groups and values stay equal."""
    gs = random_grouped_scene(7, dtype=np.float32)
    parts, snap, S = _fresh(gs)
    before = [g.data.copy() for g in S.groups]
    csr = S.tocsr()  # reads the 1-D block
    assert not _joined(S)
    assert not S._values.flags.writeable
    for g, v in zip(S.groups, before):
        np.testing.assert_array_equal(g.data, v)
        assert np.shares_memory(g.data, S._values)  # the groups now view the joined block
    _same(csr.toarray(), gs.dense().reshape(-1, S.nsources))
    _same(S * 2.0, gs.dense() * 2.0)
    _unchanged(parts, snap)


def test_translate_and_identity_keep_sharing():
    parts, snap, S = _fresh(random_grouped_scene(8))
    for T in (S.translate((2, -1)), S * 1, S / 1):
        assert _joined(T)
        assert all(np.shares_memory(a.data, b.data) for a, b in zip(T.groups, S.groups))
    _same(S.translate((2, -1)).translate((-2, 1)), S.todense())
    assert _joined(S)


def test_group_by_group_operations_leave_the_values_unjoined():
    """Operations that work group by group never build the joined copy (they read the groups)."""
    gs = random_grouped_scene(9, dtype=np.float32)
    D = gs.dense()
    n = D.shape[2]
    w = np.linspace(1.0, 2.0, n)
    calls = {
        "astype": (lambda S: S.astype(np.float64), D.astype(np.float64)),
        "copy": (lambda S: S.copy(), D),
        "sources": (lambda S: S[:, :, ::-1], D[:, :, ::-1]),
        "cutout": (lambda S: S[2:9, 1:12], D[2:9, 1:12]),
        "dot": (lambda S: S.dot(w), D.astype(np.float64) @ w),
        "scalar": (lambda S: S * 1.5, D * np.float32(1.5)),
        "sum": (lambda S: S.sum(axis=(0, 1)), D.sum(axis=(0, 1))),
    }
    for name, (call, want) in calls.items():
        parts, snap, S = _fresh(gs)
        got = call(S)
        assert _joined(S), name
        if isinstance(got, Sparse3D) and len(got.stamp_shapes) > 1 and name != "scalar":
            assert _joined(got), name  # and the result still shares (or owns per group) its values
        _same(got, want)
        _unchanged(parts, snap)


def test_dask_token_of_a_joined_array_is_its_content():
    pytest.importorskip("dask")
    from sparse3d.dask._graph import _token

    gs = random_grouped_scene(10)
    a, b = gs.build(), gs.build()
    b._values  # noqa: B018 - joined: the same content in one block
    assert _joined(a) and not _joined(b)
    assert _token(a) == _token(b)
    assert _token(a) != _token(gs.build() * 2.0)


def test_joining_from_several_threads_at_once():
    """Threads that need the 1-D block at the same time all see the same, complete values."""
    from concurrent.futures import ThreadPoolExecutor

    gs = random_grouped_scene(11, imshape=(30, 30), stamps=((4, 4), (7, 7)), nsources=(400, 30))
    want = gs.dense().reshape(-1, 430)
    for _ in range(3):
        parts, snap, S = _fresh(gs)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda T: T.tocsr().toarray(), [S] * 8))
        for r in results:
            _same(r, want)
        _same(S, gs.dense())
        _unchanged(parts, snap)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_elementwise_chains_on_groups_defer_per_group(monkeypatch, dtype):
    """The tutorial chain on a concatenation (and on from_groups) runs one ordinary call per
    group: each group's result is deferred like a single-shape array's, the values stay held
    group by group through ``dot``, and the bits equal those of the groups done apart."""
    from sparse3d import _deferred

    monkeypatch.setattr(_deferred, "MIN_ELEMENTS", 1)
    rng = np.random.default_rng(8)
    imshape, imcorner = (30, 27), (-3, 5)
    pieces = []
    for n, s in ((9, 3), (4, 7), (0, 5)):
        R, C = np.mgrid[:s, :s] - s // 2
        r0, c0 = rng.integers(-4, 32, n) + imcorner[0], rng.integers(-4, 30, n) + imcorner[1]
        pieces.append(((R[:, :, None] * np.ones(n)).astype(dtype), (C[:, :, None] * np.ones(n)).astype(dtype),
                       R[:, :, None] + r0, C[:, :, None] + c0))
    rp, cp = rng.uniform(-0.5, 0.5, 13).astype(dtype), rng.uniform(-0.5, 0.5, 13).astype(dtype)
    w = rng.uniform(1, 2, 13)

    def chain(X, Y, a, b):
        return np.exp(-0.5 * ((X - a) ** 2 + (Y - b) ** 2)) / (2 * np.pi)

    Xs = [Sparse3D(x, r, c, imshape, imcorner) for x, _, r, c in pieces]
    Ys = [Sparse3D(y, r, c, imshape, imcorner) for _, y, r, c in pieces]
    for X, Y in (
        (np.concatenate(Xs, axis=2), np.concatenate(Ys, axis=2)),
        tuple(Sparse3D.from_groups([p[k] for p in pieces], [p[2] for p in pieces], [p[3] for p in pieces],
                                   imshape, imcorner) for k in (0, 1)),
    ):
        L = chain(X, Y, rp, cp)
        assert _joined(L) and all(g._lazy is not None for g in L.groups)  # deferred, per group
        image = L.dot(w)
        assert _joined(L)  # the product read the groups, never a joined block
        # bit for bit the groups computed apart, and the dense reference
        offsets = np.cumsum([0, 9, 4])
        for g, (x, y, _, _), o in zip(L.groups, pieces[:2], offsets):
            n = x.shape[2]
            expect = np.exp(-0.5 * ((x - rp[o:o + n]) ** 2 + (y - cp[o:o + n]) ** 2)) / (2 * np.pi)
            np.testing.assert_array_equal(g.data, expect.astype(dtype))
        dense = np.concatenate([Sparse3D(chain(x, y, rp[o:o + x.shape[2]], cp[o:o + x.shape[2]]), r, c,
                                         imshape, imcorner).todense() for (x, y, r, c), o in
                                zip(pieces[:2], offsets)], axis=2)
        np.testing.assert_allclose(image, dense @ w, rtol=1e-5 if dtype == np.float32 else 1e-12)
        np.testing.assert_array_equal(L.todense(), dense)
