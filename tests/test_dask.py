"""Dask-backed models, fits and source-chunked scenes equal the eager NumPy path.

Runs every lazy result on the threaded scheduler and on a small process-based
``dask.distributed`` cluster started here (2 workers, 1 thread each).
"""

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")

from sparse3d import Sparse3D  # noqa: E402
from sparse3d.dask import DaskFitResult, SourceChunked, _FrameSolver  # noqa: E402
from sparse3d.fit import UnconstrainedSourceWarning, available_solvers, fit_design  # noqa: E402
from sparse3d.testing import gaussian_scene, random_scene  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit="1GiB"
        )
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(params=["threads", "processes"])
def scheduler(request, client):
    """A compute function for the threaded scheduler or the distributed cluster."""
    if request.param == "threads":
        return lambda *xs: dask.compute(*xs, scheduler="threads")
    return lambda *xs: client.compute(list(xs), sync=True)


def _gauss(row_phase, col_phase, x3d, y3d, sigma=1.0):
    return np.exp(-((x3d - row_phase) ** 2 + (y3d - col_phase) ** 2) / (2 * sigma**2))


@pytest.fixture(scope="module")
def gscene():
    g = gaussian_scene((24, 28), nsources=25, stamp_size=5, seed=3)
    S = Sparse3D(
        _gauss(g["row_phase"], g["col_phase"], g["x3d"], g["y3d"]), g["row3d"], g["col3d"], g["imshape"]
    )
    return g, S


@pytest.fixture(scope="module")
def frames(gscene):
    _, S = gscene
    rng = np.random.default_rng(7)
    truth = rng.uniform(1, 10, size=(S.nsources, 10))
    return S.dot(truth) + rng.normal(scale=0.05, size=(*S.imshape, 10))


def _values(graph, cls):
    """Values of type ``cls`` stored as keys of a graph (Dask task spec or legacy tuples)."""
    return [v for v in (getattr(x, "value", x) for x in dict(graph).values()) if isinstance(v, cls)]


# ---- model cubes --------------------------------------------------------------------------
@pytest.mark.parametrize("chunks", [(12, 3), (5, 4), (12, 10), (1, 10)])
def test_model_cube_equals_eager(scheduler, chunks):
    S = random_scene(1, nsources=12, imshape=(11, 13)).build()
    W = np.random.default_rng(0).normal(size=(12, 10))
    w = da.from_array(W, chunks=chunks)
    for r in (np.dot(S, w), S.dot(w), S @ w, np.tensordot(S, w, axes=([2], [0]))):
        assert isinstance(r, da.Array)
        assert r.shape == (11, 13, 10) and r.chunks[2] == w.chunks[1] and r.numblocks[:2] == (1, 1)
    (out,) = scheduler(S.dot(w))
    np.testing.assert_allclose(out, S.dot(W), rtol=1e-12, atol=1e-12)


def test_model_image_1d_weights_and_corner(scheduler):
    S = random_scene(2, nsources=9, imcorner=(-4, 7)).build()
    W = np.random.default_rng(1).normal(size=9)
    (out,) = scheduler(S.dot(da.from_array(W, chunks=4)))
    np.testing.assert_allclose(out, S.dot(W), rtol=1e-12, atol=1e-12)


def test_integer_and_float32_dtypes():
    for dtype in (np.int64, np.float32):
        S = random_scene(3, nsources=6, dtype=dtype).build()
        W = np.arange(6 * 4).reshape(6, 4).astype(dtype)
        r = S.dot(da.from_array(W, chunks=(3, 2)))
        assert r.dtype == S.dot(W).dtype
        np.testing.assert_allclose(r.compute(scheduler="sync"), S.dot(W), rtol=1e-6)


