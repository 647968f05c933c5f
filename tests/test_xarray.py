"""Labeled xarray views against the dense reference, and stamp-view round trips."""

import numpy as np
import pytest
import xarray as xr

from sparse3d import Sparse3D
from sparse3d.testing import random_scene


def _views(sc, **kw):
    S = sc.build()
    H, W = sc.imshape
    r0, c0 = sc.imcorner
    coords = {"row": r0 + np.arange(H), "col": c0 + np.arange(W), "source": np.arange(sc.data.shape[2])}
    ref = xr.DataArray(sc.dense(), dims=("row", "col", "source"), coords=coords)
    return S.to_xarray(**kw), ref


def _values(da):
    data = da.data
    return data.todense() if hasattr(data, "todense") else np.asarray(data)


def test_image_view_is_lazy_and_labeled(scene):
    da, ref = _views(scene)
    assert isinstance(da.data, Sparse3D)  # no dense copy: Sparse3D.__array__ refuses anyway
    assert da.dims == ("row", "col", "source")
    np.testing.assert_array_equal(da.row, ref.row)
    np.testing.assert_array_equal(da.col, ref.col)
    assert tuple(da.attrs["imshape"]) == scene.imshape and tuple(da.attrs["imcorner"]) == scene.imcorner
    assert "Sparse3D" in repr(da)
    assert "<table>" in da._repr_html_()


@pytest.mark.parametrize(
    "op",
    [
        lambda d: d.sum("source"),
        lambda d: d.sum(("row", "col")),
        lambda d: d.sum(),
        lambda d: d.max("source"),
        lambda d: d.mean(("row", "col")),
        lambda d: d.isel(source=0),
        lambda d: d.isel(source=slice(1, None)),
        lambda d: d.isel(row=slice(2, 6), col=slice(1, 9)),
        lambda d: d.sel(row=slice(d.row.values[2], d.row.values[8])),
        lambda d: d.sel(row=slice(d.row.values[1], d.row.values[5]), col=slice(d.col.values[3], None)),
        lambda d: d.sel(source=[0, 2]),
        lambda d: d * xr.DataArray(np.arange(1.0, d.sizes["source"] + 1), dims="source"),
        lambda d: xr.dot(d, xr.DataArray(np.arange(1.0, d.sizes["source"] + 1), dims="source"), dim="source"),
        lambda d: xr.dot(d, xr.DataArray(np.ones((d.sizes["row"], d.sizes["col"])), dims=("row", "col"))),
    ],
)
def test_view_operations_match_dense(op):
    sc = random_scene(50, imcorner=(-4, 9))
    da, ref = _views(sc)
    got, expected = op(da), op(ref)
    assert got.dims == expected.dims
    for dim in got.dims:
        np.testing.assert_array_equal(got[dim].values, expected[dim].values)
    np.testing.assert_allclose(_values(got), expected.values, rtol=1e-12, atol=1e-14)


def test_concat_along_source_and_source_labels():
    sc = random_scene(51)
    S = sc.build()
    da = S.to_xarray(sources=[f"star{i}" for i in range(S.nsources)], name="psf")
    assert da.name == "psf" and da.source.values[2] == "star2"
    both = xr.concat([da.isel(source=slice(0, 2)), da.isel(source=slice(2, None))], dim="source")
    assert isinstance(both.data, Sparse3D)
    np.testing.assert_array_equal(both.data.todense(), sc.dense())
    with pytest.raises(ValueError, match="one label per source"):
        S.to_xarray(sources=[1, 2])
    with pytest.raises(ValueError, match="view"):
        S.to_xarray(view="pixels")


def test_single_source_selection_is_a_plottable_image():
    sc = random_scene(52)
    got = sc.build().to_xarray().sel(source=3)
    assert isinstance(got.data, np.ndarray)
    np.testing.assert_array_equal(got.values, sc.dense()[:, :, 3])


def test_stamp_view_and_exact_round_trip(scene):
    S = scene.build()
    da = S.to_xarray(view="stamps")
    assert da.dims == ("stamp_row", "stamp_col", "source")
    np.testing.assert_array_equal(da.values, scene.data)
    np.testing.assert_array_equal(da.row.values, S.row)
    np.testing.assert_array_equal(da.col.values, S.col)
    back = Sparse3D.from_xarray(da)
    _assert_identical(back, S)
    # any dim order works
    _assert_identical(Sparse3D.from_xarray(da.transpose("source", "stamp_col", "stamp_row")), S)
    assert Sparse3D.from_xarray(S.to_xarray()) is S


def _assert_identical(a, b):
    assert a.dtype == b.dtype and a.imshape == b.imshape and a.imcorner == b.imcorner
    np.testing.assert_array_equal(a.data, b.data)  # off-image values included
    np.testing.assert_array_equal(a.row, b.row)
    np.testing.assert_array_equal(a.col, b.col)


ENGINES = ["scipy", "h5netcdf", "netcdf4"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int32, np.int64, bool])
def test_netcdf_round_trip(tmp_path, engine, dtype):
    pytest.importorskip({"scipy": "scipy.io", "h5netcdf": "h5py", "netcdf4": "netCDF4"}[engine])
    sc = random_scene(53, dtype=dtype, imcorner=(-3, 7))
    S = sc.build()
    path = tmp_path / f"scene-{engine}.nc"
    da = S.to_xarray(view="stamps", name="psf")
    # netCDF3 (scipy engine) has no int64: xarray stores int32, and the dtype attribute restores it
    da.to_netcdf(path, engine=engine)
    with xr.open_dataarray(path, engine=engine) as loaded:
        back = Sparse3D.from_xarray(loaded.load())
    _assert_identical(back, S)


def test_from_xarray_errors_name_what_is_missing():
    S = random_scene(54).build()
    da = S.to_xarray(view="stamps")
    with pytest.raises(ValueError, match="stamp_row"):
        Sparse3D.from_xarray(da.rename(stamp_row="y"))
    with pytest.raises(ValueError, match="'col'"):
        Sparse3D.from_xarray(da.drop_vars("col"))
    no_attr = da.copy()
    del no_attr.attrs["imcorner"]
    with pytest.raises(ValueError, match="imcorner"):
        Sparse3D.from_xarray(no_attr)
    with pytest.raises(TypeError, match="DataArray"):
        Sparse3D.from_xarray(np.ones((2, 2, 2)))


def test_import_does_not_load_xarray():
    import subprocess
    import sys

    code = "import sys, sparse3d; print('xarray' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
