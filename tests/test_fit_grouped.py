"""The normal matrix and the fit of arrays with several stamp groups, against dense references.

Both assembly paths run (``fit_path``): SciPy's ``A^T A`` of the CSR form and the compiled
stamp kernels (each group's own block, the cross-group blocks of ``normal_cross`` and the merge
of ``lower_csr``). References are dense NumPy arrays built independently from the stamps
(:mod:`sparse3d.testing`) and ``numpy.linalg.lstsq``.
"""

from __future__ import annotations

import numpy as np
import pytest
from fit_reference import close, fit_options, lstsq_fit  # noqa: I001 - tests/ is on sys.path

from sparse3d import Sparse3D
from sparse3d._structure import GroupedStructure
from sparse3d.fit import normal_matrix
from sparse3d.testing import random_scene


def _full(N) -> np.ndarray:
    """The symmetric matrix of a lower triangle."""
    L = N.toarray()
    return L + L.T - np.diag(np.diag(L))


def _check_normal(S: Sparse3D, D: np.ndarray, ivar: np.ndarray | None) -> None:
    """``normal_matrix(S, ivar)`` against ``D^T diag(ivar) D`` of the dense ``D`` ``(H, W, n)``."""
    H, W, n = D.shape
    A = D.reshape(H * W, n).astype(np.float64)
    ref = A.T @ (A if ivar is None else A * ivar[:, None])
    N = normal_matrix(S, ivar)
    assert N.shape == (n, n) and N.dtype == np.float64
    assert N.has_canonical_format
    assert np.array_equal(N.toarray(), np.tril(N.toarray()))  # lower triangle only
    scale = max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(_full(N), ref, rtol=1e-12, atol=1e-12 * scale)
    # every non-zero entry of the reference is stored
    stored = np.zeros((n, n), bool)
    coo = N.tocoo()
    stored[coo.row, coo.col] = True
    assert not np.any(np.tril(ref != 0) & ~stored)


@pytest.mark.parametrize("kind", ["unit", "masked"])
def test_cross_blocks_in_a_worker_thread(gscene, compiled_kernels, monkeypatch, kind):
    """With a core to spare the cross-group blocks are computed in a worker thread while the
    caller counts the groups' own rows: the same matrix, bit for bit, as in one thread, and the
    dense reference's."""
    from sparse3d import _threads, set_options

    S = gscene.build()
    ivar = _ivar(np.random.default_rng(9), gscene.imshape, kind)
    with set_options(num_threads=1):
        serial = normal_matrix(S, ivar)
    started = []
    submit = _threads.submit
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_threads, "submit", lambda fn, *a: started.append(fn) or submit(fn, *a))
    with set_options(num_threads=2):
        N = normal_matrix(S, ivar)
    ngroups = sum(g.nsources > 0 for g in S.groups)
    assert len(started) == (ngroups > 1)  # the worker ran exactly when there are cross blocks
    for a, b in ((N.indptr, serial.indptr), (N.indices, serial.indices), (N.data, serial.data)):
        assert np.array_equal(a, b)
    _check_normal(S, gscene.dense(), ivar)


def _ivar(rng, imshape, kind):
    if kind == "unit":
        return None
    ivar = rng.uniform(0.2, 3.0, size=imshape[0] * imshape[1])
    if kind == "masked":
        ivar[rng.random(ivar.size) < 0.3] = 0.0
    return ivar


@pytest.mark.parametrize("kind", ["unit", "weights", "masked"])
def test_normal_matrix_of_grouped_scenes(gscene, fit_path, kind):
    S = gscene.build()
    ivar = _ivar(np.random.default_rng(5), gscene.imshape, kind)
    _check_normal(S, gscene.dense(), ivar)


