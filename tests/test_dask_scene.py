"""The distributed scene fit (``SourceChunked.fit``) equals the eager fit of the whole scene.

The reference is :meth:`Sparse3D.fit` on the assembled scene (one sparse Cholesky of the
global normal matrix, errors by selected inversion), itself checked against dense NumPy in
``tests/test_fit.py``; here each weight must agree within 1e-3 of its 1-sigma error and each
error within 1 %, on the threaded path and on a process-based ``LocalCluster`` (2 workers).
"""

import warnings

import numpy as np
import pytest

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")

from sparse3d import Sparse3D  # noqa: E402
from sparse3d.dask import SceneFitResult, SourceChunked  # noqa: E402
from sparse3d.fit import UnconstrainedSourceWarning  # noqa: E402
from sparse3d.testing import gaussian_scene  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cl = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, memory_limit="1GiB"
        )
    yield cl
    cl.close()


def _gauss(row_phase, col_phase, x3d, y3d, sigma=1.0):
    return np.exp(-((x3d - row_phase) ** 2 + (y3d - col_phase) ** 2) / (2 * sigma**2))


def _scene(imshape=(256, 256), nsources=2000, stamp=7, seed=1, imcorner=(0, 0), dtype=np.float64):
    g = gaussian_scene(imshape, nsources=nsources, stamp_size=stamp, seed=seed)
    # sources up to half a stamp beyond every edge: stamps hang over the image edges
    rng = np.random.default_rng(seed)
    dr, dc = rng.integers(-stamp // 2, stamp // 2 + 1, size=(2, nsources))
    values = _gauss(g["row_phase"], g["col_phase"], g["x3d"], g["y3d"]).astype(dtype)
    row = g["row3d"] + dr + imcorner[0]
    col = g["col3d"] + dc + imcorner[1]
    return Sparse3D(values, row, col, imshape, imcorner=imcorner)


def _data(S, k=None, seed=2):
    rng = np.random.default_rng(seed)
    shape = (S.nsources,) if k is None else (S.nsources, k)
    truth = rng.uniform(1, 100, shape)
    errors = rng.uniform(0.5, 1.5, S.imshape)
    noise = rng.normal(size=(*S.imshape, *shape[1:]))
    return S.dot(truth) + noise * (errors if k is None else errors[:, :, None]), errors


def _assert_matches_eager(res, eager):
    sig = eager.weights_err
    ok = np.isfinite(sig)
    w, we = np.asarray(res.weights), np.asarray(eager.weights)
    dw = np.abs(w - we) / (sig if w.ndim == 1 else sig[:, None])
    assert np.all(dw[ok] < 1e-3), np.max(dw[ok])
    np.testing.assert_allclose(res.weights_err[ok], sig[ok], rtol=1e-2)
    assert np.array_equal(np.isnan(res.weights_err), ~ok)
    np.testing.assert_allclose(res.chi2, eager.chi2, rtol=1e-6)
    assert res.n_pixels == eager.n_pixels


def test_scene_fit_equals_eager_on_threads():
    S = _scene()
    data, errors = _data(S)
    eager = S.fit(data, errors=errors)
    res = S.to_dask(source_chunks=500).fit(data, errors=errors, tile_size=64)
    assert isinstance(res, SceneFitResult) and res.converged
    assert res.n_tiles == 16 and res.weights.shape == (S.nsources,)
    _assert_matches_eager(res, eager)


def test_scene_fit_on_a_cluster_by_address_with_frames_mask_prior_and_corner(cluster):
    """A frame stack on Dask, errors, a mask, priors, a non-zero imcorner; the scheduler address
    as a string (how a remote cluster is reached) goes through the same code path."""
    S = _scene(imcorner=(5, -3), nsources=3000)
    data, errors = _data(S, k=3)
    rng = np.random.default_rng(4)
    mask = rng.uniform(size=S.imshape) < 0.05
    prior = rng.uniform(50, 500, S.nsources)
    eager = S.fit(data, errors=errors, mask=mask, prior_mu=30.0, prior_sigma=prior)
    frames = da.from_array(data, chunks=(100, 100, 3))
    res = S.to_dask(source_chunks=700).fit(
        frames,
        errors=errors,
        mask=mask,
        prior_mu=30.0,
        prior_sigma=prior,
        tile_size=(64, 100),
        client=cluster.scheduler_address,
    )
    assert res.weights.shape == (S.nsources, 3) and res.chi2.shape == (3,)
    assert res.n_tiles == 4 * 3
    _assert_matches_eager(res, eager)


def test_scene_fit_with_the_default_client_and_stamps_computed_on_workers(cluster):
    """``from_function`` stamps (never assembled on the client), the default client."""
    g = gaussian_scene((200, 150), nsources=1500, stamp_size=5, seed=8)
    S = Sparse3D(
        _gauss(g["row_phase"], g["col_phase"], g["x3d"], g["y3d"]), g["row3d"], g["col3d"], g["imshape"]
    )
    data, errors = _data(S)
    eager = S.fit(data, errors=errors)
    params = {
        "row_phase": da.from_array(g["row_phase"], chunks=400),
        "col_phase": da.from_array(g["col_phase"], chunks=400),
        "x3d": g["x3d"],
        "y3d": g["y3d"],
    }
    SC = SourceChunked.from_function(_gauss, params, g["row3d"], g["col3d"], g["imshape"], chunks=400)
    def refuse(*args, **kwargs):
        raise AssertionError("the client process must not build stamps, designs or normal matrices")

    with distributed.Client(cluster) as client, pytest.MonkeyPatch.context() as mp:
        assert distributed.default_client() is client
        # the workers are other processes: these patches only bite if the client does the work
        import sparse3d.fit

        for name in ("tocsr", "tocsc", "__init__"):
            mp.setattr(Sparse3D, name, refuse)
        mp.setattr(sparse3d.fit, "prepare_normal_equations", refuse)
        res = SC.fit(da.from_array(data, chunks=(50, 150)), errors=errors, tile_size=48, halo=10)
    _assert_matches_eager(res, eager)


@pytest.mark.parametrize("halo_stamps", [1, 2])
def test_tile_errors_and_halo_fit_are_close_with_a_small_halo(halo_stamps):
    """The halo-only errors are within 1 % of the global ones from one stamp of halo on; with
    ``max_iter=0`` the weights are each tile's fit with its halo (no iteration)."""
    S = _scene(nsources=4000, seed=5)
    data, errors = _data(S, seed=6)
    eager = S.fit(data, errors=errors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = S.to_dask(500).fit(data, errors=errors, tile_size=64, halo=7 * halo_stamps, max_iter=0)
    np.testing.assert_allclose(res.weights_err, eager.weights_err, rtol=1e-2)
    exact = S.to_dask(500).fit(data, errors=errors, tile_size=64, halo=7 * halo_stamps)
    assert exact.converged and exact.n_iterations >= 1
    _assert_matches_eager(exact, eager)


def test_float32_single_tile_and_one_source():
    S = _scene(imshape=(40, 30), nsources=60, stamp=5, dtype=np.float32)
    data, errors = _data(S)
    eager = S.fit(data, errors=errors)
    _assert_matches_eager(S.to_dask(20).fit(data, errors=errors), eager)  # default tile: the image
    S1 = _scene(imshape=(20, 20), nsources=1, stamp=5)
    d1, e1 = _data(S1)
    _assert_matches_eager(S1.to_dask().fit(d1, errors=e1, tile_size=8, halo=5), S1.fit(d1, errors=e1))


def test_zero_sources_and_empty_tiles():
    S = _scene(imshape=(32, 32), nsources=1, stamp=3)
    S0 = S[:, :, :0]
    data = np.random.default_rng(0).normal(size=(32, 32))
    res = S0.to_dask().fit(data, tile_size=8, halo=3)
    assert res.weights.shape == (0,) and res.n_tiles == 16
    np.testing.assert_allclose(res.chi2, np.sum(data**2))
    # one source: 15 of 16 tiles own nothing but still count their pixels' chi-square
    eager = S.fit(data)
    _assert_matches_eager(S.to_dask().fit(data, tile_size=8, halo=3), eager)


def test_unconstrained_sources_are_nan_with_one_warning():
    S = _scene(imshape=(64, 64), nsources=100, stamp=5, seed=3)
    data, errors = _data(S)
    mask = np.zeros(S.imshape, dtype=bool)
    r, c = S.row[:, :, 0], S.col[:, :, 0]
    inside = (r >= 0) & (r < 64) & (c >= 0) & (c < 64)
    mask[r[inside], c[inside]] = True  # source 0 loses every pixel
    with pytest.warns(UnconstrainedSourceWarning):
        eager = S.fit(data, errors=errors, mask=mask)
    with pytest.warns(UnconstrainedSourceWarning, match="source"):
        res = S.to_dask(30).fit(data, errors=errors, mask=mask, tile_size=20)
    assert np.isnan(res.weights[0]) and res.unconstrained[0]
    _assert_matches_eager(res, eager)


def test_dask_fit_function_delegates_and_not_converging_warns():
    from sparse3d.dask import fit as dask_fit

    S = _scene(imshape=(64, 64), nsources=300, stamp=5)
    data, errors = _data(S)
    res = dask_fit(S.to_dask(100), data, errors=errors)
    _assert_matches_eager(res, S.fit(data, errors=errors))
    with pytest.warns(RuntimeWarning, match="max_iter"):
        out = S.to_dask(100).fit(data, errors=errors, tile_size=16, halo=5, tol=1e-12, max_iter=1)
    assert not out.converged and out.n_iterations == 1


def test_stamps_wider_than_the_halo_are_refused_after_measuring():
    """A SourceChunked whose stamp size is not declared: the halo is checked against the stamps."""
    S = _scene(imshape=(40, 40), nsources=20, stamp=7)
    SC = S.to_dask(10)
    bare = SourceChunked(SC.parts, SC.chunks, SC.imshape, SC.imcorner, SC.dtype)
    with pytest.raises(ValueError, match="halo must be given"):
        bare.fit(np.zeros((40, 40)))
    with pytest.raises(ValueError, match="the largest stamp spans"):
        bare.fit(np.zeros((40, 40)), halo=4)


# ---- arrays with several stamp groups (mixed stamp sizes) --------------------------------------
def _grouped_scene(imcorner=(5, -3), seed=11):
    """5x5 faint stars, 11x11 bright ones and one 15x15 star, interleaved in source order; stamps
    hang over every edge. Returns the grouped array and the permutation that interleaved it."""
    parts = [
        _scene(nsources=900, stamp=5, seed=seed, imcorner=imcorner),
        _scene(nsources=60, stamp=11, seed=seed + 1, imcorner=imcorner),
        _scene(nsources=1, stamp=15, seed=seed + 2, imcorner=imcorner),
    ]
    cat = np.concatenate(parts, axis=2)
    perm = np.random.default_rng(seed).permutation(cat.nsources)
    S = cat[:, :, perm]
    assert sorted(S.stamp_shapes) == [(5, 5), (11, 11), (15, 15)]
    assert not all(np.all(np.diff(g) == 1) for g in S.group_sources)  # groups interleaved
    return S


def test_grouped_scene_fit_equals_eager_grouped_fit():
    """Mixed stamp sizes: the tiles' designs are grouped arrays in each tile's source order;
    the default halo is two of the largest stamps. Weights to 1e-6 sigma with a tight ``tol``."""
    S = _grouped_scene()
    data, errors = _data(S, seed=12)
    with pytest.warns(UnconstrainedSourceWarning):  # a few stamps lie wholly off the image
        eager = S.fit(data, errors=errors)
    SC = S.to_dask(source_chunks=250)
    assert SC.stamp_shape == (15, 15)
    with pytest.warns(UnconstrainedSourceWarning):
        res = SC.fit(data, errors=errors, tile_size=64, tol=1e-8)
    assert res.converged and res.n_tiles == 16
    _assert_matches_eager(res, eager)
    ok = np.isfinite(eager.weights_err)
    assert np.max(np.abs(res.weights - eager.weights)[ok] / eager.weights_err[ok]) < 1e-6
    # the single-shape path is the same code: one group of equal shapes gives the same answer
    one = S.groups[0]
    d1, e1 = _data(one, seed=13)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconstrainedSourceWarning)
        _assert_matches_eager(one.to_dask(300).fit(d1, errors=e1, tile_size=64), one.fit(d1, errors=e1))


def test_grouped_scene_fit_on_a_cluster_with_frames_mask_prior(cluster):
    S = _grouped_scene(imcorner=(-20, 40), seed=21)
    data, errors = _data(S, k=2, seed=22)
    rng = np.random.default_rng(23)
    mask = rng.uniform(size=S.imshape) < 0.05
    prior = rng.uniform(50, 500, S.nsources)
    eager = S.fit(data, errors=errors, mask=mask, prior_mu=30.0, prior_sigma=prior)
    with distributed.Client(cluster) as client:
        res = S.to_dask(source_chunks=400).fit(
            da.from_array(data, chunks=(100, 100, 2)),
            errors=errors,
            mask=mask,
            prior_mu=30.0,
            prior_sigma=prior,
            tile_size=(100, 64),
            client=client,
        )
    assert res.weights.shape == (S.nsources, 2)
    _assert_matches_eager(res, eager)
