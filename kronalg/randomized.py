"""Randomized low-rank decompositions (Halko, Martinsson & Tropp 2011).

* :func:`randomized_svd` — top-``k`` singular triplets of a matrix or operator
  from a randomized range finder with power (subspace) iterations.
* :func:`randomized_eigh` — top-``k`` eigenpairs of a symmetric (PSD) operator,
  the randomized EVD that RS-KFAC applies to K-factors (Puiu 2022, §2.2).

Both work on anything :func:`kronalg.operators.as_operator` accepts (a dense
matrix of any backend, a kronalg operator such as ``KronSum(...).rearranged``,
a :class:`scipy.sparse.linalg.LinearOperator`) and touch it only through block
products ``matmat``/``rmatmat``.

The Gaussian test matrix is drawn with NumPy from ``seed``, cast, and moved to
the operator's device once (as scikit-learn's ``randomized_range_finder``), so
every backend starts from the same vectors.

Normalization.  Between products the block is re-normalized so that the
columns cannot collapse onto the dominant direction (the unnormalized
power iteration loses everything below ``σ_1·eps^{1/(2q+1)}``).  Only the
*span* matters there, so where the backend has an LU with partial pivoting
(NumPy/SciPy, torch on the CPU) the permuted unit-lower factor ``P L`` of
``Y = P L U`` is used — it spans ``range(Y)``, has entries ``|l_ij| ≤ 1`` and costs
a fraction of a Householder QR (as scikit-learn and fbpca do).  Elsewhere
(array-API, GPU) a reduced QR is used.  The *final* basis is always a
Householder QR, so ``Q`` is orthonormal to working precision.
"""

from __future__ import annotations

import numbers
from typing import Any

import array_api_compat
import numpy as np

from ._backend import namespace_and_device
from ._linalg import column_signs, random_normal, svd_flip
from .operators import KronOperator, MatrixOperator, as_operator
from .results import ConvergenceInfo, EighResult, SVDResult

__all__ = ["randomized_svd", "randomized_eigh"]


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------
def _iv(
    op: Any, k: Any, oversample: Any, n_iter: Any, seed: Any, *, square: bool
) -> tuple[KronOperator, int, int, int]:
    """Validate the arguments of one entry point; return ``(operator, k, ell, n_iter)``."""
    A = as_operator(op)
    xp = A.xp
    if not xp.isdtype(A.dtype, "real floating"):
        raise TypeError(f"`op` must have a real floating dtype (float32 or float64), got {A.dtype}")
    m, n = A.shape
    if square and m != n:
        raise ValueError(f"`op` must be square (symmetric) for randomized_eigh, got shape {(m, n)}")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"`k` must be an int, got {type(k).__name__}")
    k = int(k)
    if k <= 0 or k > min(m, n):
        raise ValueError(f"`k` must satisfy 1 <= k <= min(m, n) = {min(m, n)} for `op` of shape {(m, n)}, got {k}")
    if isinstance(oversample, bool) or not isinstance(oversample, numbers.Integral):
        raise TypeError(f"`oversample` must be an int, got {type(oversample).__name__}")
    if oversample < 0:
        raise ValueError(f"`oversample` must be >= 0, got {oversample}")
    if isinstance(n_iter, str):
        if n_iter != "auto":
            raise ValueError(f'`n_iter` must be "auto" or an int >= 0, got {n_iter!r}')
        n_iter = _auto_n_iter(k, m, n)
    elif isinstance(n_iter, bool) or not isinstance(n_iter, numbers.Integral):
        raise TypeError(f'`n_iter` must be "auto" or an int >= 0, got {type(n_iter).__name__}')
    elif n_iter < 0:
        raise ValueError(f'`n_iter` must be "auto" or an int >= 0, got {n_iter}')
    if not (seed is None or isinstance(seed, np.random.Generator)) and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
    ):
        raise TypeError(f"`seed` must be None, an int or a numpy.random.Generator, got {type(seed).__name__}")
    if isinstance(seed, numbers.Integral) and seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed}")
    ell = min(k + int(oversample), m, n)  # sketch size
    return A, k, ell, int(n_iter)


