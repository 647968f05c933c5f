"""Background (sky) models fitted jointly with the fluxes: their design columns over the image.

A background model turns an image shape ``(H, W)`` into design columns ``B`` of shape
``(H * W, nb)`` (a sparse matrix; narrow and dense-valued for the polynomials, 4 entries per
row for the bilinear grid). :func:`~sparse3d.fit.fit_design` appends them to the design
matrix of the sources and solves both in the same sparse normal equations::

    [[A^T C^-1 A + P,  A^T C^-1 B    ],   [w]   [A^T C^-1 d + P mu  ]
     [B^T C^-1 A,      B^T C^-1 B + Q]] @ [b] = [B^T C^-1 d + Q mu_b]

(``Q``: the background prior, none unless the model is given ``prior_sigma``). A frame stack
gets one background per frame (the same normal matrix, one right-hand side per frame).

``fit(..., background=spec)`` accepts, besides an instance of a model below:

======================  ===========================================================
``None``                no background (default)
``"constant"``          ``Polynomial(0)``: one sky level
``"plane"``             ``Polynomial(1)``: ``b0 + b1 u + b2 v``
``("poly", n)``         ``Polynomial(n)``: every ``u**i v**j`` with ``i + j <= n``
``("grid", (th, tw))``  ``BilinearGrid(tile=(th, tw))``
======================  ===========================================================

The polynomials are in the normalised coordinates ``u`` (rows) and ``v`` (columns), which
run from -1 to 1 across the image (well conditioned for any image size); the coefficients
refer to these coordinates, while :attr:`FitResult.background_image` is the sky itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse


class BackgroundModel:
    """Base class of the background models: design columns over an image.

    Subclasses implement :meth:`columns` and :meth:`labels`.

    Parameters
    ----------
    prior_sigma, prior_mu : float or array_like, optional
        Gaussian prior on the coefficients (scalar or one value per coefficient), in the
        data's unit (or ``Quantity`` values, converted to it); by default the background has
        no prior.
    """

    def __init__(self, prior_sigma: Any = None, prior_mu: Any = None) -> None:
        if prior_mu is not None and prior_sigma is None:
            raise ValueError("background prior_mu requires prior_sigma")
        self.prior_sigma = prior_sigma
        self.prior_mu = prior_mu

    def columns(self, imshape: tuple[int, int]) -> scipy.sparse.csr_matrix:
        """Design columns ``B``, shape ``(H * W, nb)`` (float64 CSR), over an image of ``imshape``."""
        raise NotImplementedError

    def labels(self, imshape: tuple[int, int]) -> list[str]:
        """One name per coefficient (column of :meth:`columns`), e.g. ``"u^1 v^0"``."""
        raise NotImplementedError

    def n_coefficients(self, imshape: tuple[int, int]) -> int:
        """Number of coefficients ``nb`` on an image of ``imshape``."""
        return len(self.labels(imshape))

    def prior(self, nb: int, unit: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Prior precisions and means of the ``nb`` coefficients (0 where there is no prior).

        ``unit``: the data's unit, if any; a ``Quantity`` prior is converted to it (the
        coefficients are in the data's unit).
        """
        from ._checks import _check_prior

        return _check_prior(self.prior_mu, self.prior_sigma, nb, "background prior", unit)


class Polynomial(BackgroundModel):
    """Polynomial sky of total degree ``order`` in the normalised row/column coordinates.

    The terms are ``u**i * v**j`` for ``i + j <= order`` (``u``: rows, ``v``: columns, both
    from -1 at the first pixel to 1 at the last), ordered by degree then by ``i``
    descending: ``order=1`` (a plane) gives ``1, u, v``.

    Parameters
    ----------
    order : int
        Total degree, >= 0 (0: a constant, 1: a plane).
    prior_sigma, prior_mu : optional
        As in :class:`BackgroundModel`.
    """

    def __init__(self, order: int = 0, *, prior_sigma: Any = None, prior_mu: Any = None) -> None:
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 0:
            raise ValueError(f"background polynomial order must be an int >= 0, got {order!r}")
        super().__init__(prior_sigma, prior_mu)
        self.order = int(order)

    def _powers(self) -> list[tuple[int, int]]:
        return [(d - j, j) for d in range(self.order + 1) for j in range(d + 1)]

    def labels(self, imshape: tuple[int, int]) -> list[str]:
        return [f"u^{i} v^{j}" for i, j in self._powers()]

    def columns(self, imshape: tuple[int, int]) -> scipy.sparse.csr_matrix:
        H, W = imshape
        u = _normalised(H)
        v = _normalised(W)
        powers = self._powers()
        nb = len(powers)
        B = np.empty((H, W, nb))
        for t, (i, j) in enumerate(powers):
            B[:, :, t] = np.outer(u**i, v**j)
        # every pixel has every term: the CSR arrays directly (zeros at u = 0 or v = 0 stay stored)
        indptr = np.arange(0, H * W * nb + 1, nb, dtype=np.int64)
        indices = np.tile(np.arange(nb, dtype=np.int64), H * W)
        return scipy.sparse.csr_matrix((B.ravel(), indices, indptr), shape=(H * W, nb))

    def __repr__(self) -> str:
        return f"Polynomial(order={self.order})"


