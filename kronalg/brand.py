"""Brand's incremental SVD / EVD for low-rank updates, and the B-KFAC helpers of Puiu (2022).

Brand (2006) updates a thin SVD ``X = U diag(S) Vᵀ`` to that of ``X + A Bᵀ`` without touching ``X`` again: write
``A = U C_A + Q_A R_A`` and ``B = V C_B + Q_B R_B`` with ``[U Q_A]`` and ``[V Q_B]`` orthonormal, so that

    X + A Bᵀ = [U Q_A] (blockdiag(diag(S), 0) + [C_A; R_A] [C_B; R_B]ᵀ) [V Q_B]ᵀ,

and only the small ``(k+c)×(k+c)`` core needs an SVD.  The symmetric variant (Puiu 2022, Alg. 3) does the same with
one basis and an ``eigh`` of the core.  The cost is ``O(d (k+c)²)`` — linear in the large dimension ``d`` — and no
``d×d`` matrix is ever formed.

**Orthonormal complement without Householder QR.**  The complement basis ``Q`` comes from Gram-matrix passes
(GEMMs, triangular solves and ``c×c`` factorizations), because a thin Householder QR of a ``d×c`` block is far slower
than GEMM on common CPU BLAS builds:

1. project once: ``C = Uᵀ A``, ``P = A − U C`` (if ``‖P‖`` is at rounding level, ``A`` lies in ``span(U)`` and
   there is no new direction);
2. a *shifted* CholeskyQR pass (Fukaya et al. 2020): ``PᵀP + sI = L Lᵀ``, ``Q₁ = P L⁻ᵀ``, ``R₁ = Lᵀ`` with
   ``s = √(dc)·eps·‖P‖_F²`` — backward stable (``Q₁ R₁ = P + O(eps‖P‖)`` whatever the conditioning of ``P``) with
   ``cond(Q₁) ≤ (√(dc)·eps)^(-1/2)``;
3. "twice is enough" (Giraud et al. 2005; the rule ``IncrementalSVD.jl`` follows): re-project ``Q₁`` against ``U``,
   folding ``Uᵀ Q₁`` into ``C``, then a second pass — plain CholeskyQR when ``‖Q₁ᵀQ₁ − I‖_F ≤ ½`` (the usual case),
   otherwise a rank-revealing ``eigh`` of the Gram matrix that drops the directions at its noise floor or carrying
   less than ``√(dc)·eps·‖A‖_F`` of ``A``.  So a rank-deficient update (``A`` in ``span(U)``, repeated or zero
   columns, ``k + c > d``) yields fewer — still orthonormal — new directions, and nothing above rounding level is
   lost.

References
----------
M. Brand, "Fast low-rank modifications of the thin singular value decomposition", Linear Algebra Appl. 415 (2006).
C. O. Puiu, "Brand New K-FACs: Speeding up K-FAC with Online Decomposition Updates", arXiv:2210.08494 (2022).
T. Fukaya, R. Kannan, Y. Nakatsukasa, Y. Yamamoto, Y. Yanagisawa, "Shifted Cholesky QR for computing the QR
factorization of ill-conditioned matrices", SIAM J. Sci. Comput. 42 (2020).
L. Giraud, J. Langou, M. Rozložník, "The loss of orthogonality in the Gram-Schmidt orthogonalization process",
Comput. Math. Appl. 50 (2005).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import numpy as np

from ._backend import asarray_on, cholesky, device_of, eigh, eps, is_array, namespace_and_device, solve_triangular
from ._checks import check_finite, check_floating, check_matrix, check_same_dtype
from .results import EighResult, SVDResult

__all__ = [
    "ContinuedSpectrum",
    "brand_light_correction",
    "brand_update",
    "brand_update_sym",
    "spectrum_continuation",
]

# At most this many re-orthogonalization passes after the shifted one (a rank-revealing pass is repeated only while
# it leaves an ill-conditioned basis; the shifted pass bounds how often that can happen).
_MAX_CLEANUP_PASSES = 3
# A Gram pass whose kept eigenvalues all lie within this factor of the largest leaves an orthonormal basis.
_WELL_CONDITIONED = 0.25


# ---------------------------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------------------------


def _check_vector(x: Any, name: str) -> None:
    if x.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array, got ndim={x.ndim} with shape {tuple(x.shape)}")


def _check_rank(rank: Any) -> int | None:
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"`rank` must be a positive int or None, got {type(rank).__name__}")
    if rank < 1:
        raise ValueError(f"`rank` must be a positive int or None, got {rank}")
    return int(rank)


def _check_dim(name: str, got: int, expected: int, what: str) -> None:
    if got != expected:
        raise ValueError(f"`{name}` must have {what} {expected}, got {got}")


def _check_arrays(xp: Any, arrays: dict[str, Any]) -> None:
    for name, x in arrays.items():
        check_floating(xp, x, name)
    check_same_dtype(arrays)


def _check_finite_all(xp: Any, arrays: dict[str, Any]) -> None:
    for name, x in arrays.items():
        check_finite(xp, x, name)


def _validate_update(U: Any, S: Any, Vh: Any, A: Any, B: Any, rank: Any) -> tuple[Any, Any, int | None]:
    xp, device = namespace_and_device(U, S, Vh, A, B)
    for name, x in (("U", U), ("Vh", Vh), ("A", A), ("B", B)):
        check_matrix(x, name)
    _check_vector(S, "S")
    m, k = U.shape
    _check_dim("S", S.shape[0], k, "length k = U.shape[1] =")
    _check_dim("Vh", Vh.shape[0], k, "k = U.shape[1] rows, i.e. shape[0] =")
    n = Vh.shape[1]
    _check_dim("A", A.shape[0], m, "m = U.shape[0] rows, i.e. shape[0] =")
    _check_dim("B", B.shape[0], n, "n = Vh.shape[1] rows, i.e. shape[0] =")
    _check_dim("B", B.shape[1], A.shape[1], "as many columns as `A`, i.e. shape[1] =")
    rank = _check_rank(rank)
    arrays = {"U": U, "S": S, "Vh": Vh, "A": A, "B": B}
    _check_arrays(xp, arrays)
    _check_finite_all(xp, arrays)
    return xp, device, rank


def _validate_update_sym(U: Any, w: Any, A: Any, rank: Any, decay: Any) -> tuple[Any, Any, int | None, float]:
    xp, device = namespace_and_device(U, w, A)
    check_matrix(U, "U")
    _check_vector(w, "w")
    check_matrix(A, "A")
    d, k = U.shape
    _check_dim("w", w.shape[0], k, "length k = U.shape[1] =")
    _check_dim("A", A.shape[0], d, "d = U.shape[0] rows, i.e. shape[0] =")
    rank = _check_rank(rank)
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
        raise TypeError(f"`decay` must be a real number, got {type(decay).__name__}")
    decay = float(decay)
    if not math.isfinite(decay) or decay < 0:
        raise ValueError(f"`decay` must be a finite number >= 0 (an EMA factor), got {decay}")
    arrays = {"U": U, "w": w, "A": A}
    _check_arrays(xp, arrays)
    _check_finite_all(xp, arrays)
    return xp, device, rank, decay


# ---------------------------------------------------------------------------------------------------------------
# the orthonormal complement of span(U) holding the new directions of A
# ---------------------------------------------------------------------------------------------------------------


def _times_inverse_transpose(xp: Any, P: Any, L: Any) -> Any:
    """``P L⁻ᵀ`` for a small lower-triangular ``L`` (c×c) and a tall ``P`` (d×c).

    Inverts ``L`` (``c³/3`` flops) and multiplies (one GEMM): a triangular solve with ``d`` right-hand sides runs
    several times slower than the GEMM on OpenBLAS, and the Cholesky factors here are well conditioned (the Gram
    matrix is shifted, or close to the identity).
    """
    eye = xp.eye(L.shape[0], dtype=L.dtype, device=device_of(L))
    L_inv = solve_triangular(xp, L, eye, lower=True)
    return xp.matmul(P, xp.matrix_transpose(L_inv))


def _complement(xp: Any, U: Any, A: Any) -> tuple[Any, Any, Any]:
    """Orthonormal ``Q ⟂ span(U)`` and coefficients with ``A = U C + Q R`` (up to rounding).

    Parameters
    ----------
    xp : module
        Namespace.
    U : array of shape (d, k)
        Orthonormal columns.
    A : array of shape (d, c)
        The update's factor.

    Returns
    -------
    Q : array of shape (d, p)
        Orthonormal columns, orthogonal to ``U``; ``p ≤ min(c, d − k)`` is the numerical rank of ``(I − UUᵀ) A``.
    C : array of shape (k, c)
        ``Uᵀ A`` (with the re-orthogonalization corrections).
    R : array of shape (p, c)
        ``Qᵀ A``.
    """
    d, c = A.shape
    dtype, device = A.dtype, device_of(A)
    Ut = xp.matrix_transpose(U)
    # noise floor of a d×c Gram matrix relative to its norm (typical, not worst-case, rounding growth)
    floor = math.sqrt(d * max(c, 1)) * eps(xp, dtype)

    C = xp.matmul(Ut, A)
    P = A - xp.matmul(U, C)
    G = xp.matmul(xp.matrix_transpose(P), P)
    empty = (P[:, :0], C, xp.zeros((0, c), dtype=dtype, device=device))
    if c == 0:
        return empty
    trace = float(xp.sum(xp.linalg.diagonal(G)))  # ‖P‖_F²
    norm_a2 = float(xp.sum(C * C)) + trace  # ‖A‖_F² (Pythagoras)
    if not trace > (floor * floor) * norm_a2:  # P is rounding noise: A lies in span(U)
        return empty
    # a new direction carrying less than this much of A is dropped as noise
    min_weight = floor * math.sqrt(norm_a2)

    # pass 1, shifted: Q R = P + O(eps‖P‖) whatever the conditioning, and cond(Q) ≤ (floor)^(-1/2)
    eye = xp.eye(c, dtype=dtype, device=device)
    try:
        L = cholesky(xp, G + (floor * trace) * eye, name="the shifted Gram matrix")
        Q = _times_inverse_transpose(xp, P, L)
        R = xp.matrix_transpose(L)
    except ValueError:  # rounding defeated the shift: the eigendecomposition cannot fail
        g, E = eigh(xp, G)
        scale = xp.sqrt(xp.clip(g, min=0.0) + floor * trace)
        Q = xp.matmul(P, E) / scale[None, :]
        R = scale[:, None] * xp.matrix_transpose(E)

    for it in range(_MAX_CLEANUP_PASSES):
        # re-orthogonalize against U ("twice is enough"), folding the coefficients into C
        Y = xp.matmul(Ut, Q)
        Q = Q - xp.matmul(U, Y)
        C = C + xp.matmul(Y, R)
        G = xp.matmul(xp.matrix_transpose(Q), Q)
        m = G.shape[0]
        if it == 0 and float(xp.linalg.vector_norm(G - xp.eye(m, dtype=dtype, device=device))) <= 0.5:
            # the usual case: Q is nearly orthonormal, so plain CholeskyQR finishes the job (cond(G) ≤ 3)
            L = cholesky(xp, G, name="the Gram matrix of the complement")
            Q = _times_inverse_transpose(xp, Q, L)
            R = xp.matmul(xp.matrix_transpose(L), R)
            break
        # rank-revealing pass: drop directions at the Gram noise floor, and those carrying a negligible part of A
        # (the remains of directions inside span(U)); both hold O(floor·‖A‖) of A
        g, E = eigh(xp, G)
        ER = xp.matmul(xp.matrix_transpose(E), R)
        weight = xp.sqrt(xp.clip(g, min=0.0)) * xp.linalg.vector_norm(ER, axis=1)
        keep = xp.nonzero((g > floor * xp.max(g)) & (weight > min_weight))[0]
        p = int(keep.shape[0])
        if p == 0:
            return empty
        g, E, ER = xp.take(g, keep, axis=0), xp.take(E, keep, axis=1), xp.take(ER, keep, axis=0)
        root = xp.sqrt(g)
        Q = xp.matmul(Q, E) / root[None, :]
        R = root[:, None] * ER
        if bool(xp.min(g) >= _WELL_CONDITIONED * xp.max(g)):
            break
    return Q, C, R


# ---------------------------------------------------------------------------------------------------------------
# public updates
# ---------------------------------------------------------------------------------------------------------------


def brand_update(U: Any, S: Any, Vh: Any, A: Any, B: Any, *, rank: int | None = None) -> SVDResult:
    """Thin SVD of ``U diag(S) Vh + A Bᵀ`` by Brand's algorithm.

    ``U diag(S) Vh + A Bᵀ = [U Q_A] (blockdiag(diag(S), 0) + [C_A; R_A] [C_B; R_B]ᵀ) [V Q_B]ᵀ``, an SVD of the small
    core, then a rotation of the bases (Brand 2006; Puiu 2022, Alg. 2).

    Parameters
    ----------
    U : array of shape (m, k)
        Left singular vectors of the current matrix (orthonormal columns; not checked).
    S : array of shape (k,)
        Its singular values (any real weights are accepted: ``U diag(S) Vh`` need not be an SVD in order).
    Vh : array of shape (k, n)
        Right singular vectors (orthonormal rows; not checked).
    A : array of shape (m, c)
        Left factor of the update.
    B : array of shape (n, c)
        Right factor of the update.
    rank : int, optional
        Keep only the ``rank`` largest singular triplets (the best rank-``rank`` approximation of the updated
        matrix).  ``None`` keeps all of them.

    Returns
    -------
    SVDResult
        ``(U, S, Vh)`` of shapes ``(m, r)``, ``(r,)``, ``(r, n)`` with ``r = min(rank, k + p)``, where ``p ≤ c`` is
        the numerical rank of the update outside the current subspaces.  Singular values descending, signs fixed by
        ``svd_flip`` (largest entry of each left vector positive).  Same namespace, device and dtype as the inputs.

    Raises
    ------
    ValueError
        On inconsistent shapes, a non-positive ``rank``, or NaN/infinity in the inputs.
    TypeError
        On non-floating or mixed dtypes, or arrays from different libraries or devices.

    Notes
    -----
    Cost ``O((m + n)(k + c)² + (k + c)³)``; no ``m×n`` matrix is formed.  The complement bases come from GEMM-only
    Gram passes with re-orthogonalization (see the module docstring), not from Householder QR.

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg.brand import brand_update
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((30, 4)) @ rng.standard_normal((4, 20))
    >>> U, S, Vh = np.linalg.svd(X, full_matrices=False)
    >>> A, B = rng.standard_normal((30, 2)), rng.standard_normal((20, 2))
    >>> res = brand_update(U[:, :4], S[:4], Vh[:4], A, B)
    >>> res.S.shape
    (6,)
    >>> bool(np.allclose(res.S, np.linalg.svd(X + A @ B.T, compute_uv=False)[:6]))
    True
    """
    xp, _, rank = _validate_update(U, S, Vh, A, B, rank)
    k = U.shape[1]
    QA, CA, RA = _complement(xp, U, A)
    QB, CB, RB = _complement(xp, xp.matrix_transpose(Vh), B)
    KA = xp.concat([CA, RA], axis=0)
    KB = xp.concat([CB, RB], axis=0)
    core = xp.matmul(KA, xp.matrix_transpose(KB))
    ka, kb = core.shape
    core = core + _embed_diag(xp, S, ka, kb)
    Um, s, Vhm = xp.linalg.svd(core, full_matrices=False)
    r = s.shape[0] if rank is None else min(rank, s.shape[0])
    Um, s, Vhm = Um[:, :r], s[:r], Vhm[:r, :]
    U_new = xp.matmul(U, Um[:k, :]) + xp.matmul(QA, Um[k:, :])
    Vh_new = xp.matmul(Vhm[:, :k], Vh) + xp.matmul(Vhm[:, k:], xp.matrix_transpose(QB))
    signs = _largest_entry_signs(xp, U_new)
    U_new, Vh_new = U_new * signs[None, :], Vh_new * signs[:, None]
    return SVDResult(U_new, s, Vh_new)


def brand_update_sym(U: Any, w: Any, A: Any, *, rank: int | None = None, decay: float = 1.0) -> EighResult:
    """Eigendecomposition of ``decay·U diag(w) Uᵀ + A Aᵀ`` by the symmetric Brand update.

    ``decay·U diag(w) Uᵀ + A Aᵀ = [U Q] (blockdiag(decay·diag(w), 0) + [C; R] [C; R]ᵀ) [U Q]ᵀ``, an ``eigh`` of the
    small core, then a rotation of the basis (Puiu 2022, Alg. 3).  In B-KFAC (Puiu, Alg. 4) ``decay`` is the EMA
    factor ``ρ`` and ``A = √(1 − ρ)·(batch statistics)``, e.g. ``√((1 − ρ)/n)·Xᵀ`` for ``n`` activations ``X``.

    Parameters
    ----------
    U : array of shape (d, k)
        Eigenvectors of the current low-rank representation (orthonormal columns; not checked).  ``k = 0`` starts
        from the zero matrix.
    w : array of shape (k,)
        Its eigenvalues (any real values).
    A : array of shape (d, n)
        Factor of the symmetric update ``A Aᵀ``.
    rank : int, optional
        Keep only the ``rank`` largest (algebraically) eigenpairs — the best rank-``rank`` approximation when the
        updated matrix is positive semi-definite.  ``None`` keeps all of them.
    decay : float, default 1.0
        Factor ``≥ 0`` applied to the current matrix.

    Returns
    -------
    EighResult
        ``(eigenvalues, eigenvectors)`` of shapes ``(r,)`` and ``(d, r)`` with ``r = min(rank, k + p)``, where
        ``p ≤ n`` is the numerical rank of ``A`` outside ``span(U)``.  Eigenvalues descending; each eigenvector's
        largest-magnitude entry is positive.  Same namespace, device and dtype as the inputs.

    Raises
    ------
    ValueError
        On inconsistent shapes, a non-positive ``rank``, a negative or non-finite ``decay``, or NaN/infinity in the
        inputs.
    TypeError
        On non-floating or mixed dtypes, or arrays from different libraries or devices.

    Notes
    -----
    Cost ``O(d (k + n)² + (k + n)³)``: GEMMs with ``d×(k+n)`` blocks and an ``eigh`` of size ``k + n``; no ``d×d``
    matrix and no Householder QR.  Orthonormality is kept to working precision over many updates by the
    re-orthogonalized complement (see the module docstring).

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg.brand import brand_update_sym
    >>> rng = np.random.default_rng(0)
    >>> d, rho = 50, 0.9
    >>> G = rng.standard_normal((d, 3))
    >>> w, U = np.linalg.eigh(G @ G.T)
    >>> w, U = w[::-1][:3], U[:, ::-1][:, :3]
    >>> A = np.sqrt(1 - rho) * rng.standard_normal((d, 2))
    >>> res = brand_update_sym(U, w, A, decay=rho)
    >>> exact = np.linalg.eigvalsh(rho * G @ G.T + A @ A.T)[::-1][:5]
    >>> bool(np.allclose(res.eigenvalues, exact))
    True
    """
    xp, _, rank, decay = _validate_update_sym(U, w, A, rank, decay)
    k = U.shape[1]
    Q, C, R = _complement(xp, U, A)
    K = xp.concat([C, R], axis=0)
    core = xp.matmul(K, xp.matrix_transpose(K))
    m = core.shape[0]
    core = core + _embed_diag(xp, decay * w, m, m)
    g, E = eigh(xp, core)
    g, E = xp.flip(g, axis=0), xp.flip(E, axis=1)
    r = m if rank is None else min(rank, m)
    g, E = g[:r], E[:, :r]
    V = xp.matmul(U, E[:k, :]) + xp.matmul(Q, E[k:, :])
    V = V * _largest_entry_signs(xp, V)[None, :]
    return EighResult(g, V)


# ---------------------------------------------------------------------------------------------------------------
# B-KFAC helpers: light correction (Puiu Alg. 6) and spectrum continuation (Puiu §3.5)
# ---------------------------------------------------------------------------------------------------------------


def brand_light_correction(U: Any, w: Any, M: Any, n_correct: int, *, seed: Any = None) -> EighResult:
    """Light correction of a low-rank EVD against the exact matrix on a random subset of its modes (Puiu Alg. 6).

    With ``J`` a random subset of ``n_correct`` of the ``r`` columns, ``U_J`` those columns:
    ``U_Jᵀ M U_J = E diag(λ) Eᵀ``, then ``U_J ← U_J E``, ``w_J ← λ``; the other modes are kept.  Afterwards
    ``U_Jᵀ (M − U diag(w) Uᵀ) U_J = 0``, so ``‖M − U diag(w) Uᵀ‖_F`` can only decrease (Puiu, footnote 11).  Used by
    B-KFAC-C (Puiu Alg. 7) every ``T_correct`` steps on the exact EMA K-factor ``M``.

    Parameters
    ----------
    U : array of shape (d, r)
        Eigenvectors of the low-rank representation (orthonormal columns; not checked).
    w : array of shape (r,)
        Its eigenvalues.
    M : array of shape (d, d), or operator
        The exact symmetric matrix (the EMA K-factor).  Anything with ``.shape == (d, d)`` and ``M @ X`` for a
        ``(d, n_correct)`` array ``X`` (e.g. a :class:`~kronalg.KronOperator`) is accepted.
    n_correct : int
        Number of modes to correct, ``1 ≤ n_correct ≤ r`` (Puiu uses ``n_correct = φ·r`` with ``φ ≤ 0.5``).
    seed : None, int or numpy.random.Generator
        Randomness for the choice of modes (drawn with NumPy, then moved to the device).

    Returns
    -------
    EighResult
        ``(eigenvalues, eigenvectors)`` of shapes ``(r,)`` and ``(d, r)``, the corrected representation, reordered
        so that the eigenvalues are descending.

    Raises
    ------
    ValueError
        On inconsistent shapes, ``n_correct`` outside ``[1, r]``, or NaN/infinity in ``U`` or ``w``.
    TypeError
        On non-floating or mixed dtypes, arrays from different libraries or devices, or an ``M`` without a shape.

    Notes
    -----
    Cost: one product of ``M`` with ``n_correct`` vectors (``O(d² n_correct)`` for a dense ``M``), an ``eigh`` of size
    ``n_correct`` and ``O(d r)`` data movement.  Random rather than leading modes are corrected because B-KFAC only
    underestimates eigenvalues, so its leading modes need not be the matrix's (Puiu §3.4).

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg.brand import brand_light_correction
    >>> rng = np.random.default_rng(0)
    >>> G = rng.standard_normal((40, 40))
    >>> M = G @ G.T
    >>> U = np.linalg.qr(rng.standard_normal((40, 6)))[0]
    >>> w = np.ones(6)
    >>> res = brand_light_correction(U, w, M, 3, seed=0)
    >>> err = lambda w, U: np.linalg.norm(M - (U * w) @ U.T)
    >>> bool(err(*res) <= err(w, U))
    True
    """
    arrays = [U, w] + ([M] if is_array(M) else [])
    xp, device = namespace_and_device(*arrays)
    check_matrix(U, "U")
    _check_vector(w, "w")
    d, r = U.shape
    _check_dim("w", w.shape[0], r, "length r = U.shape[1] =")
    shape = getattr(M, "shape", None)
    if shape is None:
        raise TypeError(f"`M` must be an array or an operator with a `shape`, got {type(M).__name__}")
    if tuple(shape) != (d, d):
        raise ValueError(f"`M` must have shape (d, d) = {(d, d)} with d = U.shape[0], got {tuple(shape)}")
    if isinstance(n_correct, bool) or not isinstance(n_correct, numbers.Integral):
        raise TypeError(f"`n_correct` must be an int, got {type(n_correct).__name__}")
    if not 1 <= n_correct <= r:
        raise ValueError(f"`n_correct` must be in [1, r] = [1, {r}] with r = U.shape[1], got {n_correct}")
    named = {"U": U, "w": w} | ({"M": M} if is_array(M) else {})
    _check_arrays(xp, named)
    if not is_array(M) and getattr(M, "dtype", U.dtype) != U.dtype:
        raise TypeError(f"`M` has dtype {M.dtype} but `U` has dtype {U.dtype}; pass one dtype")
    _check_finite_all(xp, {"U": U, "w": w})

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    chosen = np.sort(rng.choice(r, size=int(n_correct), replace=False))
    rest = np.setdiff1d(np.arange(r), chosen)
    idx_j = asarray_on(xp, chosen, dtype=xp.int64, device=device)
    idx_k = asarray_on(xp, rest, dtype=xp.int64, device=device)

    UJ = xp.take(U, idx_j, axis=1)
    MS = xp.matmul(xp.matrix_transpose(UJ), M @ UJ)
    MS = 0.5 * (MS + xp.matrix_transpose(MS))
    lam, E = eigh(xp, MS)
    UJ = xp.matmul(UJ, E)

    vals = xp.concat([xp.take(w, idx_k, axis=0), lam], axis=0)
    vecs = xp.concat([xp.take(U, idx_k, axis=1), UJ], axis=1)
    order = xp.argsort(vals, descending=True, stable=True)
    vals = xp.take(vals, order, axis=0)
    vecs = xp.take(vecs, order, axis=1)
    return EighResult(vals, vecs * _largest_entry_signs(xp, vecs)[None, :])


class ContinuedSpectrum(NamedTuple):
    """A low-rank spectrum with its missing tail continued (see :func:`spectrum_continuation`).

    Attributes
    ----------
    eigenvalues : array of shape (k,)
        The shifted eigenvalues ``w − μ`` (the smallest is zero).
    damping : array of shape ()
        The increased damping ``λ + μ``.
    """

    eigenvalues: Any
    damping: Any


def spectrum_continuation(eigenvalues: Any, damping: float = 0.0) -> ContinuedSpectrum:
    """Continue a truncated spectrum by setting the ``d − k`` missing eigenvalues to the smallest kept one (Puiu §3.5).

    With ``μ = min_i w_i``: ``w ← w − μ`` and ``λ ← λ + μ``, so that ``U diag(w − μ) Uᵀ + (λ + μ) I`` keeps the
    eigenvalues ``w_i + λ`` on ``span(U)`` and gives ``μ + λ`` (instead of ``λ``) to its orthogonal complement.  The
    damped inverse is then applied as usual, ``(U diag(w') Uᵀ + λ' I)⁻¹ = U[(w' + λ')⁻¹ − 1/λ']Uᵀ + I/λ'``
    (Puiu Alg. 1, lines 16–17).  Over-estimating the tail gives more conservative natural-gradient steps.

    Parameters
    ----------
    eigenvalues : array of shape (k,)
        Eigenvalues ``w`` of the low-rank representation ``U diag(w) Uᵀ`` of a positive semi-definite K-factor.
    damping : float or array of shape (), default 0.0
        The damping ``λ`` added as ``λ I``.

    Returns
    -------
    ContinuedSpectrum
        ``(eigenvalues, damping)``: ``w − μ`` of shape ``(k,)`` and ``λ + μ`` as a 0-d array, in the namespace,
        device and dtype of ``eigenvalues``.  ``μ`` is clipped at zero, so rounding-level negative eigenvalues never
        lower the damping.

    Raises
    ------
    ValueError
        If ``eigenvalues`` is not a non-empty 1-D array, or holds NaN/infinity.
    TypeError
        If ``eigenvalues`` is not a real floating array.

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg.brand import spectrum_continuation
    >>> w, lam = spectrum_continuation(np.array([5.0, 2.0, 0.5]), damping=1e-3)
    >>> w.tolist(), float(lam)
    ([4.5, 1.5, 0.0], 0.501)
    """
    xp, _ = namespace_and_device(eigenvalues)
    _check_vector(eigenvalues, "eigenvalues")
    if eigenvalues.shape[0] == 0:
        raise ValueError("`eigenvalues` must hold at least one eigenvalue, got shape (0,)")
    check_floating(xp, eigenvalues, "eigenvalues")
    check_finite(xp, eigenvalues, "eigenvalues")
    mu = xp.clip(xp.min(eigenvalues), min=0.0)
    return ContinuedSpectrum(eigenvalues - mu, mu + damping)


# ---------------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------------


def _embed_diag(xp: Any, v: Any, rows: int, cols: int) -> Any:
    """The ``rows×cols`` matrix with ``v`` (length ``k ≤ min(rows, cols)``) on the leading diagonal, zeros elsewhere."""
    k = v.shape[0]
    eye = xp.eye(rows, k, dtype=v.dtype, device=device_of(v))
    top = eye * v[None, :]
    if cols == k:
        return top
    return xp.concat([top, xp.zeros((rows, cols - k), dtype=v.dtype, device=device_of(v))], axis=1)


def _largest_entry_signs(xp: Any, V: Any) -> Any:
    """``±1`` per column making its largest-magnitude entry positive (the ``svd_flip`` rule; ties give ``+1``).

    Two column reductions instead of an ``argmax`` of ``|V|``, which NumPy runs slowly down the columns of a
    C-ordered array.
    """
    if V.shape[0] == 0:
        return xp.ones((V.shape[1],), dtype=V.dtype, device=device_of(V))
    return 1.0 - 2.0 * xp.astype(-xp.min(V, axis=0) > xp.max(V, axis=0), V.dtype)