def _auto_n_iter(k: int, m: int, n: int) -> int:
    """scikit-learn's rule: 7 power iterations when ``k < 0.1·min(m, n)``, else 4.

    Small ``k`` relative to the matrix means a long tail of discarded singular
    values; the tail is what slows the convergence of ``range(Q)``, so more
    iterations are spent there.  Both choices are ≥ 2.
    """
    return 7 if k < 0.1 * min(m, n) else 4


# ---------------------------------------------------------------------------
# normalizers (dispatch to the library that owns the arrays; no host copies)
# ---------------------------------------------------------------------------
def _lu_basis(xp: Any, Y: Any) -> Any:
    """A well-scaled basis of ``range(Y)``: ``P L`` of ``Y = P L U`` (QR where no LU exists)."""
    if array_api_compat.is_numpy_namespace(xp):
        import scipy.linalg

        PL, _ = scipy.linalg.lu(Y, permute_l=True, check_finite=False)
        return PL
    if array_api_compat.is_torch_namespace(xp) and Y.device.type == "cpu":
        import torch

        LU, piv, _ = torch.linalg.lu_factor_ex(Y)  # a singular U (rank-deficient Y) does not matter: L is used
        m, ell = Y.shape
        L = torch.tril(LU, -1) + torch.eye(m, ell, dtype=Y.dtype, device=Y.device)
        perm = list(range(m))  # LAPACK row swaps (1-based), applied in order
        for i, p in enumerate(piv.tolist()):
            perm[i], perm[p - 1] = perm[p - 1], perm[i]
        inverse = [0] * m
        for i, p in enumerate(perm):
            inverse[p] = i
        return L[torch.as_tensor(inverse, device=Y.device), :]
    return _qr_basis(xp, Y)


def _qr_basis(xp: Any, Y: Any) -> Any:
    """Orthonormal basis ``Q`` of ``range(Y)`` (reduced Householder QR)."""
    if array_api_compat.is_numpy_namespace(xp):
        import scipy.linalg

        Q, _ = scipy.linalg.qr(Y, mode="economic", check_finite=False)  # faster than numpy's geqrf+orgqr
        return Q
    Q, _ = xp.linalg.qr(Y)
    return Q


class _Blocks:
    """Block products ``A X`` and ``Aᵀ Y`` with ``X``: (n, l), ``Y``: (m, l).

    For a dense matrix ``M`` the products are evaluated as ``(Xᵀ Mᵀ)ᵀ`` and
    ``(Yᵀ M)ᵀ``: the same numbers, but the skinny block is the *left* GEMM
    operand and the result is written as ``l`` long rows, which OpenBLAS/MKL
    run markedly faster than ``M @ X`` / ``M.T @ Y`` for row-major ``M``
    (``M.T @ Y`` is about 2× slower; scikit-learn uses those forms).  The
    transposes are views; nothing is copied.  Other operators use their
    ``matmat``/``rmatmat``.
    """

    def __init__(self, A: KronOperator):
        self.xp = A.xp
        self.op = A
        self.M = A.matrix if isinstance(A, MatrixOperator) else None

    def matmat(self, X: Any) -> Any:
        xp = self.xp
        if self.M is None:
            return self.op.matmat(X)
        return xp.matrix_transpose(xp.matmul(xp.matrix_transpose(X), xp.matrix_transpose(self.M)))

    def rmatmat(self, Y: Any) -> Any:
        xp = self.xp
        if self.M is None:
            return self.op.rmatmat(Y)
        return xp.matrix_transpose(xp.matmul(xp.matrix_transpose(Y), self.M))


def _check_product(Y: Any, reference: Any, rows: int) -> None:
    """The operator must answer in the namespace/device of the block it was given."""
    try:
        namespace_and_device(Y, reference)
    except TypeError as exc:
        raise TypeError(
            f"`op` must return arrays of the namespace and device of its operands (mixed backends): {exc}"
        ) from exc
    if tuple(Y.shape) != (rows, reference.shape[1]):
        raise ValueError(f"`op` returned a block of shape {tuple(Y.shape)}, expected {(rows, reference.shape[1])}")


