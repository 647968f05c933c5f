"""Weighted linear least-squares fitting of a sparse design matrix to images."""

from .solve import (
    PIVOT_RTOL,
    FitResult,
    NormalEquations,
    SingularNormalMatrixError,
    UnconstrainedSourceWarning,
    available_solvers,
    fit_design,
    prepare_normal_equations,
)

__all__ = [
    "PIVOT_RTOL",
    "FitResult",
    "NormalEquations",
    "SingularNormalMatrixError",
    "UnconstrainedSourceWarning",
    "available_solvers",
    "fit_design",
    "prepare_normal_equations",
]