def test_sparse3d_is_one_graph_key():
    S = random_scene(4, nsources=12, imshape=(30, 30)).build()
    W = np.ones((12, 64))
    sizes = []
    for nchunks in (2, 32):
        r = S.dot(da.from_array(W, chunks=(12, 64 // nchunks)))
        graph = r.__dask_graph__()
        assert len(_values(graph, Sparse3D)) == 1  # S is stored once, referenced by every task
        sizes.append(len(pickle.dumps(dict(graph))) - W.nbytes)
    # 16x the tasks, but S is not duplicated: the graph grows far less than 16x S
    assert sizes[1] - sizes[0] < 4 * pickle.dumps(S).__len__()
    # split along sources: one key per chunk, values not duplicated
    r = S.dot(da.from_array(W, chunks=(4, 8)))
    parts = _values(r.__dask_graph__(), Sparse3D)
    assert [p.nsources for p in parts] == [4, 4, 4]


def test_bad_weights():
    S = random_scene(5, nsources=6).build()
    with pytest.raises(ValueError, match="nsources=6"):
        S.dot(da.ones((5, 3)))
    with pytest.raises(ValueError):
        S.dot(da.ones((6, 2, 2)))


# ---- projections --------------------------------------------------------------------------
def test_projection_equals_eager(scheduler):
    S = random_scene(6, nsources=8, imshape=(10, 12)).build()
    Y = np.random.default_rng(2).normal(size=(10, 12, 7))
    p = np.tensordot(S, da.from_array(Y, chunks=(5, 12, 3)), axes=([0, 1], [0, 1]))
    assert isinstance(p, da.Array) and p.shape == (8, 7)
    p1 = np.tensordot(S, da.from_array(Y[:, :, 0], chunks=5), axes=([0, 1], [0, 1]))
    out, out1 = scheduler(p, p1)
    np.testing.assert_allclose(out, np.tensordot(S, Y, axes=([0, 1], [0, 1])), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        out1, np.tensordot(S, Y[:, :, 0], axes=([0, 1], [0, 1])), rtol=1e-12, atol=1e-12
    )


# ---- fitting many frames ------------------------------------------------------------------
def test_fit_equals_eager(scheduler, gscene, frames):
    _, S = gscene
    eager = S.fit(frames)
    res = S.fit(da.from_array(frames, chunks=(24, 28, 3)))
    assert isinstance(res, DaskFitResult) and isinstance(res.weights, da.Array)
    assert res.weights.shape == (S.nsources, 10) and res.weights.chunks[1] == (3, 3, 3, 1)
    w, chi2 = scheduler(res.weights, res.chi2)
    np.testing.assert_allclose(w, eager.weights, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(chi2, eager.chi2, rtol=1e-8)
    np.testing.assert_allclose(res.weights_err, eager.weights_err, rtol=1e-9)
    (model,) = scheduler(res.model)
    np.testing.assert_allclose(model, eager.model, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("solver", available_solvers())
def test_fit_equals_eager_with_every_solver(gscene, frames, solver):
    """The shipped (portable) factor of each solver solves like the eager fit."""
    from sparse3d.dask import fit as dask_fit

    _, S = gscene
    eager = fit_design(S.tocsc(), frames, imshape=S.imshape, solver=solver)
    res = dask_fit(S, da.from_array(frames, chunks=(24, 28, 3)), solver=solver).compute(scheduler="sync")
    np.testing.assert_allclose(res.weights, eager.weights, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.weights_err, eager.weights_err, rtol=1e-9)
    # twice: solving must not disturb the shipped factor (SuperLU index arrays are shared)
    again = dask_fit(S, da.from_array(frames, chunks=(24, 28, 5)), solver=solver).compute(scheduler="sync")
    np.testing.assert_allclose(again.weights, eager.weights, rtol=1e-9, atol=1e-9)


def test_fit_errors_mask_prior_and_unconstrained(gscene, frames):
    _, S = gscene
    rng = np.random.default_rng(3)
    errors = rng.uniform(0.5, 2.0, size=S.imshape)
    mask = rng.random(S.imshape) < 0.1
    mask[:6] = True  # some sources lose every pixel
    data = frames.copy()
    data[mask] = np.nan
    sigma = np.full(S.nsources, np.inf)
    sigma[:3] = 50.0
    kw = dict(errors=errors, mask=mask, prior_mu=2.0, prior_sigma=sigma)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        eager = S.fit(data, **kw)
        res = S.fit(da.from_array(data, chunks=(12, 28, 4)), **kw).compute(scheduler="threads")
    assert res.n_unconstrained == eager.n_unconstrained > 0
    np.testing.assert_allclose(res.weights, eager.weights, rtol=1e-9, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(res.chi2, eager.chi2, rtol=1e-8)
    np.testing.assert_allclose(res.weights_err, eager.weights_err, rtol=1e-9, equal_nan=True)
    assert res.n_pixels == eager.n_pixels


def test_fit_single_image(gscene, frames):
    _, S = gscene
    eager = S.fit(frames[:, :, 0])
    res = S.fit(da.from_array(frames[:, :, 0])).compute(scheduler="sync")
    np.testing.assert_allclose(res.weights, eager.weights, rtol=1e-9)
    assert np.shape(res.chi2) == () and np.isclose(res.chi2, eager.chi2)


def test_fit_ships_one_factorised_solver(gscene, frames):
    _, S = gscene
    res = S.fit(da.from_array(frames, chunks=(24, 28, 1)))
    graph = res.weights.__dask_graph__()
    solvers = _values(graph, _FrameSolver)
    assert len(solvers) == 1 and solvers[0].factor is not None  # factorised once, on the client
    assert len(_values(graph, Sparse3D)) == 0  # the solver carries the design matrix


@pytest.mark.parametrize("lazy_errors", [False, True])
def test_fit_with_per_frame_error_maps_equals_eager(gscene, frames, lazy_errors):
    _, S = gscene
    rng = np.random.default_rng(5)
    errors = rng.uniform(0.5, 2.0, size=frames.shape)
    errors[:, :, 4] = errors[:, :, 3]  # two frames share a map: grouped, one factorisation
    mask = np.zeros(S.imshape, dtype=bool)
    mask[:6] = True  # some sources lose every pixel
    kw = dict(mask=mask, prior_mu=1.0, prior_sigma=np.r_[np.full(3, 30.0), np.full(S.nsources - 3, np.inf)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eager = S.fit(frames, errors=errors, **kw)
        err = da.from_array(errors, chunks=(24, 28, 4)) if lazy_errors else errors
        res = S.fit(da.from_array(frames, chunks=(24, 28, 4)), errors=err, **kw)
    assert sum(issubclass(w.category, UnconstrainedSourceWarning) for w in caught) == 2  # eager + dask
    assert isinstance(res.weights_err, da.Array) and res.weights_err.shape == (S.nsources, 10)
    out = res.compute(scheduler="threads")
    np.testing.assert_allclose(out.weights, eager.weights, rtol=1e-9, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(out.weights_err, eager.weights_err, rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(out.chi2, eager.chi2, rtol=1e-8)
    assert out.n_unconstrained == eager.n_unconstrained > 0 and out.n_pixels == eager.n_pixels
    graph = res.weights.__dask_graph__()
    assert len(_values(graph, (sp.spmatrix, sp.sparray))) == 1  # the design matrix ships once


def test_fit_refusals(gscene, frames):
    _, S = gscene
    with pytest.raises(ValueError, match="errors"):
        S.fit(da.from_array(frames), errors=np.ones((3, 3)))
    from sparse3d.fit import SingularNormalMatrixError

    twice = np.concatenate([S, S[:, :, :1]], axis=2)
    with pytest.raises(SingularNormalMatrixError):
        twice.fit(da.from_array(frames))
    bad = frames.copy()
    bad[0, 0, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        S.fit(da.from_array(bad, chunks=(24, 28, 3))).weights.compute(scheduler="sync")


# ---- scenes split by source ---------------------------------------------------------------
def test_source_chunked_dot_and_projection(scheduler, gscene):
    _, S = gscene
    SC = S.to_dask(source_chunks=7)
    assert isinstance(SC, SourceChunked) and SC.chunks == (7, 7, 7, 4) and SC.shape == S.shape
    W = np.random.default_rng(4).normal(size=(S.nsources, 5))
    Y = np.random.default_rng(5).normal(size=(*S.imshape, 5))
    model, proj, img = scheduler(SC.dot(W), SC.project(Y), SC.dot(da.from_array(W[:, 0], chunks=10)))
    np.testing.assert_allclose(model, S.dot(W), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(proj, np.tensordot(S, Y, axes=([0, 1], [0, 1])), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(img, S.dot(W[:, 0]), rtol=1e-12, atol=1e-12)
    assert np.array_equal(SC.compute(scheduler="sync").data, S.data)


@pytest.mark.parametrize("lazy_params", [False, True])
def test_from_function_gaussian(scheduler, gscene, lazy_params):
    g, S = gscene
    params = {k: g[k] for k in ("row_phase", "col_phase", "x3d", "y3d")}
    row, col = g["row3d"], g["col3d"]
    if lazy_params:
        params = {k: da.from_array(v, chunks=v.shape[:-1] + (10,)) for k, v in params.items()}
        row, col = da.from_array(row, chunks=(5, 5, 9)), col
    SC = SourceChunked.from_function(_gauss, params, row, col, g["imshape"], chunks=6)
    assert SC.chunks == (6, 6, 6, 6, 1)
    W = np.random.default_rng(6).uniform(size=(S.nsources, 4))
    (model,) = scheduler(SC.dot(da.from_array(W, chunks=(25, 2))))
    np.testing.assert_allclose(model, S.dot(W), rtol=1e-12, atol=1e-12)


def test_persisted_source_chunks_on_cluster(client, gscene):
    _, S = gscene
    SC = S.to_dask(source_chunks=10).persist()
    W = np.random.default_rng(8).normal(size=(S.nsources, 3))
    out = client.compute(SC.dot(W), sync=True)
    np.testing.assert_allclose(out, S.dot(W), rtol=1e-12, atol=1e-12)


# ---- xarray -------------------------------------------------------------------------------
def test_xarray_dot_and_per_source_products(gscene, frames):
    xr = pytest.importorskip("xarray")
    _, S = gscene
    X = S.to_xarray()
    W = np.random.default_rng(9).normal(size=(S.nsources, 6))
    wd = xr.DataArray(da.from_array(W, chunks=(S.nsources, 2)), dims=("source", "time"))
    model = xr.dot(X, wd, dim="source")
    assert isinstance(model.data, da.Array) and model.dims == ("row", "col", "time")
    np.testing.assert_allclose(model.compute().values, S.dot(W), rtol=1e-12, atol=1e-12)
    fd = xr.DataArray(da.from_array(frames, chunks=(24, 28, 5)), dims=("row", "col", "time"))
    fd = fd.assign_coords(row=X.row, col=X.col)
    proj = xr.dot(X, fd, dim=["row", "col"])
    assert isinstance(proj.data, da.Array)
    np.testing.assert_allclose(
        proj.transpose("source", "time").values, np.tensordot(S, frames, axes=([0, 1], [0, 1])), rtol=1e-12
    )
    # per-source Dask values are (nsources,) numbers: they are computed and the stamps scaled
    scaled = X * wd.isel(time=0)
    assert isinstance(scaled.data, Sparse3D)
    np.testing.assert_allclose(scaled.data.data, S.data * W[:, 0], rtol=1e-12)


def test_import_sparse3d_does_not_import_dask():
    code = "import sys, sparse3d; assert not any(m == 'dask' or m.startswith('dask.') for m in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- large arrays on a cluster: scattered once, not embedded in the graph -----------------
def test_large_arrays_are_scattered_once_not_embedded(client):
    import sparse3d.dask as sdask

    g = gaussian_scene((120, 120), nsources=1500, stamp_size=9, seed=5)
    S = Sparse3D(
        _gauss(g["row_phase"], g["col_phase"], g["x3d"], g["y3d"]), g["row3d"], g["col3d"], g["imshape"]
    )
    assert sdask._pickled_nbytes(S) > sdask.SCATTER_BYTES  # large: 1.9 MB of stamps and positions
    rng = np.random.default_rng(9)
    W = rng.uniform(1, 10, size=(S.nsources, 4))
    frames = S.dot(W) + rng.normal(scale=0.05, size=(120, 120, 4))  # 460 kB
    # without the scatter, each graph below would carry S (and the fit its solver): > 1 MB
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "1MB"}):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cube = S.dot(da.from_array(W, chunks=(S.nsources, 2)))
            again = S.dot(da.from_array(W, chunks=(S.nsources, 1)))
            res = S.fit(da.from_array(frames, chunks=(120, 120, 2)))
            out, out2, weights = client.compute([cube, again, res.weights], sync=True)
    assert not [w for w in caught if "large graph" in str(w.message)], [str(w.message) for w in caught]
    for graph in (cube.__dask_graph__(), res.weights.__dask_graph__()):
        assert not _values(graph, Sparse3D) and not _values(graph, _FrameSolver)
        assert _values(graph, distributed.Future)
    # the same future serves both model cubes: S is sent to the cluster once
    futures = [_values(c.__dask_graph__(), distributed.Future) for c in (cube, again)]
    assert [f.key for f in futures[0]] == [f.key for f in futures[1]]
    np.testing.assert_allclose(out, S.dot(W), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out2, S.dot(W), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(weights, S.fit(frames).weights, rtol=1e-9, atol=1e-9)


def test_small_arrays_and_other_schedulers_stay_embedded(client, gscene):
    _, S = gscene
    W = np.ones((S.nsources, 4))
    small = S.dot(da.from_array(W, chunks=(S.nsources, 2)))  # below SCATTER_BYTES
    assert len(_values(small.__dask_graph__(), Sparse3D)) == 1
    import sparse3d.dask as sdask

    with dask.config.set(scheduler="threads"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(sdask._graph, "SCATTER_BYTES", 0)
        threaded = S.dot(da.from_array(W, chunks=(S.nsources, 2)))  # not for the cluster
        assert len(_values(threaded.__dask_graph__(), Sparse3D)) == 1
        np.testing.assert_allclose(threaded.compute(), S.dot(W), rtol=1e-12)
