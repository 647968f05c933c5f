"""Arrays with several stamp groups (mixed stamp sizes) against the dense reference.

Small grouped scenes (:func:`sparse3d.testing.random_grouped_scene`: stamps hanging over every
edge, image corners, float32, groups of one source, an empty part) are compared with the dense
NumPy array built independently from the parts' stamps. The hypothesis properties of grouped
arrays are in ``tests/test_properties.py``.
"""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from fit_reference import close, fit_options, lstsq_fit  # noqa: I001 - tests/ is on sys.path

from sparse3d import Sparse3D
from sparse3d._functions import GROUPED_UNSUPPORTED, HANDLED_FUNCTIONS
from sparse3d.testing import dense_reference, random_grouped_scene


def _dense(x):
    return x.todense() if hasattr(x, "todense") else np.asarray(x)


def _same(actual, expected, rtol=None):
    got, expected = _dense(actual), np.asarray(expected)
    assert got.shape == expected.shape
    if expected.dtype.kind in "fc":
        r = rtol or (2e-5 if np.float32 in (got.dtype, expected.dtype) else 1e-10)
        np.testing.assert_allclose(got, expected, rtol=r, atol=r, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, expected)


def test_groups_layout(gscene):
    S = gscene.build()
    D = gscene.dense()
    _same(S, D)
    assert S.shape == D.shape and S.dtype == D.dtype
    shapes = [p.data.shape[:2] for p in gscene.parts if p.data.shape[2]]
    assert list(S.stamp_shapes) == list(dict.fromkeys(shapes))  # one group per stamp shape
    assert np.array_equal(np.sort(np.concatenate(S.group_sources)), np.arange(S.nsources))
    for g, idx in zip(S.groups, S.group_sources):
        assert isinstance(g, Sparse3D) and len(g.stamp_shapes) == 1
        _same(g, D[:, :, idx])
    assert S.nbytes > 0 and "stamp groups" in S._repr_html_()


def test_single_block_attributes_name_groups(gscene):
    S = gscene.build()
    if len(S.groups) == 1:
        pytest.skip("the parts merged into one group")
    for attr in ("data", "row", "col", "stamp_shape", "in_image"):
        with pytest.raises(ValueError, match=r"S\.groups\[i\]"):
            getattr(S, attr)
    with pytest.raises(ValueError, match="one per group"):
        S.with_data(np.ones(3))


def test_with_data_per_group(gscene):
    S = gscene.build()
    if len(S.groups) == 1:
        pytest.skip("the parts merged into one group")
    blocks = [np.full(g.stamp_shape, i + 1.0) for i, g in enumerate(S.groups)]
    T = S.with_data(blocks)
    expected = np.zeros(S.shape)
    for g, b, idx in zip(S.groups, blocks, S.group_sources):
        expected[:, :, idx] = dense_reference(b, g.row, g.col, S.imshape, S.imcorner)
    _same(T, expected)
    assert T.stamp_shapes == S.stamp_shapes


def test_concatenate_of_grouped_regroups(gscene):
    S = gscene.build()
    D = gscene.dense()
    twice = np.concatenate([S, S], axis=-1)
    _same(twice, np.concatenate([D, D], axis=2))
    # equal shapes form one group wherever their sources are
    assert twice.stamp_shapes == S.stamp_shapes
    # mixed dtype promotes, as np.concatenate of ndarrays
    mixed = np.concatenate([S.astype(np.float32), S.groups[0].astype(np.int64)], axis=2)
    assert mixed.dtype == np.result_type(np.float32, np.int64)
    _same(
        mixed,
        np.concatenate([D.astype(np.float32), _dense(S.groups[0]).astype(np.int64)], axis=2).astype(
            mixed.dtype
        ),
    )


def test_concatenate_refuses_other_bounds():
    a = random_grouped_scene(0).build()
    b = random_grouped_scene(1, imshape=(5, 5)).build()
    with pytest.raises(ValueError, match="imshape and imcorner"):
        np.concatenate([a, b], axis=2)


def test_pickle_and_equality(gscene):
    S = gscene.build()
    back = pickle.loads(pickle.dumps(S))
    assert back.stamp_shapes == S.stamp_shapes
    _same(back, gscene.dense())
    assert np.array_equal(back, S, equal_nan=True)
    assert back._structure.equals(S._structure)


