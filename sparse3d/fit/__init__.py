"""Weighted linear least-squares fitting of a sparse design matrix to images.

The model of an image of shape ``(H, W)`` is ``image.ravel() = A @ w`` where ``A`` is a
sparse design matrix of shape ``(H * W, n)``, one column per source. :func:`fit_design`
solves the (optionally weighted, masked and regularised) normal equations::

    (A^T C^-1 A + P) w = A^T C^-1 d + P mu

with ``C = diag(errors**2)`` restricted to the unmasked pixels and
``P = diag(1 / prior_sigma**2)``. The normal matrix is factorised once with a sparse
Cholesky factorisation and reused for every frame of a stack. The 1-sigma uncertainties
``sqrt(diag((A^T C^-1 A + P)^-1))`` are computed exactly, without forming the dense
inverse, by a supernodal selected inversion of the factor, on the first access of
:attr:`FitResult.weights_err`.

Solvers: ``"nd"`` (built in, the default for large designs of regular stamps: a nested-dissection
ordering from the stamp positions and a multifrontal supernodal Cholesky in numba and BLAS),
``"qdldl"`` (the default otherwise: ``qdldl``'s ``L D L^T`` with AMD ordering, Apache-2.0),
``"superlu"`` (SciPy's SuperLU in symmetric mode, ``L D L^T``, no pivoting) and ``"cholmod"``
(CHOLMOD's supernodal Cholesky through the optional, GPL-licensed ``cvxopt``:
``pip install "sparse3d[cholmod]"``); :func:`available_solvers` lists those usable here.

Where each concept lives
------------------------
``solve.py``
    :func:`fit_design`, the driver: validate, group frames by error map, factorise once
    per map, solve all frames, assemble the result.
``assemble.py``
    :func:`normal_matrix` (the lower triangle of ``A^T diag(ivar) A``, straight from the
    stamps of a regular :class:`~sparse3d.Sparse3D` through a compiled kernel in
    ``_stamp_kernels.py``, else SciPy's product) and its power-of-two column scaling;
    design formats and row scaling.
``normal.py``
    :class:`NormalEquations` and :func:`prepare_normal_equations`: the normal equations of
    one design and one error map, factorised once.
``normal_chi2.py``
    The chi-square from them (``d^T C^-1 d - x^T b``) and, where that cancels (a near-perfect
    fit), exactly from the residuals: the fit's weighted data minus the model of its kept
    weighted stamps, in place.
``rhs.py``
    The right-hand sides ``A^T C^-1 D`` and ``D^T C^-1 D`` of a fit straight from regular stamps
    (``_rhs_kernels.py``): no design matrix, no weighted copy of the frames; with many frames
    the image is swept row by row (stamp rows by column), so a frame stack streams from memory
    once; the data's finiteness check in one compiled pass. Large many-frame fits run these in
    threads (:mod:`sparse3d._threads`; bands of sources, ranges of pixel blocks) and compute
    them while the normal matrix is factorised (``_Ahead``); the same bits for any thread count.
    A fit of a few frames instead keeps the weighted, scaled stamps its normal matrix was built
    from (in cell order) through its solve: its right-hand sides and a recomputed chi-square
    read them in sequence (``_cells_rhs``, ``_cells_residual``).
``factor.py``
    The factorisations behind one interface (``solve``, ``inv_diag``, ``portable``):
    qdldl, SuperLU, CHOLMOD, triangular, empty; :func:`available_solvers`; singular
    diagnosis. ``_factor_kernels.py``: postorder and relaxed supernodes (numba) for qdldl.
``relaxed.py``
    Relaxed supernodes: the one amalgamation rule (compiled by the kernels too) and its NumPy
    implementation for small qdldl factors, written straight as the blocks of ``selinv.py``.
``ordering.py``
    The nested-dissection order from the stamp boxes (``_ordering_kernels.py``).
``supernodal.py``
    ``solver="nd"``: symbolic analysis, multifrontal numeric factorisation and solves
    (``_supernodal_kernels.py``), the factor written once as the blocks of ``selinv.py``.
``selinv.py``
    The supernodal Cholesky blocks: blocked solves and the selected inversion (compiled over
    the ``"nd"`` factor's blocks in ``_selinv_kernels.py``).
``result.py``
    :class:`FitResult`, :class:`SingularNormalMatrixError`,
    :class:`UnconstrainedSourceWarning`; chi-square and weight uncertainties.
``_joint.py``
    The joint normal matrix of the sources and a background model's columns (the
    background block, with its own power-of-two column scale).
``background.py``
    The background (sky) models fitted jointly with the sources: :class:`BackgroundModel`,
    :class:`Polynomial`, :class:`BilinearGrid` and :func:`as_background` (their design
    columns over the image).
``diagnostics.py``
    Residuals, chi-square per frame and per source, :class:`FitFlags`, blending, and the
    covariance on the normal matrix's pattern (selected inversion).
``_inputs.py``
    The astronomer's containers read into plain arrays: masked arrays, NDData-like
    objects, Quantities and units, ``errors=inf``, data-quality bitmasks;
    :func:`check_inputs` (public: the layers above validate their images with it) returns
    them validated as a :class:`FitInputs`.
``_checks.py``
    Input validation (shapes, masks, errors, priors, solver names).

This package imports SciPy; ``import sparse3d`` does not import it (the names above are
loaded on first use).
"""

from ._inputs import FitInputs, check_inputs
from .assemble import normal_matrix
from .background import BackgroundModel, BilinearGrid, Polynomial, as_background
from .diagnostics import BLEND_THRESHOLD, FitFlags
from .factor import PIVOT_RTOL, available_solvers
from .normal import NormalEquations, prepare_normal_equations
from .result import FitResult, SingularNormalMatrixError, UnconstrainedSourceWarning
from .solve import fit_design

__all__ = [
    "BLEND_THRESHOLD",
    "PIVOT_RTOL",
    "BackgroundModel",
    "BilinearGrid",
    "FitFlags",
    "FitInputs",
    "FitResult",
    "Polynomial",
    "as_background",
    "NormalEquations",
    "SingularNormalMatrixError",
    "UnconstrainedSourceWarning",
    "available_solvers",
    "check_inputs",
    "fit_design",
    "normal_matrix",
    "prepare_normal_equations",
]