class BilinearGrid(BackgroundModel):
    """Smooth sky: bilinear interpolation between nodes spaced ``tile`` pixels apart.

    Nodes sit at rows ``0, th, 2 th, ...`` and columns ``0, tw, 2 tw, ...`` (a last node
    past the image edge when the size is not a multiple of the tile); each pixel's sky is
    the bilinear interpolation of its four surrounding nodes, so every row of ``B`` has at
    most 4 entries.  Coefficients are the sky at the nodes, ordered row-major.

    Parameters
    ----------
    tile : int or tuple of int
        Node spacing ``(th, tw)`` in pixels (an int for both), >= 1.
    prior_sigma, prior_mu : optional
        As in :class:`BackgroundModel`; a prior keeps nodes over masked areas defined.
    """

    def __init__(self, tile: Any = (64, 64), *, prior_sigma: Any = None, prior_mu: Any = None) -> None:
        t = np.broadcast_to(np.asarray(tile), (2,)) if np.ndim(tile) == 0 else np.asarray(tile)
        if t.shape != (2,) or t.dtype.kind not in "iu" or np.any(t < 1):
            raise ValueError(f"background tile must be an int or a pair of ints >= 1, got {tile!r}")
        super().__init__(prior_sigma, prior_mu)
        self.tile = (int(t[0]), int(t[1]))

    def _nodes(self, imshape: tuple[int, int]) -> tuple[int, int]:
        H, W = imshape
        return -(-(H - 1) // self.tile[0]) + 1, -(-(W - 1) // self.tile[1]) + 1

    def labels(self, imshape: tuple[int, int]) -> list[str]:
        nr, nc = self._nodes(imshape)
        th, tw = self.tile
        return [f"node({i * th}, {j * tw})" for i in range(nr) for j in range(nc)]

    def columns(self, imshape: tuple[int, int]) -> scipy.sparse.csr_matrix:
        H, W = imshape
        nr, nc = self._nodes(imshape)
        ir, wr = _hat_weights(H, self.tile[0], nr)  # (H, 2) node index and weight
        ic, wc = _hat_weights(W, self.tile[1], nc)
        # every pixel: the 4 products of its row and column weights
        node = (ir[:, None, :, None] * nc + ic[None, :, None, :]).reshape(H * W, 4)
        val = (wr[:, None, :, None] * wc[None, :, None, :]).reshape(H * W, 4)
        indptr = np.arange(0, 4 * H * W + 1, 4)
        B = scipy.sparse.csr_matrix((val.ravel(), node.ravel(), indptr), shape=(H * W, nr * nc))
        B.sum_duplicates()  # the last node row/column repeats on exact node pixels
        B.eliminate_zeros()
        return B

    def __repr__(self) -> str:
        return f"BilinearGrid(tile={self.tile})"


def _normalised(n: int) -> np.ndarray:
    """``n`` coordinates from -1 to 1 (0 for a single pixel)."""
    return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1)


def _hat_weights(n: int, step: int, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Lower/upper node index and weight of each of ``n`` pixels, nodes ``step`` apart."""
    x = np.arange(n)
    lo = np.minimum(x // step, nodes - 1)
    hi = np.minimum(lo + 1, nodes - 1)
    f = (x - lo * step) / step
    return np.stack([lo, hi], axis=1), np.stack([1.0 - f, f], axis=1)


def as_background(spec: Any) -> BackgroundModel | None:
    """The :class:`BackgroundModel` described by ``spec`` (see the module table); None for none.

    Raises
    ------
    ValueError
        If ``spec`` is none of the accepted forms.
    """
    if spec is None or isinstance(spec, BackgroundModel):
        return spec
    if isinstance(spec, str):
        if spec == "constant":
            return Polynomial(0)
        if spec == "plane":
            return Polynomial(1)
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        if spec[0] == "poly":
            return Polynomial(spec[1])
        if spec[0] == "grid":
            return BilinearGrid(spec[1])
    raise ValueError(
        "background must be None, 'constant', 'plane', ('poly', order), ('grid', tile) or a "
        f"sparse3d.fit.BackgroundModel (Polynomial, BilinearGrid), got {spec!r}"
    )