# ---- every registered NumPy function on a grouped array ------------------------------------
def _registry_cases(gs, S, D, rng):
    """``{numpy function: (sparse3d call, dense reference)}`` for every registry function.

    Elementwise results follow stamp semantics: their references are built from the parts'
    stamp values transformed with NumPy (``on_stamps``), then scattered independently.
    """
    n = S.nsources
    o = np.cumsum([0] + [p.data.shape[2] for p in gs.parts])

    def on_stamps(f):
        return gs.dense([f(p.data, slice(o[i], o[i + 1])) for i, p in enumerate(gs.parts)])

    w = rng.uniform(-1, 1, size=n)
    img = rng.uniform(-1, 1, size=S.imshape)
    pos = S.astype(np.float64)
    Dp = D.astype(np.float64)
    return {
        np.all: (lambda: np.all(S, axis=2), lambda: np.all(D, axis=2)),
        np.any: (lambda: np.any(S, axis=(0, 1)), lambda: np.any(D, axis=(0, 1))),
        np.allclose: (lambda: np.allclose(S, S * 1.0), lambda: True),
        np.amax: (lambda: np.amax(S, axis=0), lambda: np.amax(D, axis=0)),
        np.amin: (lambda: np.amin(S, axis=1), lambda: np.amin(D, axis=1)),
        np.max: (lambda: np.max(S), lambda: np.max(D)),
        np.min: (lambda: np.min(S, axis=2), lambda: np.min(D, axis=2)),
        np.around: (lambda: np.around(pos, 1), lambda: np.around(Dp, 1)),
        np.round: (lambda: np.round(pos, 2), lambda: np.round(Dp, 2)),
        np.array_equal: (lambda: np.array_equal(S, D), lambda: True),
        np.clip: (lambda: np.clip(S, -1, 1), lambda: np.clip(D, -1, 1)),
        np.concatenate: (lambda: np.concatenate([S, S], axis=2), lambda: np.concatenate([D, D], axis=2)),
        np.copy: (lambda: np.copy(S), lambda: D),
        np.count_nonzero: (
            lambda: np.count_nonzero(S, axis=(0, 1)),
            lambda: np.count_nonzero(D, axis=(0, 1)),
        ),
        np.dot: (lambda: np.dot(S, w), lambda: Dp @ w),
        np.matmul: (lambda: np.matmul(S, np.c_[w, w]), lambda: Dp @ np.c_[w, w]),
        np.einsum: (lambda: np.einsum("ijk,ij->k", S, img), lambda: np.einsum("ijk,ij->k", Dp, img)),
        np.tensordot: (
            lambda: np.tensordot(S, S, axes=([0, 1], [0, 1])),
            lambda: np.tensordot(D, D, axes=([0, 1], [0, 1])),
        ),
        np.zeros_like: (lambda: np.zeros_like(S), lambda: np.zeros_like(D)),
        np.empty_like: (lambda: np.empty_like(S) * 0, lambda: np.zeros_like(D)),
        np.ones_like: (lambda: np.ones_like(S), lambda: on_stamps(lambda v, k: np.ones_like(v))),
        np.full_like: (lambda: np.full_like(S, 2), lambda: on_stamps(lambda v, k: np.full_like(v, 2))),
        np.gradient: (
            lambda: np.gradient(S, axis=1),
            lambda: on_stamps(lambda v, k: np.gradient(v, axis=1)),
        ),
        np.imag: (lambda: np.imag(S * 1j), lambda: Dp),
        np.real: (lambda: np.real(S * (1 + 0j)), lambda: Dp),
        np.isclose: (
            lambda: np.isclose(S, S + 1e-12),
            lambda: on_stamps(lambda v, k: np.isclose(v, v + 1e-12)),
        ),
        np.iscomplexobj: (lambda: np.iscomplexobj(S), lambda: np.iscomplexobj(D)),
        np.isrealobj: (lambda: np.isrealobj(S), lambda: np.isrealobj(D)),
        np.mean: (lambda: np.mean(S, axis=2), lambda: np.mean(D, axis=2)),
        np.nan_to_num: (lambda: np.nan_to_num(S / S), lambda: on_stamps(lambda v, k: np.nan_to_num(v / v))),
        np.nanmax: (lambda: np.nanmax(S, axis=(0, 1)), lambda: np.nanmax(D, axis=(0, 1))),
        np.nanmin: (lambda: np.nanmin(S, axis=0), lambda: np.nanmin(D, axis=0)),
        np.nanmean: (lambda: np.nanmean(S, axis=1), lambda: np.nanmean(Dp, axis=1)),
        np.nansum: (lambda: np.nansum(S, axis=2), lambda: np.nansum(D, axis=2)),
        np.ndim: (lambda: np.ndim(S), lambda: 3),
        np.nonzero: (lambda: np.stack(np.nonzero(S)), lambda: np.stack(np.nonzero(D))),
        np.prod: (lambda: np.prod(np.sign(S), axis=2), lambda: np.prod(np.sign(D), axis=2)),
        np.result_type: (lambda: np.result_type(S, np.float32), lambda: np.result_type(D, np.float32)),
        np.shape: (lambda: np.shape(S), lambda: D.shape),
        np.size: (lambda: np.size(S), lambda: D.size),
        np.stack: (lambda: np.stack([S, S]), lambda: np.stack([D, D])),
        np.sum: (lambda: np.sum(S, axis=(0, 1)), lambda: np.sum(D, axis=(0, 1))),
        np.transpose: (lambda: np.transpose(S, (2, 0, 1)), lambda: np.transpose(D, (2, 0, 1))),
        np.where: (lambda: np.where(S > 0, S, -w), lambda: on_stamps(lambda v, k: np.where(v > 0, v, -w[k]))),
    }