def _range_finder(P: _Blocks, A: KronOperator, ell: int, n_iter: int, seed: Any, *, symmetric: bool) -> Any:
    """Orthonormal ``Q`` of shape ``(m, ell)`` with ``range(Q) ≈ range((A Aᵀ)^q A Ω)`` (``2q + 1`` block products)."""
    xp = A.xp
    m, n = A.shape
    Omega = random_normal(xp, (n, ell), dtype=A.dtype, device=A.device, seed=seed)
    Y = P.matmat(Omega)
    _check_product(Y, Omega, m)
    adjoint = P.matmat if symmetric else P.rmatmat
    for _ in range(n_iter):
        Y = P.matmat(_lu_basis(xp, adjoint(_lu_basis(xp, Y))))
    return _qr_basis(xp, Y)


def _info(n_iter: int, matvecs: int) -> ConvergenceInfo:
    return ConvergenceInfo(iterations=n_iter, matvecs=matvecs, converged=True, residuals=(), tol=0.0)


# ---------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------
def randomized_svd(
    op: Any, k: int, *, oversample: int = 10, n_iter: int | str = "auto", seed: int | np.random.Generator | None = None
) -> SVDResult:
    """Top-``k`` singular triplets by a randomized range finder with power iterations.

    ``A ≈ U diag(S) Vh`` with ``Q = orth((A Aᵀ)^q A Ω)``, ``Ω ~ N(0, 1)^{n×ell}``,
    ``Qᵀ A = Ũ diag(S) Vh`` and ``U = Q Ũ`` (Halko et al., Alg. 4.4 + 5.1).

    Parameters
    ----------
    op : array of shape (m, n), KronOperator, or operator-like
        Real floating matrix of any array-API backend, a kronalg operator
        (e.g. ``KronSum(...).rearranged``), or an object with ``shape``,
        ``dtype``, ``matvec``/``rmatvec`` (``matmat``/``rmatmat`` used when
        present), such as a :class:`scipy.sparse.linalg.LinearOperator`.
    k : int
        Number of singular triplets, ``1 <= k <= min(m, n)``.
    oversample : int, default 10
        Extra sketch columns; the sketch has ``ell = min(k + oversample, m, n)``
        columns.
    n_iter : int or "auto", default "auto"
        Power iterations ``q`` (each one product with ``Aᵀ`` and one with ``A``,
        re-normalized after each).  ``"auto"`` is scikit-learn's rule:
        ``7`` if ``k < 0.1·min(m, n)`` else ``4`` (always ≥ 2).  Use more for
        slowly decaying (polynomial, flat) spectra.
    seed : int, numpy.random.Generator or None
        Source of the Gaussian test matrix, drawn with NumPy and moved to the
        operator's device, so every backend starts from the same vectors.

    Returns
    -------
    SVDResult
        ``U`` of shape (m, k) and ``Vh`` of shape (k, n) with orthonormal
        columns/rows, ``S`` of shape (k,) descending, all in the operator's
        namespace, device and dtype.  Signs are deterministic: the
        largest-magnitude entry of each column of ``U`` is positive.
        ``.info`` is a :class:`~kronalg.results.ConvergenceInfo` with
        ``iterations = q`` and ``matvecs = ell·(2q + 2)`` column products.

    Raises
    ------
    ValueError
        If ``k``, ``oversample`` or ``n_iter`` is out of range.
    TypeError
        For arguments of the wrong kind, a non-floating operator, or an
        operator answering in another namespace/device than its operands.

    Notes
    -----
    With ``q`` power iterations and ``p = ell − k ≥ 2`` (Halko et al., Cor. 10.10)
    ``E‖A − U S Vh‖₂ ≤ C^{1/(2q+1)}·σ_{k+1}`` with
    ``C = 1 + sqrt(k/(p−1)) + e·sqrt(ell)/p·sqrt(min(m, n) − k)``: a fast
    spectral decay is captured with few iterations, a slowly decaying or flat
    spectrum reaches the optimum only up to a factor.  Intermediate blocks are normalized by a
    pivoted LU where the backend has one (NumPy/SciPy, torch CPU), else by QR;
    the final basis is a Householder QR (see the module notes).

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with
       randomness", SIAM Review 53(2), 2011.

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg.randomized import randomized_svd
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((60, 5)) @ rng.standard_normal((5, 40))
    >>> U, S, Vh = randomized_svd(A, 5, seed=0)
    >>> np.allclose(U @ np.diag(S) @ Vh, A)
    True
    >>> np.allclose(S, np.linalg.svd(A, compute_uv=False)[:5])
    True
    """
    A, k, ell, q = _iv(op, k, oversample, n_iter, seed, square=False)
    xp = A.xp
    P = _Blocks(A)
    Q = _range_finder(P, A, ell, q, seed, symmetric=False)
    B = xp.matrix_transpose(P.rmatmat(Q))  # (ell, n) = Qᵀ A
    Ub, S, Vh = xp.linalg.svd(B, full_matrices=False)
    U, Vh = svd_flip(xp, xp.matmul(Q, Ub[:, :k]), Vh[:k, :])
    return SVDResult(U, S[:k], Vh, info=_info(q, ell * (2 * q + 2)))


