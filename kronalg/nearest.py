"""Nearest Kronecker products: the Kronecker-product SVD (KPSVD).

The best Kronecker-rank-``k`` approximation of ``M`` in the Frobenius norm,
``min ‖M − Σ_{i<k} A_i ⊗ B_i‖_F``, is read off the top ``k`` singular
triplets of the rearrangement ``R(M)`` (Van Loan & Pitsianis, 1993):
``A_i = √σ_i mat(u_i)``, ``B_i = √σ_i mat(v_i)``.

References
----------
.. [1] C. F. Van Loan and N. Pitsianis, "Approximation with Kronecker products", 1993.
.. [2] Koroko et al., "Efficient approximations of the Fisher matrix in neural networks using
   Kronecker product singular value decomposition", §3.1 and Prop. 3.2.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ._backend import eps, namespace_and_device
from ._checks import check_finite, check_floating, check_shape_pair
from ._linalg import column_signs, sign_of
from ._vec import rearrange_blocks
from .operators import KronSum, SampleKronSum

__all__ = ["NearestKroneckerInfo", "nearest_kronecker", "NEAREST_METHODS"]

#: Methods implemented today; the iterative ones arrive with the iterative engines.
NEAREST_METHODS = ("auto", "svd")


@dataclasses.dataclass(frozen=True)
class NearestKroneckerInfo:
    """How a nearest-Kronecker approximation was computed and how good it is.

    Attributes
    ----------
    method : str
        The method that ran (``"auto"`` resolved).
    iterations : int
        Iterations of an iterative method (0 for direct methods).
    converged : bool
        Whether the method met its tolerance (always ``True`` for direct methods).
    residual : float
        ``‖M − M̂‖_F``.
    relative_residual : float
        ``‖M − M̂‖_F / ‖M‖_F`` (0 when ``M = 0``).
    singular_values : array of shape (rank,)
        The singular values ``σ_i`` of ``R(M)`` behind the returned terms.
    """

    method: str
    iterations: int
    converged: bool
    residual: float
    relative_residual: float
    singular_values: Any


def _is_symmetric_dense(xp: Any, M: Any) -> bool:
    if M.shape[0] != M.shape[1]:
        return False
    scale = float(xp.max(xp.abs(M))) if M.shape[0] else 0.0
    asym = float(xp.max(xp.abs(M - xp.matrix_transpose(M)))) if M.shape[0] else 0.0
    return asym <= 100.0 * eps(xp, M.dtype) * max(scale, 1e-300)


def _validate(M: Any, a_shape: Any, b_shape: Any, rank: Any, method: str) -> tuple[Any, tuple, tuple, bool]:
    """Check the arguments; return ``(xp, a_shape, b_shape, symmetric)``."""
    if method not in NEAREST_METHODS:
        raise ValueError(f"`method` must be one of {NEAREST_METHODS}, got {method!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"`rank` must be a positive int, got {rank!r}")
    if isinstance(M, (KronSum, SampleKronSum)):
        for given, actual, name in ((a_shape, M.a_shape, "a_shape"), (b_shape, M.b_shape, "b_shape")):
            if given is not None and tuple(check_shape_pair(given, name)) != tuple(actual):
                raise ValueError(f"`{name}` {tuple(given)} does not match the operator's factor shape {actual}")
        a, b = M.a_shape, M.b_shape
        if isinstance(M, SampleKronSum):
            symmetric = True
        else:
            symmetric = M.is_symmetric_structure()
        xp = M.xp
    else:
        xp, _ = namespace_and_device(M)
        if a_shape is None or b_shape is None:
            raise ValueError("`a_shape` and `b_shape` are required when `M` is a dense array")
        a, b = check_shape_pair(a_shape, "a_shape"), check_shape_pair(b_shape, "b_shape")
        if M.ndim != 2 or tuple(M.shape) != (a[0] * b[0], a[1] * b[1]):
            raise ValueError(
                f"`M` must have shape (p*r, q*s) = {(a[0] * b[0], a[1] * b[1])} for `a_shape` {a} and "
                f"`b_shape` {b}, got {tuple(M.shape)}"
            )
        check_floating(xp, M, "M")
        check_finite(xp, M, "M")
        symmetric = a[0] == a[1] and b[0] == b[1] and _is_symmetric_dense(xp, M)
    max_rank = min(a[0] * a[1], b[0] * b[1])
    if rank > max_rank:
        raise ValueError(f"`rank` must be at most min(p*q, r*s) = {max_rank} for these shapes, got {rank}")
    return xp, a, b, symmetric


def factors_from_triplets(
    xp: Any, U: Any, S: Any, Vh: Any, a_shape: tuple, b_shape: tuple, *, symmetric: bool
) -> tuple[Any, Any]:
    """Stacked Kronecker factors ``A_i = √σ_i mat(u_i)``, ``B_i = √σ_i mat(v_i)`` with fixed signs.

    Signs follow ``svd_flip`` (largest entry of each ``u_i`` positive), except
    that for symmetric input the leading pair is symmetrized and signed so that
    ``tr(A_0) ≥ 0``, which makes both factors PSD when the input is PSD
    (Koroko Prop. 3.2).

    Parameters
    ----------
    xp : module
        Namespace of the arrays.
    U : array of shape (p·q, k)
    S : array of shape (k,)
    Vh : array of shape (k, r·s)
    a_shape, b_shape : tuple of int
        ``(p, q)`` and ``(r, s)``.
    symmetric : bool
        Whether the approximated matrix is symmetric.

    Returns
    -------
    As : array of shape (k, p, q)
    Bs : array of shape (k, r, s)
    """
    k = S.shape[0]
    signs = column_signs(xp, U)
    root = xp.sqrt(xp.clip(S, 0.0, None))
    As = xp.reshape(xp.matrix_transpose(U), (k, *a_shape)) * (signs * root)[:, None, None]
    Bs = xp.reshape(Vh, (k, *b_shape)) * (signs * root)[:, None, None]
    if symmetric:
        A0 = 0.5 * (As[0, ...] + xp.matrix_transpose(As[0, ...]))
        B0 = 0.5 * (Bs[0, ...] + xp.matrix_transpose(Bs[0, ...]))
        trace_sign = sign_of(xp, xp.linalg.trace(A0))
        As = xp.concat([(trace_sign * A0)[None, ...], As[1:, ...]])
        Bs = xp.concat([(trace_sign * B0)[None, ...], Bs[1:, ...]])
    return As, Bs


def _nearest_svd(xp: Any, M: Any, a: tuple, b: tuple, rank: int, symmetric: bool) -> KronSum:
    if isinstance(M, (KronSum, SampleKronSum)):
        R = M.rearranged.to_dense()
    else:
        R = rearrange_blocks(xp, M, a, b)
    U, S, Vh = xp.linalg.svd(R, full_matrices=False)
    As, Bs = factors_from_triplets(xp, U[:, :rank], S[:rank], Vh[:rank, :], a, b, symmetric=symmetric)
    total = float(xp.sum(S**2))
    residual = math.sqrt(max(float(xp.sum(S[rank:] ** 2)), 0.0)) if S.shape[0] > rank else 0.0
    info = NearestKroneckerInfo(
        method="svd",
        iterations=0,
        converged=True,
        residual=residual,
        relative_residual=residual / math.sqrt(total) if total > 0 else 0.0,
        singular_values=S[:rank],
    )
    return KronSum((As, Bs), info=info)


def nearest_kronecker(
    M: Any,
    a_shape: Any = None,
    b_shape: Any = None,
    *,
    rank: int = 1,
    method: str = "auto",
    tol: float | None = None,
    maxiter: int | None = None,
    x0: Any = None,
) -> KronSum:
    """Best Kronecker-rank-``rank`` approximation ``M ≈ Σ_{i<rank} A_i ⊗ B_i`` in the Frobenius norm.

    Solves ``min ‖M − Σ A_i⊗B_i‖_F`` through the top singular triplets of the
    rearrangement ``R(M)``.  For symmetric PSD ``M`` with square factor
    shapes the leading pair is returned symmetric PSD (Koroko Prop. 3.2);
    later pairs are returned as the SVD gives them.

    Parameters
    ----------
    M : array of shape (p·r, q·s), KronSum, or SampleKronSum
        The matrix to approximate; implicit sums carry their factor shapes.
    a_shape : pair of int, optional
        ``(p, q)``; required for a dense ``M``.
    b_shape : pair of int, optional
        ``(r, s)``; required for a dense ``M``.
    rank : int
        Number of Kronecker terms, at most ``min(p·q, r·s)``.
    method : {"auto", "svd"}
        ``"svd"``: dense rearrangement and full SVD (exact; forms ``R(M)``,
        which has as many entries as ``M``). ``"auto"`` picks ``"svd"``.
    tol : float, optional
        Tolerance of iterative methods; exact methods ignore it.
    maxiter : int, optional
        Iteration cap of iterative methods; exact methods ignore it.
    x0 : KronSum or (A, B) pair, optional
        Warm start for iterative methods; exact methods ignore it.

    Returns
    -------
    KronSum
        Terms ordered by decreasing ``σ_i``; ``.info`` is a :class:`NearestKroneckerInfo`.

    Raises
    ------
    ValueError
        On shapes that do not match, ``rank`` out of range, an unknown
        ``method``, or non-finite input.
    TypeError
        On non-floating input.

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg import nearest_kronecker
    >>> rng = np.random.default_rng(0)
    >>> A, B = rng.standard_normal((3, 2)), rng.standard_normal((4, 5))
    >>> K = nearest_kronecker(np.kron(A, B), (3, 2), (4, 5))
    >>> A1, B1 = K.factors[0]
    >>> np.allclose(np.kron(A1, B1), np.kron(A, B))
    True
    >>> K.info.relative_residual < 1e-12
    True
    """
    xp, a, b, symmetric = _validate(M, a_shape, b_shape, rank, method)
    return _nearest_svd(xp, M, a, b, rank, symmetric)