def _interleaved(rng, imcorner=(0, 0), dtype=np.float64):
    """Three stamp shapes whose sources alternate in the source order (non-contiguous groups),
    stamps hanging over every edge, one group of a single source."""
    imshape = (23, 19)
    parts = [
        random_scene(rng, imshape, (3, 3), 14, imcorner, dtype),
        random_scene(rng, imshape, (7, 6), 5, imcorner, dtype),
        random_scene(rng, imshape, (3, 3), 9, imcorner, dtype),
        random_scene(rng, imshape, (1, 9), 1, imcorner, dtype),
        random_scene(rng, imshape, (7, 6), 3, imcorner, dtype),
    ]
    S = np.concatenate([p.build() for p in parts], axis=2)
    D = np.concatenate([p.dense() for p in parts], axis=2)
    return S, D


@pytest.mark.parametrize("imcorner", [(0, 0), (-4, 11)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["unit", "masked"])
def test_normal_matrix_of_interleaved_groups(fit_path, imcorner, dtype, kind):
    rng = np.random.default_rng(11)
    S, D = _interleaved(rng, imcorner, dtype)
    assert len(S.groups) == 3 and not np.array_equal(S.group_sources[0], np.arange(23))
    _check_normal(S, D, _ivar(rng, S.imshape, kind))


def test_normal_matrix_with_an_irregular_group(compiled_kernels):
    """A group whose stamps are not regular rectangles takes SciPy's product for the whole design."""
    rng = np.random.default_rng(2)
    a = random_scene(rng, (15, 16), (3, 3), 12, (2, -1))
    b = random_scene(rng, (15, 16), (4, 2), 6, (2, -1))
    row = b.row.copy()
    row[[0, 1]] = row[[1, 0]]  # rows swapped within each stamp: not a regular rectangle
    Sb = Sparse3D(b.data, row, b.col, b.imshape, b.imcorner)
    Db = np.zeros((*b.imshape, b.data.shape[2]))
    for k in range(b.data.shape[2]):
        for x in range(4):
            for y in range(2):
                r, c = row[x, y, k] - b.imcorner[0], b.col[x, y, k] - b.imcorner[1]
                if 0 <= r < b.imshape[0] and 0 <= c < b.imshape[1]:
                    Db[r, c, k] += b.data[x, y, k]
    S = np.concatenate([a.build(), Sb], axis=2)
    _check_normal(S, np.concatenate([a.dense(), Db], axis=2), _ivar(rng, a.imshape, "masked"))


def test_normal_matrix_with_a_group_without_sources(fit_path):
    rng = np.random.default_rng(8)
    parts = [random_scene(rng, (12, 14), st, n, (1, 2)) for st, n in [((3, 3), 6), ((2, 5), 0), ((5, 4), 3)]]
    arrays = [p.build() for p in parts]
    values = np.concatenate([x._values.ravel() for x in arrays])
    S = Sparse3D._from_parts(values, GroupedStructure([x._structure for x in arrays]))
    assert [g.nsources for g in S.groups] == [6, 0, 3]
    _check_normal(S, np.concatenate([p.dense() for p in parts], axis=2), _ivar(rng, (12, 14), "weights"))


def test_cross_block_scale_of_tiny_and_huge_stamps(fit_path):
    """Groups whose values differ by 1e200 get their own column scales: no under/overflow."""
    rng = np.random.default_rng(9)
    a = random_scene(rng, (14, 14), (3, 3), 10)
    b = random_scene(rng, (14, 14), (6, 6), 4)
    Sa = Sparse3D(a.data * 1e-150, a.row, a.col, a.imshape)
    Sb = Sparse3D(b.data * 1e150, b.row, b.col, b.imshape)
    S = np.concatenate([Sa, Sb], axis=2)
    N = normal_matrix(S)
    D = np.concatenate([a.dense() * 1e-150, b.dense() * 1e150], axis=2).reshape(14 * 14, -1)
    ref = D.T @ D
    assert np.all(np.isfinite(N.data))
    na = a.data.shape[2]
    cross = ref[na:, :na]  # O(1): the product of a tiny and a huge column
    np.testing.assert_allclose(N.toarray()[na:, :na], cross, rtol=1e-12, atol=1e-12 * np.abs(cross).max())


# ---- the fit, through both paths -------------------------------------------------------------
def _positive(S: Sparse3D) -> Sparse3D:
    S = abs(S.astype(np.float64)) + 0
    return S + (S != 0) * 0.1


def _fit_case(seed: int, imcorner, options: str):
    """A grouped scene, noisy data and the fit options of ``options`` with their ``lstsq_fit``
    counterparts: ``(S, M, data, kw, ref)``, ``M`` the dense design ``(npix, n)``."""
    rng = np.random.default_rng(seed)
    S, _ = _interleaved(rng, imcorner=imcorner)
    S = _positive(S)
    D = S.todense()
    H, W, n = D.shape
    M = D.reshape(H * W, n)
    w = rng.uniform(1, 2, size=n)
    data = D @ w + rng.normal(0, 0.01, size=(H, W))
    kw, ref = fit_options(rng, options, (H, W), n)
    return S, M, data, kw, ref


@pytest.mark.filterwarnings("ignore::sparse3d.fit.UnconstrainedSourceWarning")  # sources off the image
@pytest.mark.parametrize("options", ["errors", "mask", "priors", "background", "frames"])
def test_grouped_fit_against_lstsq(fit_path, options):
    S, M, data, kw, ref = _fit_case(21, (3, -2), options)
    rng = np.random.default_rng(23)
    (H, W), n = S.imshape, S.nsources
    if options == "background":
        data = data + 3.0
        p, e, *_ = lstsq_fit(np.hstack([M, np.ones((H * W, 1))]), data.ravel())
        r = S.fit(data, background="constant")
        close(r.weights, p[:n], rtol=1e-7)
        close(r.background, p[n:], rtol=1e-7)
        close(r.weights_err, e[:n], rtol=1e-7)
        return
    if options == "frames":
        frames = np.stack([data, 2 * data + rng.normal(0, 0.01, size=(H, W))], axis=-1)
        r = S.fit(frames)
        for f in range(2):
            p, e, *_ = lstsq_fit(M, frames[:, :, f].ravel())
            close(r.weights[:, f], p, rtol=1e-7)
        close(r.weights_err, e, rtol=1e-7)
        return
    p, e, *_ = lstsq_fit(M, data.ravel(), **ref)
    r = S.fit(data, **kw)
    close(r.weights, p, rtol=1e-7)
    close(r.weights_err, e, rtol=1e-7)


def test_normal_matrix_with_long_cross_rows(fit_path):
    """Big stamps over many small ones: rows with ~70 unsorted cross-group entries."""
    rng = np.random.default_rng(12)
    a = random_scene(rng, (16, 15), (2, 2), 150, (-1, 3))
    b = random_scene(rng, (16, 15), (13, 14), 3, (-1, 3))
    S = np.concatenate([b.build(), a.build(), b.build()], axis=2)
    N = normal_matrix(S)
    assert np.diff(N.indptr).max() > 60  # longer than the largest Shell-sort gap
    D = np.concatenate([b.dense(), a.dense(), b.dense()], axis=2)
    _check_normal(S, D, _ivar(rng, (16, 15), "masked"))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "shapes", [((2, 12), (9, 3)), ((1, 1), (11, 11)), ((11, 11), (1, 1)), ((5, 5), (6, 5))]
)
def test_cross_blocks_of_tall_wide_and_one_pixel_stamps(fit_path, shapes, dtype):
    """The cross block looked up on the grid of the group with the smaller stamps, whatever their
    shapes (a tall group against a wide one, single pixels, nearly equal sizes), over every
    edge with a non-zero image corner, float32 stamps and masked pixels."""
    rng = np.random.default_rng(sum(a * b for a, b in shapes))
    imshape, corner = (21, 18), (-3, 5)
    a = random_scene(rng, imshape, shapes[0], 40, corner, dtype)
    b = random_scene(rng, imshape, shapes[1], 9, corner, dtype)
    S = np.concatenate([a.build(), b.build()], axis=2)
    _check_normal(S, np.concatenate([a.dense(), b.dense()], axis=2), _ivar(rng, imshape, "masked"))