def randomized_eigh(
    op: Any, k: int, *, oversample: int = 10, n_iter: int | str = "auto", seed: int | np.random.Generator | None = None
) -> EighResult:
    """Top-``k`` eigenpairs of a symmetric (PSD) operator by a randomized range finder.

    ``A ≈ V diag(w) Vᵀ`` with ``Q = orth(A^{2q+1} Ω)``, ``Qᵀ A Q = W diag(λ) Wᵀ``
    and ``V = Q W`` (Halko et al., Alg. 4.4 + 5.3), the randomized EVD used on
    K-factors by RS-KFAC (Puiu 2022, §2.2).

    Parameters
    ----------
    op : array of shape (n, n), KronOperator, or operator-like
        Symmetric real floating matrix or operator (only ``matmat`` is used;
        symmetry is assumed, not checked).
    k : int
        Number of eigenpairs, ``1 <= k <= n``.
    oversample : int, default 10
        Extra sketch columns, ``ell = min(k + oversample, n)``.
    n_iter : int or "auto", default "auto"
        Power iterations ``q``, each two products with ``A`` (so the same ``q``
        gives the same subspace as :func:`randomized_svd`).  ``"auto"``: ``7`` if
        ``k < 0.1·n`` else ``4``.
    seed : int, numpy.random.Generator or None
        Source of the Gaussian test matrix (drawn with NumPy, moved to the device).

    Returns
    -------
    EighResult
        ``eigenvalues`` of shape (k,) in *descending* order and orthonormal
        ``eigenvectors`` of shape (n, k) (largest-magnitude entry of each
        column positive), in the operator's namespace, device and dtype.
        The range finder captures the eigenvalues of largest *magnitude*; the
        ``k`` of largest magnitude are kept and sorted descending, which for
        PSD input are the ``k`` largest.  ``.info``: ``iterations = q``,
        ``matvecs = ell·(2q + 2)``.

    Raises
    ------
    ValueError
        If ``op`` is not square, or ``k``, ``oversample``, ``n_iter`` are out of range.
    TypeError
        For arguments of the wrong kind or mixed backends.

    References
    ----------
    .. [1] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with
       randomness", SIAM Review 53(2), 2011.
    .. [2] C. O. Puiu, "Randomized K-FACs: Speeding up K-FAC with randomized
       numerical linear algebra", arXiv:2206.15397, 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg.randomized import randomized_eigh
    >>> rng = np.random.default_rng(0)
    >>> G = rng.standard_normal((50, 4))
    >>> w, V = randomized_eigh(G @ G.T, 4, seed=0)
    >>> np.allclose(V @ np.diag(w) @ V.T, G @ G.T)
    True
    >>> bool(np.all(np.diff(w) <= 0))
    True
    """
    A, k, ell, q = _iv(op, k, oversample, n_iter, seed, square=True)
    xp = A.xp
    P = _Blocks(A)
    Q = _range_finder(P, A, ell, q, seed, symmetric=True)
    T = xp.matmul(xp.matrix_transpose(Q), P.matmat(Q))  # (ell, ell) = Qᵀ A Q
    T = 0.5 * (T + xp.matrix_transpose(T))
    lam, W = xp.linalg.eigh(T)  # ascending
    order = xp.argsort(xp.abs(lam), descending=True, stable=True)[:k]  # largest magnitude
    lam, W = xp.take(lam, order), xp.take(W, order, axis=1)
    order = xp.argsort(lam, descending=True, stable=True)  # descending by value
    lam, W = xp.take(lam, order), xp.take(W, order, axis=1)
    V = xp.matmul(Q, W)
    V = V * column_signs(xp, V)[None, :]
    return EighResult(lam, V, info=_info(q, ell * (2 * q + 2)))
