"""Analytic PSF models: circular and elliptical Gaussian, (elliptical) Moffat, pixel-integrated Gaussian.

Every model integrates to 1 over the plane. Values are the profile at each pixel centre,
except :class:`IntegratedGaussian`, whose values are the profile integrated over each pixel.
Derivatives are analytic: with respect to the source position (``"row"``, ``"col"``) and to
every shape parameter.

Elliptical profiles use the rotated offsets (``dr``, ``dc``: pixel centre minus source)::

    u =  dr cos θ + dc sin θ      (the first axis, width w)
    v = -dr sin θ + dc cos θ      (the second axis, width w · ratio)
    ρ² = (u / w)² + (v / (w · ratio))²

``θ`` (radians) turns the first axis from the +row axis towards the +column axis.
"""

from __future__ import annotations

import numpy as np

from .. import _kernels, _pool, _threads
from ._base import PSFModel, as_shape_param

__all__ = ["EllipticalGaussian", "Gaussian", "IntegratedGaussian", "Moffat"]


class Gaussian(PSFModel):
    """Circular Gaussian, ``exp(-(dr² + dc²) / 2σ²) / (2πσ²)``, sampled at pixel centres.

    Parameters
    ----------
    sigma : float or array_like, shape (nsources,)
        Standard deviation in pixels (> 0).

    Notes
    -----
    Sampling at pixel centres is accurate for σ ≳ 1 px; for undersampled PSFs (Kepler,
    TESS, σ ≲ 1 px) use :class:`IntegratedGaussian`. A stamp of side ``s`` truncates the
    model at about ``s/2`` pixels: the flux lost is ≈ ``1 - erf(s / (2√2 σ))²`` (exact for
    :class:`IntegratedGaussian` on an odd stamp around a centred source; the sampled profile
    loses less): 9e-4 for ``s = 7σ``, 1.4e-5 for ``s = 9σ``.

    Examples
    --------
    >>> import numpy as np
    >>> from sparse3d.psf import Gaussian
    >>> L, d = Gaussian(sigma=1.0).design([10.2, 30.7], [5.0, 40.4], (64, 64), (9, 9),
    ...                                   derivatives=("row", "col"))
    >>> L.shape, d["row"].shape
    ((64, 64, 2), (64, 64, 2))
    """

    params = ("sigma",)

    def __init__(self, sigma=1.0):
        self._set_params(sigma=as_shape_param(sigma, "sigma"))

    def _evaluate(self, p, params, wanted):
        dr, dc = p.dr, p.dc
        s = params["sigma"]
        inv = 1.0 / (s * s)
        # separable: one exp per stamp row and column, then one product over the stamp block
        gr = _scaled_exp(-0.5 * inv, dr, inv / (2 * np.pi))
        gc = _scaled_exp(-0.5 * inv, dc, None)
        # the stamp block written once, into a pooled buffer when one is free (no page faults),
        # in threads as the elementwise pipeline is (the same bits for any thread count)
        shape = np.broadcast_shapes(gr.shape, gc.shape)
        f = _outer_rows(gr, gc, _pool.empty(shape, np.result_type(gr, gc)))
        out = {}
        if "row" in wanted:
            out["row"] = f * (dr * inv)
        if "col" in wanted:
            out["col"] = f * (dc * inv)
        if "sigma" in wanted:
            out["sigma"] = f * ((dr * dr * inv - 1.0) / s + (dc * dc * inv - 1.0) / s)
        return f, out


def _scaled_exp(a, d: np.ndarray, scale) -> np.ndarray:
    """``np.exp(a * d * d) * scale`` (no ``scale``: ``np.exp(a * d * d)``), the same operations
    in the same order and dtypes, in one buffer lent by :func:`sparse3d._pool.lend` (the next
    design reuses its pages instead of faulting in fresh ones for every temporary)."""
    dtype = np.result_type(a, d)
    out = np.multiply(a, d, out=_pool.lend(np.broadcast_shapes(np.shape(a), d.shape), dtype))
    np.multiply(out, d, out=out)
    np.exp(out, out=out)
    if scale is None:
        return out
    if np.result_type(out, scale) != dtype:  # a wider scale: NumPy's result, upcast
        return out * scale
    return np.multiply(out, scale, out=out)