def test_cross_block_of_groups_that_do_not_overlap(fit_path):
    """Two groups in opposite corners of the image: no cross entries, each group's own block."""
    rng = np.random.default_rng(4)
    R, C = np.mgrid[:3, :3]
    Ra, Ca = np.mgrid[:6, :7]
    ra, ca = rng.integers(0, 5, 8), rng.integers(0, 5, 8)
    rb, cb = rng.integers(30, 34, 4), rng.integers(30, 34, 4)
    Sa = Sparse3D(rng.uniform(1, 2, (3, 3, 8)), R[:, :, None] + ra, C[:, :, None] + ca, (40, 40))
    Sb = Sparse3D(rng.uniform(1, 2, (6, 7, 4)), Ra[:, :, None] + rb, Ca[:, :, None] + cb, (40, 40))
    S = np.concatenate([Sa, Sb], axis=2)
    N = normal_matrix(S)
    assert not N.toarray()[8:, :8].any()
    _check_normal(S, np.concatenate([Sa.todense(), Sb.todense()], axis=2), None)

@pytest.mark.filterwarnings("ignore::sparse3d.fit.UnconstrainedSourceWarning")  # sources off the image
@pytest.mark.parametrize("options", ["plain", "errors", "mask", "priors", "background"])
def test_grouped_fit_with_the_nested_dissection_solver(options):
    """Grouped designs get per-source stamp boxes, so the built-in ``nd`` factorisation (its
    ordering from the boxes) solves them too: against ``lstsq`` of the dense design."""
    from sparse3d.fit import fit_design

    S, M, data, kw, ref = _fit_case(22, (-4, 5), options)
    n, cols = S.nsources, M
    if options == "background":
        data = data + 3.0
        kw["background"] = "constant"
        cols = np.hstack([M, np.ones((M.shape[0], 1))])
    p, e, *_ = lstsq_fit(cols, data.ravel(), **ref)
    r = fit_design(S, data, imshape=S.imshape, solver="nd", **kw)
    assert r.solver == "nd"
    close(r.weights, p[:n], rtol=1e-7)
    close(r.weights_err, e[:n], rtol=1e-7)