def test_every_registry_function_on_grouped_arrays(gscene):
    S = gscene.build()
    D = gscene.dense()
    cases = _registry_cases(gscene, S, D, np.random.default_rng(5))
    missing = (
        {f.__name__ for f in HANDLED_FUNCTIONS}
        - {f.__name__ for f in cases}
        - {f.__name__ for f in GROUPED_UNSUPPORTED}
    )
    assert not missing, f"registry functions without a grouped test: {sorted(missing)}"
    for func, (call, ref) in cases.items():
        if func is np.gradient and min(p.data.shape[1] for p in gscene.parts) < 2:
            continue  # np.gradient needs two samples along the axis (NumPy's rule)
        with np.errstate(all="ignore"):
            got, want = call(), ref()
        if isinstance(want, (bool, tuple, int, np.dtype)):
            assert got == want, func.__name__
        else:
            try:
                _same(got, want)
            except AssertionError as exc:
                raise AssertionError(f"np.{func.__name__}: {exc}") from None


def test_where_with_a_sparse_mask(gscene):
    S = gscene.build().astype(np.float64)
    D = gscene.dense().astype(np.float64)
    # ~isnan(S) is a sparse.COO mask with fill value True (xarray's notnull)
    _same(np.where(~np.isnan(S), S, 0.0), np.where(~np.isnan(D), D, 0.0))


# ---- fit ------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", ["plain", "errors", "mask", "priors"])
def test_fit_against_stacked_least_squares(gscene, options):
    S = abs(gscene.build().astype(np.float64)) + 0  # positive stamps
    S = S + (S != 0) * 0.1
    D = S.todense()
    H, W, n = D.shape
    rng = np.random.default_rng(3)
    w = rng.uniform(1, 2, size=n)
    data = D @ w + rng.normal(0, 0.01, size=(H, W))
    kw, ref = fit_options(rng, options, (H, W), n)
    p, e, chi2, _, _ = lstsq_fit(D.reshape(H * W, n), data.ravel(), **ref)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = S.fit(data, **kw)
    assert bool(caught) == bool(np.isnan(p).any())  # one warning for unconstrained sources
    close(r.weights, p, rtol=1e-7)
    close(r.weights_err, e, rtol=1e-7)


def test_fit_with_background_matches_the_csr_design(gscene):
    S = gscene.build().astype(np.float64)
    S = abs(S) + (S != 0) * 0.1
    H, W, n = S.shape
    rng = np.random.default_rng(4)
    data = S.dot(rng.uniform(1, 2, size=n)) + 3.0 + rng.normal(0, 0.01, size=(H, W))
    from sparse3d.fit import fit_design

    with np.errstate(all="ignore"):
        r = S.fit(data, background="constant", prior_sigma=10.0)
        ref = fit_design(S.tocsr(), data, imshape=(H, W), background="constant", prior_sigma=10.0)
    close(r.weights, ref.weights, rtol=1e-8)


