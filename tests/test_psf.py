"""PSF models against independent references: formulas evaluated densely, numerical integrals,
central differences; fractional shifts against the re-evaluated formula; np.gradient per stamp."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sparse3d import Sparse3D
from sparse3d.psf import EllipticalGaussian, Gaussian, GriddedPSF, ImagePSF, IntegratedGaussian, Moffat


# -------------------------------------------------------------------------------------------
# Independent references
# -------------------------------------------------------------------------------------------
def _gauss(dr, dc, s):
    return np.exp(-(dr**2 + dc**2) / (2 * s * s)) / (2 * math.pi * s * s)


def _egauss(dr, dc, s, q, th):
    # covariance matrix of the rotated ellipse, inverted numerically
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    cov = rot @ np.diag([s**2, (s * q) ** 2]) @ rot.T
    icov = np.linalg.inv(cov)
    x = np.stack([dr, dc])
    m = np.einsum("i...,ij,j...->...", x, icov, x)
    return np.exp(-0.5 * m) / (2 * math.pi * math.sqrt(np.linalg.det(cov)))


def _moffat(dr, dc, a, b, q=1.0, th=0.0):
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    cov = rot @ np.diag([a**2, (a * q) ** 2]) @ rot.T
    icov = np.linalg.inv(cov)
    x = np.stack([dr, dc])
    m = np.einsum("i...,ij,j...->...", x, icov, x)
    return (b - 1) / (math.pi * math.sqrt(np.linalg.det(cov))) * (1 + m) ** -b


def _integrated(dr, dc, s):
    erf = np.vectorize(math.erf)
    k = 1 / (math.sqrt(2) * s)
    er = 0.5 * (erf((dr + 0.5) * k) - erf((dr - 0.5) * k))
    ec = 0.5 * (erf((dc + 0.5) * k) - erf((dc - 0.5) * k))
    return er * ec


def dense_reference(fn, rows, cols, imshape, stamp, imcorner=(0, 0), params=None):
    """Dense (H, W, n): ``fn(dr, dc, **params_k)`` on each source's stamp, placed independently."""
    H, W = imshape
    out = np.zeros((H, W, len(rows)))
    nr, nc = stamp
    for k, (r, c) in enumerate(zip(rows, cols)):
        r_int, c_int = math.floor(r + 0.5), math.floor(c + 0.5)
        kw = (
            {}
            if params is None
            else {name: np.broadcast_to(v, (len(rows),))[k] for name, v in params.items()}
        )
        for pr in range(r_int - nr // 2, r_int - nr // 2 + nr):
            for pc in range(c_int - nc // 2, c_int - nc // 2 + nc):
                i, j = pr - imcorner[0], pc - imcorner[1]
                if 0 <= i < H and 0 <= j < W:
                    out[i, j, k] += fn(np.float64(pr - r), np.float64(pc - c), **kw)
    return out


RNG = np.random.default_rng(11)
ROWS = np.array([0.2, 7.5, 12.49, 19.7, 3.0, 10.5001])  # hangs over edges, ties, integers
COLS = np.array([4.1, -1.3, 9.5, 8.8, 21.2, 10.0])
IMSHAPE = (20, 18)

MODELS = [
    (Gaussian(1.3), _gauss, {"s": 1.3}),
    (Gaussian(sigma=np.linspace(0.8, 2.0, 6)), _gauss, {"s": np.linspace(0.8, 2.0, 6)}),
    (EllipticalGaussian(1.4, 0.6, 0.7), _egauss, {"s": 1.4, "q": 0.6, "th": 0.7}),
    (
        EllipticalGaussian(np.linspace(1, 2, 6), 0.5, np.linspace(0, 3, 6)),
        _egauss,
        {"s": np.linspace(1, 2, 6), "q": 0.5, "th": np.linspace(0, 3, 6)},
    ),
    (Moffat(2.0, 3.0), _moffat, {"a": 2.0, "b": 3.0}),
    (Moffat(1.5, 2.5, 0.7, -0.4), _moffat, {"a": 1.5, "b": 2.5, "q": 0.7, "th": -0.4}),
    (IntegratedGaussian(0.7), _integrated, {"s": 0.7}),
    (IntegratedGaussian(np.linspace(0.4, 2, 6)), _integrated, {"s": np.linspace(0.4, 2, 6)}),
]


@pytest.mark.parametrize("stamp", [(5, 5), (6, 4), (1, 3)])
@pytest.mark.parametrize("imcorner", [(0, 0), (-3, 5)])
@pytest.mark.parametrize("model,fn,params", MODELS, ids=lambda x: repr(x) if hasattr(x, "design") else "")
def test_model_matches_dense_formula(model, fn, params, stamp, imcorner):
    L = model.design(ROWS, COLS, IMSHAPE, stamp, imcorner=imcorner)
    ref = dense_reference(fn, ROWS, COLS, IMSHAPE, stamp, imcorner, params)
    assert L.shape == (*IMSHAPE, len(ROWS)) and L.imcorner == imcorner
    np.testing.assert_allclose(L.todense(), ref, rtol=1e-12, atol=1e-15)


def test_placement_nearest_pixel_ties_up_and_even_stamps():
    L = Gaussian(1.0).design([10.5, 10.49, -0.5, 3.0], [2.0, 2.0, 2.0, 2.5], (30, 30), (10, 3))
    centre = L.row[5, 1, :]  # offsets -5 … 4: index 5 is the centre pixel
    assert centre.tolist() == [11, 10, 0, 3]
    assert L.col[5, 1, :].tolist() == [2, 2, 2, 3]
    assert (L.row[:, 0, 0] - 11).tolist() == list(range(-5, 5))


@pytest.mark.parametrize("n", [0, 1])
def test_zero_and_one_source(n):
    rows, cols = ROWS[:n], COLS[:n]
    for model, fn, params in MODELS[:1] + MODELS[4:5]:
        L, d = model.design(rows, cols, IMSHAPE, (5, 5), derivatives=("row", "col"))
        assert L.shape == (*IMSHAPE, n) and d["row"].shape == L.shape
        np.testing.assert_allclose(
            L.todense(), dense_reference(fn, rows, cols, IMSHAPE, (5, 5), params=params)
        )


def test_params_attribute_and_float32_free_positions():
    assert Gaussian().params == ("sigma",)
    assert EllipticalGaussian().params == ("sigma", "ratio", "theta")
    assert Moffat().params == ("alpha", "beta", "ratio", "theta")
    assert IntegratedGaussian().params == ("sigma",)
    assert ImagePSF(np.ones((5, 5))).params == ()
    L = Gaussian(1.0).design(np.float32([5.25]), [5], (12, 12), 5)
    np.testing.assert_allclose(
        L.todense(), dense_reference(_gauss, [5.25], [5.0], (12, 12), (5, 5), params={"s": 1.0})
    )


# -------------------------------------------------------------------------------------------
# Derivatives: analytic vs central differences (<= 1e-6 relative)
# -------------------------------------------------------------------------------------------
def _rebuilt(model, **changes):
    kw = {name: getattr(model, name) for name in model.params}
    kw.update(changes)
    return type(model)(**kw)


@pytest.mark.parametrize("model", [m for m, _, _ in MODELS], ids=repr)
def test_derivatives_match_central_differences(model):
    rows = np.array([8.1, 9.7, 10.3, 11.9, 8.45, 12.2])  # away from placement ties (x.5)
    cols = np.array([9.1, 10.8, 7.3, 11.6, 10.0, 8.4])
    kw = {"imshape": (20, 20), "stamp_shape": (9, 9)}
    L, d = model.design(rows, cols, derivatives=model.derivative_names, **kw)
    h = 1e-5
    for name in model.derivative_names:
        if name == "row":
            plus, minus = model.design(rows + h, cols, **kw), model.design(rows - h, cols, **kw)
        elif name == "col":
            plus, minus = model.design(rows, cols + h, **kw), model.design(rows, cols - h, **kw)
        else:
            value = getattr(model, name)
            plus = _rebuilt(model, **{name: value + h}).design(rows, cols, **kw)
            minus = _rebuilt(model, **{name: value - h}).design(rows, cols, **kw)
        numeric = (plus.data - minus.data) / (2 * h)
        analytic = d[name]
        assert analytic._structure is L._structure or analytic._structure.equals(L._structure)
        # relative to the derivative's size (or the model's, where it vanishes: θ of a circle)
        scale = max(np.abs(analytic.data).max(), 1e-4 * L.data.max())
        assert np.abs(numeric - analytic.data).max() <= 1e-6 * scale, name


def test_derivatives_share_the_structure_and_concatenate():
    L, d = Gaussian(1.0).design(ROWS, COLS, IMSHAPE, (5, 5), derivatives=("row", "col", "sigma"))
    A = np.concatenate([L, d["row"], d["col"]], axis=2)
    assert A.shape == (*IMSHAPE, 3 * len(ROWS))
    for v in d.values():
        assert v._structure is L._structure
    assert Gaussian(1.0).design(ROWS, COLS, IMSHAPE, 5, derivatives=())[1] == {}


# -------------------------------------------------------------------------------------------
# Normalisation and the pixel-integrated Gaussian
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model",
    [
        Gaussian(1.0),
        Gaussian(2.5),
        EllipticalGaussian(1.5, 0.5, 0.3),
        Moffat(2.0, 4.0, 0.8, 1.0),
        IntegratedGaussian(0.5),
        IntegratedGaussian(1.7),
    ],
    ids=repr,
)
def test_models_integrate_to_one_on_a_large_stamp(model):
    L = model.design([50.3, 49.8], [50.1, 50.45], (101, 101), (81, 81))
    np.testing.assert_allclose(L.sum(axis=(0, 1)), 1.0, atol=1e-3)


@pytest.mark.parametrize("sigma, lo, hi", [(2.0, 0.015, 0.025), (3.0, 0.0, 0.01)])
def test_integrated_and_sampled_gaussian_differ_as_documented(sigma, lo, hi):
    """IntegratedGaussian's docstring: the sampled and pixel-integrated profiles agree to < 1 %
    of the peak from sigma = 3 px; at 2 px they differ by 2 % (it said < 1 % from 2 px)."""
    a, b = (
        np.asarray(m(sigma).design([50.0, 60.3], [50.0, 40.2], (101, 101), (41, 41)).todense())
        for m in (Gaussian, IntegratedGaussian)
    )
    diff = np.abs(a - b).max(axis=(0, 1)) / a.max(axis=(0, 1))
    assert np.all((lo < diff) & (diff < hi))
    np.testing.assert_allclose(diff, 1 / (12 * sigma**2), rtol=0.06)


@pytest.mark.parametrize("sigma, side, loss", [(1.0, 7, 9.3e-4), (1.0, 9, 1.36e-5), (2.0, 13, 2.31e-3)])
def test_gaussian_truncation_is_the_documented_fraction(sigma, side, loss):
    """Gaussian's docstring: a stamp of side s loses about 1 - erf(s / (2 sqrt(2) sigma))^2 (it
    said 2 exp(-(s/2)^2 / 2 sigma^2), 4-6x too much, and 1e-3 for s = 8 sigma: 6e-6 to 5e-4).
    Exact for the pixel-integrated model (an odd stamp around a centred source); the sampled
    one loses less, within a factor 2.3."""
    formula = 1 - math.erf(side / (2 * math.sqrt(2) * sigma)) ** 2
    np.testing.assert_allclose(formula, loss, rtol=0.01)
    exact = 1 - IntegratedGaussian(sigma).design([50.0], [50.0], (101, 101), (side, side)).sum()
    np.testing.assert_allclose(exact, formula, rtol=1e-8)
    sampled = 1 - Gaussian(sigma).design([50.0], [50.0], (101, 101), (side, side)).sum()
    assert formula / 2.3 < sampled < formula


@pytest.mark.parametrize("alpha, beta, loss", [(2.0, 3.0, 3.0e-4), (3.0, 2.5, 7.5e-3), (4.0, 2.0, 6.6e-2)])
def test_moffat_flux_outside_a_radius_is_the_documented_fraction(alpha, beta, loss):
    """Moffat's docstring: a radius R loses (1 + R^2/alpha^2)^(1 - beta) of the flux; its worked
    examples (it said 1.6 % for alpha = 2, beta = 3, R = 15, which is 0.03 %) against the
    pixel-centre samples of a 201^2 stamp (well sampled: alpha >= 2 px) outside R = 15."""
    L = Moffat(alpha, beta).design([100.0], [100.0], (201, 201), stamp_shape=(201, 201))
    v = np.asarray(L.todense(force=True))[:, :, 0]
    rr, cc = np.mgrid[:201, :201] - 100
    outside = v[np.hypot(rr, cc) > 15].sum() / v.sum()
    np.testing.assert_allclose(outside, (1 + 15**2 / alpha**2) ** (1 - beta), rtol=0.03)
    np.testing.assert_allclose(outside, loss, rtol=0.03)


@pytest.mark.parametrize("sigma", [0.4, 1.0])
def test_integrated_gaussian_is_the_pixel_integral(sigma):
    from scipy import integrate

    L = IntegratedGaussian(sigma).design([3.3], [4.45], (8, 9), (5, 5))
    D = L.todense()[:, :, 0]
    for r, c in [(3, 4), (2, 5), (4, 3), (1, 6)]:
        val, _ = integrate.dblquad(
            lambda y, x: _gauss(x - 3.3, y - 4.45, sigma), r - 0.5, r + 0.5, c - 0.5, c + 0.5, epsabs=1e-13
        )
        assert abs(D[r, c] - val) <= 1e-10


# -------------------------------------------------------------------------------------------
# Image PSFs
# -------------------------------------------------------------------------------------------
def _gauss_image(sigma, os_, half, shape=None):
    """A Gaussian sampled ``os_`` times per pixel, centred on the array centre (photutils' rule)."""
    n = 2 * half + 1 if shape is None else shape
    y = (np.arange(n) - (n - 1) / 2) / os_
    return np.exp(-(y[:, None] ** 2 + y[None, :] ** 2) / (2 * sigma**2)) / (2 * math.pi * sigma**2)


@pytest.mark.parametrize("size", [81, 80])  # odd, and even (centre between samples)
def test_image_psf_matches_analytic_gaussian(size):
    rows, cols = RNG.uniform(3, 17, 12), RNG.uniform(3, 17, 12)
    model = ImagePSF(_gauss_image(1.0, 4, 0, shape=size), oversampling=4)
    L, d = model.design(rows, cols, (20, 20), (11, 11), derivatives=("row", "col"))
    G, dg = Gaussian(1.0).design(rows, cols, (20, 20), (11, 11), derivatives=("row", "col"))
    peak = 1 / (2 * math.pi)
    assert np.abs(L.data - G.data).max() <= 1e-3 * peak
    for k in ("row", "col"):
        assert np.abs(d[k].data - dg[k].data).max() <= 1e-2 * np.abs(dg[k].data).max()


def test_image_psf_oversampling_pair_origin_and_normalisation():
    # 3x along rows, 2x along columns, source placed off the array centre via origin
    yr = (np.arange(91) - 40) / 3
    yc = (np.arange(61) - 31) / 2
    data = np.exp(-(yr[:, None] ** 2 + yc[None, :] ** 2) / (2 * 1.5**2)) / (2 * math.pi * 1.5**2)
    model = ImagePSF(data, oversampling=(3, 2), origin=(40, 31))
    L = model.design([20.2], [19.7], (41, 41), (25, 25))
    G = Gaussian(1.5).design([20.2], [19.7], (41, 41), (25, 25))
    assert np.abs(L.data - G.data).max() <= 1e-3 * G.data.max()
    assert abs(L.sum() - 1.0) <= 1e-3


def test_image_psf_derivatives_match_central_differences():
    model = ImagePSF(_gauss_image(1.2, 3, 30), oversampling=3)
    rows, cols = np.array([5.2, 8.9]), np.array([6.1, 4.3])
    kw = {"imshape": (14, 14), "stamp_shape": (9, 9)}
    _, d = model.design(rows, cols, derivatives=("row", "col"), **kw)
    h = 1e-5
    for name, dr, dc in (("row", h, 0), ("col", 0, h)):
        num = (
            model.design(rows + dr, cols + dc, **kw).data - model.design(rows - dr, cols - dc, **kw).data
        ) / (2 * h)
        assert np.abs(num - d[name].data).max() <= 1e-6 * np.abs(d[name].data).max()


def test_image_psf_is_zero_far_outside_its_image():
    model = ImagePSF(_gauss_image(1.0, 2, 6), oversampling=2)  # covers ±3 px
    L = model.design([10.0], [10.0], (21, 21), (21, 21))
    D = L.todense()[:, :, 0]
    # the spline decays within the zero padding (12 samples) and is exactly 0 beyond it
    assert D[10, 10] > 0 and abs(D[10, 18]) < 1e-20 and D[10, 20] == 0 and D[0, 0] == 0


def _grid_model():
    widths = {(0.0, 0.0): 1.0, (0.0, 40.0): 1.4, (40.0, 0.0): 1.8, (40.0, 40.0): 2.2}
    pos = list(widths)[::-1]  # any order
    data = np.stack([_gauss_image(widths[p], 4, 48) for p in pos])
    return GriddedPSF(data, pos, oversampling=4), widths


def test_gridded_psf_blends_bilinearly_and_clamps():
    model, widths = _grid_model()
    stamp = (15, 15)
    # at a node: that node's PSF; at (10, 30): the bilinear blend of the four; outside: the edge
    for r, c, weights in [
        (0.0, 40.0, {(0.0, 40.0): 1.0}),
        (
            10.0,
            30.0,
            {
                (0.0, 0.0): 0.75 * 0.25,
                (0.0, 40.0): 0.75 * 0.75,
                (40.0, 0.0): 0.25 * 0.25,
                (40.0, 40.0): 0.25 * 0.75,
            },
        ),
        (-5.0, 20.0, {(0.0, 0.0): 0.5, (0.0, 40.0): 0.5}),
    ]:
        L = model.design([r], [c], (60, 60), stamp, imcorner=(-10, -10))
        ref = sum(
            w
            * ImagePSF(_gauss_image(widths[p], 4, 48), oversampling=4)
            .design([r], [c], (60, 60), stamp, imcorner=(-10, -10))
            .data
            for p, w in weights.items()
        )
        np.testing.assert_allclose(L.data, ref, atol=1e-12)


def test_gridded_psf_derivatives_include_the_blend():
    model, _ = _grid_model()
    rows, cols = np.array([12.2, 30.7]), np.array([5.4, 22.1])
    kw = {"imshape": (45, 45), "stamp_shape": (11, 11)}
    _, d = model.design(rows, cols, derivatives=("row", "col"), **kw)
    h = 1e-5
    for name, dr, dc in (("row", h, 0), ("col", 0, h)):
        num = (
            model.design(rows + dr, cols + dc, **kw).data - model.design(rows - dr, cols - dc, **kw).data
        ) / (2 * h)
        assert np.abs(num - d[name].data).max() <= 1e-6 * np.abs(d[name].data).max()


# -------------------------------------------------------------------------------------------
# Fractional shifts
# -------------------------------------------------------------------------------------------
def _scene(sigma, stamp, n=40, seed=3):
    rng = np.random.default_rng(seed)
    rows, cols = rng.uniform(-3, 35, n), rng.uniform(-3, 35, n)
    return rows, cols, Gaussian(sigma).design(rows, cols, (32, 32), stamp, imcorner=(1, -2))


@pytest.mark.parametrize("sigma,stamp", [(1.0, (10, 10)), (1.0, (11, 13)), (1.5, (15, 15)), (2.0, (17, 17))])
def test_shift_matches_the_re_evaluated_formula(sigma, stamp):
    rows, cols, L = _scene(sigma, stamp)
    peak = 1 / (2 * math.pi * sigma**2)
    for d in [(0.5, 0.0), (-0.5, -0.5), (0.3, -0.45), (0.12, 0.37)]:
        S = L.shift(d)
        # the same stamps, re-evaluated at the moved positions (whole part moves the stamps)
        ref = _gauss(S.row - (rows + d[0]), S.col - (cols + d[1]), sigma)
        assert np.abs(S.data - ref).max() <= 1e-2 * peak
        if sigma >= 1.5:
            assert np.abs(S.data - ref).max() <= 1e-3 * peak


def test_shift_per_source_and_whole_pixels():
    rows, cols, L = _scene(1.2, (11, 11), n=6)
    dr = np.array([0.3, -1.7, 2.5, 0.0, -0.5, 4.0])
    dc = np.array([-0.2, 0.4, 1.49, -3.0, 0.5, 0.0])
    S = L.shift((dr, dc))
    ref = _gauss(S.row - (rows + dr), S.col - (cols + dc), 1.2)
    assert np.abs(S.data - ref).max() <= 1e-2 / (2 * math.pi * 1.44)
    # stamps moved by the nearest integer (ties up)
    assert (S.row - L.row)[0, 0].tolist() == [0, -2, 3, 0, 0, 4]
    assert (S.col - L.col)[0, 0].tolist() == [0, 0, 1, -3, 1, 0]
    # a whole-pixel shift is exactly translate
    T = L.shift((2, -3))
    assert np.array_equal(T.data, L.data) and np.array_equal(T.row, L.translate((2, -3)).row)
    assert np.array_equal(L.shift((0.0, 0.0)).data, L.data)


def test_shift_is_the_sinc_series_over_the_stamp():
    """Reference: the band-limited interpolant written as an explicit double sum."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(4, 5, 3))
    R, C = np.mgrid[:4, :5]
    S = Sparse3D(v, R[:, :, None] + np.array([1, 2, 3]), C[:, :, None] + 7, (12, 15))
    fr, fc = 0.3, -0.2
    out = S.shift((fr, fc))
    ref = np.zeros_like(v)
    for i in range(4):
        for j in range(5):
            for a in range(4):
                for b in range(5):
                    ref[i, j] += np.sinc(i - a - fr) * np.sinc(j - b - fc) * v[a, b]
    np.testing.assert_allclose(out.data, ref, atol=1e-13)
    assert np.array_equal(out.row, S.row) and out.imshape == S.imshape


def test_shift_agrees_with_scipy_ndimage_on_a_smooth_stamp():
    ndimage = pytest.importorskip("scipy.ndimage")
    rows, cols, L = _scene(2.0, (21, 21), n=3)
    S = L.shift((0.4, -0.3))
    for k in range(3):
        ref = ndimage.shift(L.data[:, :, k], (0.4, -0.3), order=5, mode="grid-constant")
        assert np.abs(S.data[:, :, k] - ref).max() <= 2e-3 * L.data.max()


def test_shift_is_immutable_and_keeps_dtype():
    rows, cols, L = _scene(1.0, (7, 7), n=5)
    before = L.data.copy()
    L32 = L.astype(np.float32)
    S = L32.shift((0.25, 0.1))
    assert S.dtype == np.float32 and np.array_equal(L.data, before)
    Si = Sparse3D(
        np.ones((3, 3, 1), dtype=int),
        np.arange(3)[:, None, None] + 4,
        np.arange(3)[None, :, None] + 4,
        (10, 10),
    ).shift((0.5, 0))
    assert Si.dtype == np.float64


def test_shift_refuses_stamps_that_are_not_upright():
    R, C = np.mgrid[:3, :3]
    S = Sparse3D(np.ones((3, 3, 1)), C[:, :, None] + 2, R[:, :, None] + 2, (10, 10))  # transposed layout
    with pytest.raises(ValueError, match="upright"):
        S.shift((0.2, 0.0))
    assert S.shift((1, 0)).row.min() == 3  # whole pixels are fine


# -------------------------------------------------------------------------------------------
# np.gradient
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"edge_order": 2}])
def test_gradient_is_per_stamp(kw):
    rows, cols, L = _scene(1.3, (6, 5), n=7)
    L = L.astype(np.float32)
    for axis in (0, 1, -3, -2):
        g = np.gradient(L, axis=axis, **kw)
        assert g._structure is L._structure
        np.testing.assert_allclose(g.data, np.gradient(L.data, axis=axis % 3, **kw))
    g0, g1 = np.gradient(L, 0.5, 2.0, axis=(0, 1), **kw)
    np.testing.assert_allclose(g0.data, np.gradient(L.data, 0.5, axis=0, **kw))
    np.testing.assert_allclose(g1.data, np.gradient(L.data, 2.0, axis=1, **kw))


def test_gradient_approximates_the_position_derivative():
    # d/d(pixel row) of the model = -d/d(source row): np.gradient on a well-sampled PSF
    rows, cols = np.array([10.2]), np.array([9.7])
    L, d = Gaussian(3.0).design(rows, cols, (20, 20), (19, 19), derivatives=("row",))
    g = np.gradient(L, axis=0, edge_order=2)
    assert np.abs(g.data + d["row"].data).max() <= 0.05 * np.abs(d["row"].data).max()


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda S: np.gradient(S), ValueError, "axis=0, 1 or"),
        (lambda S: np.gradient(S, axis=2), ValueError, "axis must be 0, 1"),
        (lambda S: np.gradient(S, np.arange(6.0), axis=0), TypeError, "scalar spacings"),
        (lambda S: np.gradient(S, 1.0, 2.0, 3.0, axis=(0, 1)), TypeError, "spacings"),
    ],
)
def test_gradient_refusals(call, error, match):
    _, _, L = _scene(1.0, (6, 6), n=2)
    with pytest.raises(error, match=match):
        call(L)


def test_layering_core_does_not_import_psf():
    import subprocess
    import sys

    code = (
        "import sys, sparse3d; bad = [m for m in sys.modules if m.startswith(('sparse3d.psf', "
        "'sparse3d._interpolate', 'scipy'))]; assert not bad, bad; import sparse3d.psf; "
        "assert not [m for m in sys.modules if m.startswith('scipy')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class _KeepsItsValues(Gaussian):
    """A model that keeps a writeable handle on what it returns (a cache, say)."""

    def _evaluate(self, p, params, wanted):
        f, out = super()._evaluate(p, params, wanted)
        self.kept = (f, out)
        return f, out


def test_designs_never_share_values_anyone_can_write_or_a_later_design_reuses():
    """A design takes over the model's freshly computed buffers (no copy); that must never
    let a model's own handle, or the buffer pool feeding the next design, change it."""
    from sparse3d import _pool

    rng = np.random.default_rng(4)
    r, c = rng.uniform(-2, 30, 40), rng.uniform(-2, 30, 40)
    with_pool = _pool.MIN_BYTES
    _pool.MIN_BYTES = 0  # pool even these small buffers
    try:
        m = _KeepsItsValues(1.3)
        L, d = m.design(r, c, (28, 28), (7, 7), derivatives=("row", "sigma"))
        ref = (L.data.copy(), d["row"].data.copy(), d["sigma"].data.copy())
        f, out = m.kept
        f[...] = -1.0  # the model's handle is its own (the design copied)
        out["row"][...] = -1.0
        np.testing.assert_array_equal(L.data, ref[0])
        np.testing.assert_array_equal(d["row"].data, ref[1])
        g = Gaussian(1.3)
        L1 = g.design(r, c, (28, 28), (7, 7))
        keep = L1.data.copy()
        for k in range(3):  # designs dying and being made: pooled buffers go round
            g.design(r + k, c - k, (28, 28), (7, 7)).dot(np.ones(40))
        np.testing.assert_array_equal(L1.data, keep)
        assert not L1.data.flags.writeable and not L1._values.flags.writeable
        dense = Gaussian(1.3).design(r, c, (28, 28), (7, 7)).todense()
        np.testing.assert_array_equal(dense, L1.todense())
    finally:
        _pool.MIN_BYTES = with_pool