@pytest.mark.filterwarnings("ignore::sparse3d.fit.UnconstrainedSourceWarning")  # sources off the image
@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("options", ["errors", "mask", "background", "frames"])
def test_chi2_of_near_perfect_fits_from_the_stamps(compiled_kernels, monkeypatch, grouped, dtype, options):
    """Bright sources, little noise: the chi-square from the normal equations cancels ~18 digits,
    so it is recomputed from the residuals, the model taken from the stamps (no design matrix, a
    compiled pass per stamp group in float64; with a background model the design matrix exists
    and is used): against the dense residuals at the fit's own weights and
    against ``lstsq``."""
    from sparse3d.fit import normal_chi2

    calls = []
    original = normal_chi2.stamp_chi2
    monkeypatch.setattr(normal_chi2, "stamp_chi2", lambda *a: calls.append(1) or original(*a))
    S, M, _, kw, ref = _fit_case(31, (-2, 5), options)
    if not grouped:  # the largest group alone, as a single-shape array
        big = max(range(len(S.groups)), key=lambda g: S.groups[g].nsources)
        S, M = S.groups[big], M[:, S.group_sources[big]]
    S = S.astype(dtype)
    M = M.astype(dtype).astype(np.float64)
    (H, W), n = S.imshape, S.nsources
    rng = np.random.default_rng(32)
    truth = rng.uniform(1e7, 2e7, n)
    data = (M @ truth + rng.normal(0, 1e-2, H * W)).reshape(H, W)
    cols = M
    if options == "background":
        data, kw["background"] = data + 5.0, "constant"
        cols = np.hstack([M, np.ones((H * W, 1))])
    if options == "mask":
        data = np.where(kw["mask"], np.nan, data)  # masked pixels ignored, whatever they hold
    frames = [data]
    if options == "frames":
        frames = [data, 0.5 * data + rng.normal(0, 1e-2, (H, W))]
        data = np.stack(frames, axis=-1)
    r = S.fit(data, **kw)
    assert bool(calls) == (options != "background")  # the recomputation from the stamps ran
    chi2 = np.atleast_1d(r.chi2)
    weights = np.asarray(r.weights).reshape(n, -1)
    bg = None if r.background is None else np.asarray(r.background).reshape(1, -1)
    sw = 1.0 / ref["err"] if "err" in ref else np.ones(H * W)
    keep = ~ref["mask"] if "mask" in ref else np.ones(H * W, bool)
    for f, d in enumerate(frames):
        p = np.nan_to_num(weights[:, f])
        if bg is not None:
            p = np.concatenate([p, bg[:, f]])
        res = ((d.ravel() - cols @ p) * sw)[keep]
        np.testing.assert_allclose(chi2[f], np.sum(res**2), rtol=1e-6)
        want = lstsq_fit(cols, np.where(keep, d.ravel(), 0.0), **ref)[2]
        np.testing.assert_allclose(chi2[f], want, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::sparse3d.fit.UnconstrainedSourceWarning")  # sources off the image
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_grouped_fit_of_many_frames_with_errors_and_mask(compiled_kernels, dtype):
    """Right-hand sides from each group's stamps (strip order from five frames on), weighted and
    masked in the kernel: every frame against ``lstsq`` of the dense design."""
    S, M, data, _, _ = _fit_case(41, (5, -3), "plain")
    S = S.astype(dtype)
    M = M.astype(dtype).astype(np.float64)
    H, W = S.imshape
    rng = np.random.default_rng(42)
    err = rng.uniform(0.5, 1.5, (H, W))
    mask = rng.random((H, W)) < 0.15
    frames = np.stack([data * (1 + 0.1 * f) + rng.normal(0, 0.01, (H, W)) for f in range(6)], axis=-1)
    frames[mask] = np.nan
    r = S.fit(frames, errors=err, mask=mask)
    for f in range(frames.shape[2]):
        d = np.nan_to_num(frames[:, :, f]).ravel()
        p, _, chi2, *_ = lstsq_fit(M, d, err=err.ravel(), mask=mask.ravel())
        close(r.weights[:, f], p, rtol=1e-7)
        np.testing.assert_allclose(r.chi2[f], chi2, rtol=1e-7)


@pytest.mark.parametrize("imcorner", [(0, 0), (-4, 11)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_stamp_model_against_the_dense_model(compiled_kernels, imcorner, dtype):
    """``A w`` straight from the stamps of every group (the model of a recomputed chi-square)
    and the weighted square sum of ``d - A w``: interleaved groups, stamps over every edge, a
    group of one source, a weight of 0, against the dense model."""
    from sparse3d.fit.assemble import _regular_stamps
    from sparse3d.fit.rhs import _stamp_model, _stamp_square_sum

    rng = np.random.default_rng(61)
    S, D = _interleaved(rng, imcorner, dtype)
    (H, W), n = S.imshape, S.nsources
    A = D.reshape(H * W, n).astype(np.float64)
    w = rng.normal(0, 3, n)
    w[2] = 0.0
    parts = _regular_stamps(S)
    assert parts is not None and len(parts) == len(S.groups)
    model = _stamp_model(parts, w)
    np.testing.assert_allclose(model[:, 0], A @ w, rtol=1e-12, atol=1e-12)
    # one group alone (a single-shape array: sources None)
    G = S.groups[0]
    wg = w[: G.nsources]
    np.testing.assert_allclose(_stamp_model(_regular_stamps(G), wg)[:, 0], A[:, S.group_sources[0]] @ wg)
    d = rng.normal(0, 1, (H * W, 1))
    ivar = rng.uniform(0.5, 2.0, H * W)
    keep = rng.random(H * W) > 0.2
    d[~keep] = np.nan  # masked pixels are skipped, whatever they hold
    got = _stamp_square_sum(d, ivar, keep, 0.5, model)
    want = np.sum((ivar * (0.5 * (d[:, 0] - A @ w)) ** 2)[keep])
    np.testing.assert_allclose(got, [want], rtol=1e-12)


@pytest.mark.filterwarnings("ignore::sparse3d.fit.UnconstrainedSourceWarning")  # sources off the image
def test_recomputed_chi2_builds_no_csr_matrix(compiled_kernels):
    """A near-perfect fit recomputes its chi-square from the stamps, fit after fit, without the
    array's ``dot`` (whose second call would build and cache the array's CSR matrix)."""
    S, M, _, _, _ = _fit_case(31, (-2, 5), "plain")
    (H, W), n = S.imshape, S.nsources
    truth = np.random.default_rng(3).uniform(1e7, 2e7, n)
    data = (M @ truth).reshape(H, W) + np.random.default_rng(4).normal(0, 1e-2, (H, W))
    for _ in range(3):
        r = S.fit(data)
    assert all("_csr" not in g.__dict__ for g in (S, *S.groups))
    res = data.ravel() - M @ np.nan_to_num(r.weights)
    np.testing.assert_allclose(r.chi2, np.sum(res**2), rtol=1e-6)


@pytest.mark.parametrize("imcorner", [(0, 0), (-4, 11)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["unit", "weights", "masked"])
def test_rhs_and_model_from_the_weighted_stamps(compiled_kernels, imcorner, dtype, kind):
    """The right-hand sides ``diag(c) A^T C^-1 D`` and the weighted residuals
    ``sqrt(C^-1) (D - A diag(c) X)`` from the weighted, scaled stamps the normal matrix was built
    from: interleaved groups, stamps over every edge, masked pixels holding NaN, against the dense
    design."""
    from sparse3d.fit.assemble import _scaled_normal_matrix
    from sparse3d.fit.rhs import _cells_residual, _cells_rhs, _weighted_data

    rng = np.random.default_rng(71)
    S, D = _interleaved(rng, imcorner, dtype)
    (H, W), n = S.imshape, S.nsources
    A = D.reshape(H * W, n).astype(np.float64)
    ivar = _ivar(rng, (H, W), kind)
    keep = None if kind != "masked" else ivar > 0
    cells = []
    N, c = _scaled_normal_matrix(S, ivar, cells)
    assert len(cells) == len(S.groups)
    sw = np.ones(H * W) if ivar is None else np.sqrt(ivar)
    data = rng.normal(0, 1, (H * W, 3))
    if keep is not None:
        data[~keep] = np.nan
    U = _weighted_data(data, ivar, keep)
    clean = np.where(np.isnan(data), 0.0, data)
    want = c[:, None] * (A.T @ (sw[:, None] ** 2 * clean))
    np.testing.assert_allclose(_cells_rhs(cells, U, n), want, rtol=1e-12, atol=1e-12 * np.abs(want).max())
    X = rng.normal(0, 1, (n, 3))
    X[3] = 0.0
    want = sw[:, None] * (clean - A @ (c[:, None] * X))  # the weighted residuals of three frames
    for m in (3, 1):  # several frames, and one (the kernel's path for stamps inside the image)
        R = U[:, :m].copy()
        assert _cells_residual(cells, X[:, :m], R) is None
        np.testing.assert_allclose(R, want[:, :m], rtol=1e-12, atol=1e-12 * np.abs(want).max())
        R = U[:, :m].copy()  # with the chi-squares, summed in the same pass
        chi2 = _cells_residual(cells, X[:, :m], R, 0.25)
        np.testing.assert_allclose(R, want[:, :m], rtol=1e-12, atol=1e-12 * np.abs(want).max())
        np.testing.assert_allclose(chi2, np.sum((0.25 * want[:, :m]) ** 2, axis=0), rtol=1e-12)