# ---- PSF designs with per-source stamp sizes ------------------------------------------------
@pytest.mark.parametrize("model", ["gaussian", "moffat", "image"])
def test_psf_design_per_source_stamp_sizes(model):
    from sparse3d.psf import Gaussian, ImagePSF, Moffat, stamp_sizes_by_flux

    rng = np.random.default_rng(7)
    n = 25
    r, c = rng.uniform(-3, 33, n), rng.uniform(-3, 43, n)
    flux = rng.uniform(0, 10, n)
    sizes = stamp_sizes_by_flux(flux, edges=[5.0, 8.0], sizes=[3, 7, 9])
    if model == "gaussian":
        psf, derivs = Gaussian(sigma=rng.uniform(0.8, 1.5, n)), ("row", "col", "sigma")
    elif model == "moffat":
        psf, derivs = Moffat(alpha=2.0, beta=3.5), ("row", "col")
    else:
        yy, xx = np.mgrid[-12:13, -12:13] / 3.0
        psf, derivs = ImagePSF(np.exp(-0.5 * (yy**2 + xx**2)), oversampling=3), ("row", "col")
    L, d = psf.design(r, c, (30, 40), stamp_shape=sizes, imcorner=(2, -1), derivatives=derivs)
    assert set(L.stamp_shapes) == {(int(s), int(s)) for s in sizes}
    # each source alone with its own stamp size (the single-shape path)
    for k in range(n):
        one = _sub_model(psf, slice(k, k + 1))
        Lk, dk = one.design(r[k : k + 1], c[k : k + 1], (30, 40), int(sizes[k]), (2, -1), derivs)
        _same(L[:, :, k], Lk.todense()[:, :, 0])
        for name in derivs:
            _same(d[name][:, :, k], dk[name].todense()[:, :, 0])
    for name in derivs:
        assert d[name]._structure.equals(L._structure)
    # rectangular per-source shapes and the model image against the sum of single designs
    shapes = np.stack([sizes, np.maximum(sizes - 2, 1)], axis=1)
    L2 = psf.design(r, c, (30, 40), stamp_shape=shapes)
    w = rng.uniform(1, 2, n)
    parts = [np.where(np.all(shapes == s, axis=1))[0] for s in np.unique(shapes, axis=0)]
    expected = sum(
        psf_sub.dot(w[idx])
        for idx in parts
        for psf_sub in [_sub_model(psf, idx).design(r[idx], c[idx], (30, 40), tuple(shapes[idx[0]]))]
    )
    _same(L2.dot(w), expected)


def _sub_model(psf, idx):
    sub = type(psf).__new__(type(psf))
    sub.__dict__.update(psf.__dict__)
    sub._values = {p: (v[idx] if v.ndim == 1 else v) for p, v in psf._values.items()}
    return sub


def test_stamp_sizes_by_flux():
    from sparse3d.psf import stamp_sizes_by_flux

    got = stamp_sizes_by_flux([0.0, 1e4, 9999.0, 1e6, -5], edges=[1e4, 1e5], sizes=[11, 25, 41])
    np.testing.assert_array_equal(got, [11, 25, 11, 41, 11])
    with pytest.raises(ValueError, match="one more than edges"):
        stamp_sizes_by_flux([1.0], edges=[1.0], sizes=[3])
    with pytest.raises(ValueError, match="ascending"):
        stamp_sizes_by_flux([1.0], edges=[2.0, 1.0], sizes=[3, 5, 7])


# ---- xarray views -----------------------------------------------------------------------------
def test_xarray_views_and_netcdf_round_trip(gscene, tmp_path):
    xr = pytest.importorskip("xarray")
    S = gscene.build()
    D = gscene.dense()
    labels = np.arange(S.nsources) * 10 + 3
    da = S.to_xarray(sources=labels)
    _same(da.sum("source").data, D.sum(axis=2))
    if S.nsources:
        _same(da.sel(source=labels[-1]).data, D[:, :, -1])
    view = S.to_xarray(sources=labels, view="stamps")
    if len(S.groups) > 1:
        assert isinstance(view, xr.Dataset) and len(view.data_vars) == len(S.groups)
        for i, idx in enumerate(S.group_sources):
            np.testing.assert_array_equal(view[f"source_{i}"].values, labels[idx])
    back = Sparse3D.from_xarray(view)
    assert back.dtype == S.dtype and back.stamp_shapes == S.stamp_shapes
    assert back._structure.equals(S._structure)
    _same(back, D)
    path = tmp_path / "grouped.nc"
    view.to_netcdf(path)
    opened = xr.open_dataset(path) if len(S.groups) > 1 else xr.open_dataarray(path)
    with opened:
        again = Sparse3D.from_xarray(opened.load())
    assert again.dtype == S.dtype and again._structure.equals(S._structure)
    _same(again, D)


