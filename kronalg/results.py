"""Result types shared by the decompositions.

SVDs return :class:`SVDResult` ``(U, S, Vh)`` like ``torch.linalg.svd``;
eigendecompositions return :class:`EighResult` ``(eigenvalues, eigenvectors)``
like ``xp.linalg.eigh``.  Iterative methods attach a :class:`ConvergenceInfo`
as ``.info`` (``None`` for direct methods); unpacking ignores it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

__all__ = ["ConvergenceInfo", "ConvergenceWarning", "EighResult", "SVDResult"]


class ConvergenceWarning(RuntimeWarning):
    """An iterative method stopped at ``maxiter`` before meeting its tolerance."""


@dataclasses.dataclass(frozen=True)
class ConvergenceInfo:
    """How an iterative method ended.

    Attributes
    ----------
    iterations : int
        Iterations (or restarts, for restarted methods) performed.
    matvecs : int
        Products with the operator or its transpose, counting each column of a block product.
    converged : bool
        Whether every requested triplet met the tolerance.
    residuals : tuple of float
        Final residual of each triplet, ``max(‖A v − σ u‖, ‖Aᵀ u − σ v‖) / σ_1`` (or the
        method's documented analogue).
    tol : float
        The tolerance that was asked for.
    """

    iterations: int
    matvecs: int
    converged: bool
    residuals: tuple[float, ...]
    tol: float


class _SVDFields(NamedTuple):
    U: Any
    S: Any
    Vh: Any


class SVDResult(_SVDFields):
    """Singular triplets ``A ≈ U diag(S) Vh``, singular values in descending order.

    Attributes
    ----------
    U : array of shape (m, k)
        Left singular vectors (orthonormal columns).
    S : array of shape (k,)
        Singular values, descending.
    Vh : array of shape (k, n)
        Right singular vectors (orthonormal rows).
    info : ConvergenceInfo or None
        Convergence information of iterative methods.
    """

    def __new__(cls, U: Any, S: Any, Vh: Any, info: ConvergenceInfo | None = None) -> SVDResult:
        self = super().__new__(cls, U, S, Vh)
        self.info = info
        return self


class _EighFields(NamedTuple):
    eigenvalues: Any
    eigenvectors: Any


class EighResult(_EighFields):
    """Eigenpairs ``A ≈ Q diag(w) Qᵀ`` of a symmetric matrix.

    Attributes
    ----------
    eigenvalues : array of shape (k,)
        Eigenvalues (the order is the producing function's; kronalg's low-rank
        routines return them descending).
    eigenvectors : array of shape (n, k)
        Orthonormal eigenvectors, one per column.
    info : ConvergenceInfo or None
        Convergence information of iterative methods.
    """

    def __new__(cls, eigenvalues: Any, eigenvectors: Any, info: ConvergenceInfo | None = None) -> EighResult:
        self = super().__new__(cls, eigenvalues, eigenvectors)
        self.info = info
        return self