def _outer_rows(gr: np.ndarray, gc: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``np.multiply(gr, gc, out=out)`` for ``gr`` ``(nr, 1, n)`` and ``gc`` ``(1, nc, n)`` (or
    broadcastable), a stamp row at a time by whichever thread is free when the block is large
    (:func:`sparse3d._kernels.elementwise_threads`): every value is the same single product."""
    threads = _kernels.elementwise_threads(out.size)
    if threads <= 1 or out.ndim != 3 or out.shape[0] <= 1:
        return np.multiply(gr, gc, out=out)

    def row(i, _):
        a, b = (x[i : i + 1] if x.shape[0] > 1 else x for x in (gr, gc))
        np.multiply(a, b, out=out[i : i + 1])

    _threads.share(row, range(out.shape[0]), threads)
    return out


class IntegratedGaussian(PSFModel):
    """Circular Gaussian integrated over each pixel (the exact integral, via ``erf``).

    The value of pixel ``(r, c)`` is the flux of a unit Gaussian falling in
    ``[r - ½, r + ½] × [c - ½, c + ½]``, so a stamp's values sum to the enclosed flux at any σ.

    Parameters
    ----------
    sigma : float or array_like, shape (nsources,)
        Standard deviation in pixels (> 0).

    Notes
    -----
    Use it for undersampled detectors (Kepler, TESS; σ ≲ 1 px), where sampling the profile
    at pixel centres (:class:`Gaussian`) misplaces flux: at σ = 0.5 px a centred source's
    peak pixel holds 0.47 of the flux, not the 0.64 the sampled profile gives. For σ ≥ 3 px
    the two agree to < 1 % of the peak (2 % at σ = 2 px: the difference is ≈ 1/(12σ²)).
    """

    params = ("sigma",)

    def __init__(self, sigma=1.0):
        self._set_params(sigma=as_shape_param(sigma, "sigma"))

    def _evaluate(self, p, params, wanted):
        dr, dc = p.dr, p.dc
        from scipy.special import erf

        s = params["sigma"]
        k = 1.0 / (np.sqrt(2.0) * s)

        def axis(d):
            hi, lo = d + 0.5, d - 0.5
            e = 0.5 * (erf(hi * k) - erf(lo * k))
            phi_hi = np.exp(-((hi * k) ** 2)) / (np.sqrt(2 * np.pi) * s)
            phi_lo = np.exp(-((lo * k) ** 2)) / (np.sqrt(2 * np.pi) * s)
            de_dd = phi_hi - phi_lo  # d e / d(offset)
            de_ds = -(hi * phi_hi - lo * phi_lo) / s
            return e, de_dd, de_ds

        er, der, dsr = axis(dr)
        ec, dec, dsc = axis(dc)
        out = {}
        if "row" in wanted:
            out["row"] = -der * ec
        if "col" in wanted:
            out["col"] = -(er * dec)
        if "sigma" in wanted:
            out["sigma"] = dsr * ec + er * dsc
        return er * ec, out


def _rotated(dr, dc, theta):
    """``(u, v, cos θ, sin θ)``: offsets along the model's first and second axes."""
    ct, st = np.cos(theta), np.sin(theta)
    return dr * ct + dc * st, dc * ct - dr * st, ct, st


def _elliptical_derivatives(f, h, u, v, w1, w2, ratio, ct, st, wanted, width_name):
    """Derivatives of ``f = g(ρ²) / (π-ish · w1 · w2)`` shared by the elliptical profiles.

    ``h = d ln g / d ρ²``; ``w1 = width``, ``w2 = width · ratio``, so the normalisation goes
    as ``width⁻² ratio⁻¹`` and ``ρ²`` as ``width⁻²``.
    """
    out = {}
    a = u / w1
    b = v / w2
    fh2 = f * h * 2.0
    df_du = fh2 * (a / w1)
    df_dv = fh2 * (b / w2)
    if "row" in wanted:  # du/drow0 = -cos θ, dv/drow0 = sin θ
        out["row"] = st * df_dv - ct * df_du
    if "col" in wanted:  # du/dcol0 = -sin θ, dv/dcol0 = -cos θ
        out["col"] = -(st * df_du + ct * df_dv)
    if width_name in wanted:
        out[width_name] = -(2.0 * f + fh2 * (a * a + b * b)) / w1
    if "ratio" in wanted:
        out["ratio"] = -(f + fh2 * (b * b)) / ratio
    if "theta" in wanted:  # du/dθ = v, dv/dθ = -u
        out["theta"] = v * df_du - u * df_dv
    return out


class EllipticalGaussian(PSFModel):
    """Elliptical Gaussian, ``exp(-ρ²/2) / (2π w² ratio)`` (see :mod:`sparse3d.psf.analytic`).

    Parameters
    ----------
    sigma : float or array_like
        Standard deviation along the first axis, pixels (> 0).
    ratio : float or array_like, optional
        Width of the second axis over the first (> 0). Default 1 (circular).
    theta : float or array_like, optional
        Angle of the first axis from +row towards +column, radians. Default 0.

    Notes
    -----
    Derivatives with respect to every parameter are analytic. See :class:`Gaussian` for
    sampling and truncation.
    """

    params = ("sigma", "ratio", "theta")

    def __init__(self, sigma=1.0, ratio=1.0, theta=0.0):
        self._set_params(
            sigma=as_shape_param(sigma, "sigma"),
            ratio=as_shape_param(ratio, "ratio"),
            theta=as_shape_param(theta, "theta", low=None),
        )

    def _evaluate(self, p, params, wanted):
        dr, dc = p.dr, p.dc
        s, q, th = params["sigma"], params["ratio"], params["theta"]
        u, v, ct, st = _rotated(dr, dc, th)
        w2 = s * q
        rho2 = (u / s) ** 2 + (v / w2) ** 2
        f = np.exp(-0.5 * rho2) / (2 * np.pi * s * w2)
        if not wanted:
            return f, {}
        return f, _elliptical_derivatives(f, -0.5, u, v, s, w2, q, ct, st, wanted, "sigma")


class Moffat(PSFModel):
    """(Elliptical) Moffat profile, ``(β - 1) / (π α² ratio) · (1 + ρ²)^-β`` with width ``α``.

    Parameters
    ----------
    alpha : float or array_like
        Core width along the first axis, pixels (> 0). FWHM = ``2 α sqrt(2^(1/β) - 1)``.
    beta : float or array_like
        Power-law index (> 1, so that the profile integrates to 1). Typical seeing: 2.5–4.7.
    ratio : float or array_like, optional
        Width of the second axis over the first (> 0). Default 1 (circular).
    theta : float or array_like, optional
        Angle of the first axis from +row towards +column, radians. Default 0.

    Notes
    -----
    The wings fall as ``r^-2β``: a stamp of radius ``R`` loses ``(1 + R²/α²)^(1-β)`` of the
    flux (circular case), e.g. 0.03 % for α = 2 px, β = 3, R = 15 px, but 0.75 % for
    α = 3 px, β = 2.5 and 6.6 % for α = 4 px, β = 2 — much more than a Gaussian of the same
    FWHM. Size stamps accordingly.

    The profile is sampled at pixel centres (as :class:`Gaussian`), not integrated over the
    pixels: with an undersampled core the stamp sums to *more* than the flux. On an
    untruncated stamp (circular, source on a pixel centre) the sum is 1.0009 at α = 2 px,
    β = 3.5; 1.013 at α = 1.5 px; 1.17 at α = 1 px (FWHM 0.8 px). For such PSFs pass the
    pixel-integrated profile as an oversampled :class:`~sparse3d.psf.ImagePSF`.
    """

    params = ("alpha", "beta", "ratio", "theta")

    def __init__(self, alpha=2.0, beta=3.0, ratio=1.0, theta=0.0):
        self._set_params(
            alpha=as_shape_param(alpha, "alpha"),
            beta=as_shape_param(beta, "beta", low=1.0),
            ratio=as_shape_param(ratio, "ratio"),
            theta=as_shape_param(theta, "theta", low=None),
        )

    def _evaluate(self, p, params, wanted):
        dr, dc = p.dr, p.dc
        a, beta, q, th = params["alpha"], params["beta"], params["ratio"], params["theta"]
        u, v, ct, st = _rotated(dr, dc, th)
        w2 = a * q
        one_rho2 = 1.0 + (u / a) ** 2 + (v / w2) ** 2
        f = (beta - 1.0) / (np.pi * a * w2) * one_rho2**-beta
        if not wanted:
            return f, {}
        out = _elliptical_derivatives(f, -beta / one_rho2, u, v, a, w2, q, ct, st, wanted, "alpha")
        if "beta" in wanted:
            out["beta"] = f * (1.0 / (beta - 1.0) - np.log(one_rho2))
        return f, out