# ---- ROI --------------------------------------------------------------------------------------
def test_roi_of_grouped_array(gscene):
    S = gscene.build()
    D = gscene.dense()
    H, W, n = D.shape
    r0, c0 = gscene.imcorner
    h, w = min(4, H), min(5, W)
    corners = [(r0, c0), (r0 + H - h, c0 + W - w), (r0 + (H - h) // 2, c0 + 1 if W - w >= 1 else c0)]
    roi = S.roi(corners, (h, w))
    windows = np.stack([D[r - r0 : r - r0 + h, c - c0 : c - c0 + w] for r, c in corners])
    _same(roi.todense(), windows)
    wts = np.random.default_rng(2).uniform(-1, 1, size=n)
    _same(roi.dot(wts), np.tensordot(windows.astype(np.float64), wts, axes=([3], [0])))
    _same(roi.tocsc().toarray(), windows.reshape(-1, n))
    moved = S.roi(corners, (h, w)).translate((1, -2))
    _same(moved.todense(), S.translate((1, -2)).roi(corners, (h, w)).todense())


# ---- Dask -------------------------------------------------------------------------------------
def test_dask_paths_of_grouped_array(gscene):
    da = pytest.importorskip("dask.array")
    S = gscene.build().astype(np.float64)
    S = abs(S) + (S != 0) * 0.1
    D = S.todense()
    n = S.nsources
    rng = np.random.default_rng(9)
    w = rng.uniform(1, 2, size=n)
    C = S.to_dask(source_chunks=max(1, n // 3))
    back = C.compute()
    assert back.stamp_shapes == S.stamp_shapes
    _same(back, D)
    _same(np.asarray(C.dot(w).compute()), D @ w)
    _same(np.asarray(S.dot(da.from_array(w, chunks=max(1, n // 2))).compute()), D @ w)
    img = D @ w
    frames = np.stack([img, 2 * img], axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lazy = S.fit(da.from_array(frames, chunks=(-1, -1, 1)), prior_sigma=100.0).compute()
        eager = S.fit(frames, prior_sigma=100.0)
    close(lazy.weights, eager.weights, rtol=1e-8)
    # the tiled scene fit (tiles one stamp wide: several tiles, each a grouped design)
    tiled = C.fit(frames, prior_sigma=100.0, tile_size=max(C.stamp_shape), tol=1e-10)
    close(tiled.weights, eager.weights, rtol=1e-6)
    close(tiled.weights_err, eager.weights_err, rtol=1e-2)


def test_fractional_shift_moves_every_group_with_its_sources(gscene):
    S = gscene.build().astype(np.float64)
    n = S.nsources
    rng = np.random.default_rng(11)
    dr, dc = rng.uniform(-2, 2, size=n), rng.uniform(-2, 2, size=n)
    moved = S.shift((dr, dc))
    assert moved.stamp_shapes == S.stamp_shapes
    expected = np.zeros(S.shape)
    for g, idx in zip(S.groups, S.group_sources):  # each group alone, single-shape path
        expected[:, :, idx] = g.shift((dr[idx], dc[idx])).todense()
    _same(moved, expected)
    _same(
        S.shift((0.25, -0.5)),
        np.concatenate([g.shift((0.25, -0.5)).todense() for g in S.groups], axis=2)[
            :, :, np.argsort(np.concatenate(S.group_sources))
        ],
    )


def test_from_groups_equals_concatenate(gscene):
    parts = gscene.parts
    S = Sparse3D.from_groups(
        [p.data for p in parts],
        [p.row for p in parts],
        [p.col for p in parts],
        gscene.imshape,
        gscene.imcorner,
    )
    T = gscene.build()
    assert S.dtype == T.dtype and S.stamp_shapes == T.stamp_shapes
    assert S._structure.equals(T._structure)
    _same(S, gscene.dense())
    _same(S * 2 - 1, (T * 2 - 1).todense())


def test_from_groups_refusals():
    with pytest.raises(TypeError, match="sequences"):
        Sparse3D.from_groups(np.ones((2, 2, 1)), 0, 0, (4, 4))
    with pytest.raises(ValueError, match="one row and one col per data block"):
        Sparse3D.from_groups([np.ones((2, 2, 1))], [0, 1], [0], (4, 4))
