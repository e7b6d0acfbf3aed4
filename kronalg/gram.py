"""The exact Gram route to the KPSVD of an implicit sum, in coefficient space.

For rank-1 samples ``X_n = g_n a_nᵀ`` the rearranged Fisher is
``R(F) = Σ_n w_n vec(g_n g_nᵀ) vec(a_n a_nᵀ)ᵀ = P W Qᵀ`` whose Gram matrices are
Hadamard squares, ``PᵀP = (G Gᵀ)∘(G Gᵀ)`` and ``QᵀQ = (A Aᵀ)∘(A Aᵀ)``.  Every
singular vector of ``R(F)`` lies in ``range(P)`` / ``range(Q)``, so writing
``u = P x`` and ``v = Q y`` the SVD becomes a problem on ``N×N`` matrices
(``N = n`` samples): ``Rᵀ u = Q (W PᵀP x)`` and ``R v = P (W QᵀQ y)``.  We run a
block subspace iteration on those coefficients, with a Rayleigh–Ritz step in
the Gram metrics, to the requested tolerance, then form each factor with one
weighted GEMM, ``mat(P x) = Gᵀ diag(x) G`` — the cost of a K-FAC factor.

The same holds for samples over ``T`` locations (``X_n = Σ_t g_nt a_ntᵀ``)
with ``N = n·T²`` coefficients, and for a :class:`~kronalg.KronSum` with a few
terms (``N`` = number of terms, ``W = I``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

from ._backend import eps
from ._linalg import default_tol, random_normal
from .operators import KronSum, SampleKronSum
from .results import ConvergenceInfo, ConvergenceWarning

__all__ = ["GramProblem", "gram_problem", "gram_svd", "GRAM_MAX_COEFFICIENTS"]

#: Largest coefficient dimension ``N`` for which the Gram route is attempted.
GRAM_MAX_COEFFICIENTS = 4096


@dataclasses.dataclass(frozen=True)
class GramProblem:
    """``R = P C Qᵀ`` known through ``K_P = PᵀP``, ``K_Q = QᵀQ``, the core ``C`` and the maps ``x ↦ mat(P x)``.

    The core is ``C = diag(w) − X_c diag(s_c) Y_cᵀ``: the sum's weights, minus known terms
    ``σ (P x)(Q y)ᵀ`` already removed (deflation, or a K-FAC term ``P w wᵀ Qᵀ``).

    Attributes
    ----------
    KP, KQ : array of shape (N, N)
        Gram matrices of the columns of ``P`` and ``Q``.
    w : array of shape (N,)
        Diagonal of the core.
    left, right : callable
        Map coefficients of shape ``(k, N)`` to the matrices ``mat(P x)`` of
        shape ``(k, p, q)`` (resp. ``mat(Q y)`` of shape ``(k, r, s)``).
    removed : tuple of arrays or None
        ``(X_c, s_c, Y_c)`` of shapes ``(N, j)``, ``(j,)``, ``(N, j)``: the low-rank part taken from the core.
    """

    xp: Any
    device: Any
    KP: Any
    KQ: Any
    w: Any
    left: Callable[[Any], Any]
    right: Callable[[Any], Any]
    removed: tuple[Any, Any, Any] | None = None

    @property
    def size(self) -> int:
        """``N``, the number of coefficients."""
        return self.KP.shape[0]

    def core(self, M: Any) -> Any:
        """``C M`` for ``M`` of shape ``(N, j)``."""
        out = self.w[:, None] * M
        if self.removed is not None:
            Xc, sc, Yc = self.removed
            out = out - Xc @ (sc[:, None] * (self.xp.matrix_transpose(Yc) @ M))
        return out

    def core_t(self, M: Any) -> Any:
        """``Cᵀ M`` for ``M`` of shape ``(N, j)``."""
        out = self.w[:, None] * M
        if self.removed is not None:
            Xc, sc, Yc = self.removed
            out = out - Yc @ (sc[:, None] * (self.xp.matrix_transpose(Xc) @ M))
        return out

    def without(self, X: Any, S: Any, Y: Any) -> GramProblem:
        """The problem of ``R − Σ σ_i (P x_i)(Q y_i)ᵀ`` (columns of ``X``, ``Y``; weights ``S``)."""
        xp = self.xp
        if self.removed is not None:
            Xc, sc, Yc = self.removed
            X, S, Y = xp.concat([Xc, X], axis=1), xp.concat([sc, S]), xp.concat([Yc, Y], axis=1)
        return dataclasses.replace(self, removed=(X, S, Y))

    def fro_norm_sq(self) -> float:
        """``‖R‖_F² = tr(C K_Q Cᵀ K_P)``, from the Grams (``O(N²)`` without removed terms, else ``O(N³)``)."""
        xp = self.xp
        if self.removed is None:
            return float(xp.sum((self.w[:, None] * self.KP) * (self.KQ * self.w[None, :])))
        # tr(Cᵀ K_P C K_Q) = Σ (K_P C) ∘ (C K_Q), with K_P C = (Cᵀ K_P)ᵀ
        return float(xp.sum(xp.matrix_transpose(self.core_t(self.KP)) * self.core(self.KQ)))


def _location_gram(xp: Any, F: Any) -> tuple[Any, Callable[[Any], Any]]:
    """``K = PᵀP`` for columns ``vec(f_nt f_nt'ᵀ)`` and the map ``x ↦ Σ x_ntt' f_nt f_nt'ᵀ``.

    ``F`` has shape ``(n, T, d)``.  ``K[(n,t,t'), (m,s,s')] = ⟨f_nt, f_ms⟩⟨f_nt', f_ms'⟩``.
    """
    n, T, d = F.shape
    if T == 1:
        F2 = F[:, 0, :]
        gram = F2 @ xp.matrix_transpose(F2)

        def combine(x: Any) -> Any:  # Σ_n x_n f_n f_nᵀ = Fᵀ diag(x) F, one 2-D GEMM per vector
            Ft = xp.matrix_transpose(F2)
            return xp.stack([Ft @ (x[i, :][:, None] * F2) for i in range(x.shape[0])])

        return gram * gram, combine
    Fc = xp.reshape(F, (n * T, d))
    g4 = xp.reshape(Fc @ xp.matrix_transpose(Fc), (n, T, n, T))
    K = xp.reshape(g4[:, :, None, :, :, None] * g4[:, None, :, :, None, :], (n * T * T, n * T * T))

    def combine_locations(x: Any) -> Any:  # Σ_n F_nᵀ Xc_n F_n without an (n, d, d) stack
        k = x.shape[0]
        x4 = xp.reshape(x, (k, n, T, T))
        Fct = xp.matrix_transpose(Fc)  # Σ_n F_nᵀ (Xc_n F_n) as one GEMM per vector
        return xp.stack([Fct @ xp.reshape(xp.matmul(x4[i, ...], F), (n * T, d)) for i in range(k)])

    return K, combine_locations


def gram_problem(M: KronSum | SampleKronSum) -> GramProblem:
    """Set up the coefficient-space problem of ``R(M)`` for an implicit sum.

    Parameters
    ----------
    M : KronSum or SampleKronSum
        The implicit sum.

    Returns
    -------
    GramProblem
    """
    xp = M.xp
    if isinstance(M, KronSum):
        As, Bs = M.stacked
        k = As.shape[0]
        Af, Bf = xp.reshape(As, (k, -1)), xp.reshape(Bs, (k, -1))

        def left(x: Any) -> Any:
            return xp.reshape(x @ Af, (x.shape[0], *M.a_shape))

        def right(y: Any) -> Any:
            return xp.reshape(y @ Bf, (y.shape[0], *M.b_shape))

        ones = xp.ones((k,), dtype=M.dtype, device=M.device)
        return GramProblem(xp, M.device, Af @ xp.matrix_transpose(Af), Bf @ xp.matrix_transpose(Bf), ones, left, right)
    G, A = M.compact_factors()
    n, T = G.shape[0], G.shape[1]
    KP, left = _location_gram(xp, G)
    KQ, right = _location_gram(xp, A)
    w = xp.reshape(xp.broadcast_to(M.weights[:, None], (n, T * T)), (n * T * T,))
    return GramProblem(xp, M.device, KP, KQ, w, left, right)


def _orthonormalize(xp: Any, K: Any, X: Any, KX: Any | None = None, *, scale: float | None = None) -> tuple[Any, Any]:
    """Columns of ``X`` made orthonormal in the metric ``K`` (``XᵀKX = I``); null directions dropped.

    Directions whose squared ``K``-norm is below ``N·eps·scale`` are dropped
    (``scale`` defaults to the largest squared norm among the columns, and should
    be the norm *before* any orthogonalization that cancelled them).
    Returns the new ``X`` and ``K X``.
    """
    KX = K @ X if KX is None else KX
    for _ in range(2):  # twice is enough
        gram = xp.matrix_transpose(X) @ KX
        lam, E = xp.linalg.eigh(0.5 * (gram + xp.matrix_transpose(gram)))
        ref = float(lam[-1]) if scale is None else max(scale, float(lam[-1]))
        scale = None  # the second pass measures the already normalized block
        cutoff = ref * X.shape[0] * eps(xp, X.dtype) if X.shape[1] else 0.0
        keep = int(xp.count_nonzero(lam > max(cutoff, 0.0))) if float(lam[-1]) > 0 else 0
        inv_root = 1.0 / xp.sqrt(lam[lam.shape[0] - keep :])
        E = E[:, E.shape[1] - keep :] * inv_root[None, :]
        X, KX = X @ E, KX @ E
        if keep == 0:
            break
        if float(lam[-1]) / float(lam[lam.shape[0] - keep]) < 1e4:
            break  # well conditioned: one pass was enough
    return X, KX


def _gram_scale(xp: Any, K: Any) -> float:
    """A power of two near the largest diagonal entry of a Gram matrix (1 for a zero matrix): exact to divide by."""
    top = float(xp.max(xp.abs(xp.linalg.diagonal(K)))) if K.shape[0] else 0.0
    if not (top > 0 and math.isfinite(top)):
        return 1.0
    return 2.0 ** round(math.log2(top))


def gram_svd(
    problem: GramProblem, k: int, *, tol: float | None = None, maxiter: int = 300, seed: int = 0
) -> tuple[Any, Any, Any, ConvergenceInfo]:
    """Top-``k`` singular triplets of ``R = P W Qᵀ`` from its Gram matrices.

    Block Krylov iteration with ``T = C K_Q Cᵀ K_P`` (``R Rᵀ`` in coefficients,
    self-adjoint in the ``K_P`` metric), bases orthonormal in that metric, a
    Rayleigh–Ritz SVD of ``(P X)ᵀ R (Q Y)`` and a thick restart from the leading
    Ritz vectors; stops when every triplet has ``‖R v − σ u‖ ≤ tol·σ_1``.  The
    first start vector is ``w`` (the K-FAC factor), the rest are seeded random.

    Parameters
    ----------
    problem : GramProblem
        The coefficient-space problem.
    k : int
        Number of triplets.
    tol : float, optional
        Relative residual; default 1e-10 (float64) / 1e-5 (float32).
    maxiter : int
        Cap on restarts.
    seed : int
        Seed of the start block.

    Returns
    -------
    X : array of shape (N, k)
        Coefficients of the left singular vectors, ``u_i = P x_i``.
    S : array of shape (k,)
        Singular values, descending (zeros past the rank of ``R``).
    Y : array of shape (N, k)
        Coefficients of the right singular vectors, ``v_i = Q y_i``.
    info : ConvergenceInfo
    """
    xp, KP, KQ, w = problem.xp, problem.KP, problem.KQ, problem.w
    N, dtype = problem.size, KP.dtype
    # Work with K_P/s_P and K_Q/s_Q (P, Q scaled to unit-size columns): the iteration forms products of squared
    # K-norms, which underflow in float32 for blocks of tiny gradients (s ~ 1e-16) unless the scale is divided out.
    # The core is scale-free; coefficients and singular values are mapped back at the end.
    s_p, s_q = _gram_scale(xp, KP), _gram_scale(xp, KQ)
    KP, KQ = KP / s_p, KQ / s_q
    tol = default_tol(xp, dtype) if tol is None else tol
    b = min(N, k + 6)
    X0 = random_normal(xp, (N, b), dtype=dtype, device=problem.device, seed=seed)
    if problem.removed is None:  # first column x = w: u ∝ Σ w_n g_n g_nᵀ, the K-FAC factor, close to the answer
        X0 = xp.concat([w[:, None], X0[:, 1:]], axis=1)
    X, KX = _orthonormalize(xp, KP, X0)
    krylov = min(N, max(4 * b, 32))
    residuals: list[float] = []
    converged = False
    iterations, products, history = 0, 0, []
    floor = 100 * math.sqrt(eps(xp, dtype))  # what the Gram metric can resolve
    S = Ub = Vb = Y = Qb = None
    for _ in range(maxiter):
        iterations += 1
        if X.shape[1] == 0:  # R = 0
            converged = True
            break
        # block Krylov space of T = C K_Q Cᵀ K_P (self-adjoint in the K_P metric; eigenvalues σ²)
        Qs, KQs, KZ = [X], [KX], KX
        while sum(q.shape[1] for q in Qs) < krylov:
            Z = problem.core(KQ @ problem.core_t(KZ))
            KZ = KP @ Z
            products += Z.shape[1]
            size = float(xp.max(xp.sum(Z * KZ, axis=0)))  # squared K_P-norm before orthogonalization
            Qcat, KQcat = xp.concat(Qs, axis=1), xp.concat(KQs, axis=1)
            for _ in range(2):  # twice is enough
                Z = Z - Qcat @ (xp.matrix_transpose(KQcat) @ Z)
            Z, KZ = _orthonormalize(xp, KP, Z, scale=size)  # K_P Z afresh: the cancellation spoiled KZ
            if Z.shape[1] == 0:  # invariant subspace: the space is exact
                break
            Qs.append(Z)
            KQs.append(KZ)
        Qb, KQb = xp.concat(Qs, axis=1), xp.concat(KQs, axis=1)
        # Rayleigh–Ritz: left space P Qb, right space Rᵀ P Qb = Q (Cᵀ K_P Qb)
        Y, _ = _orthonormalize(xp, KQ, problem.core_t(KQb))
        Zr = problem.core(KQ @ Y)  # R (Q Y) = P Zr
        KZr = KP @ Zr
        Ub, S, Vbh = xp.linalg.svd(xp.matrix_transpose(Qb) @ KZr, full_matrices=False)  # (P Qb)ᵀ R (Q Y)
        Vb = xp.matrix_transpose(Vbh)
        kk = min(k, S.shape[0])
        # residual of triplet i: R v_i − σ_i u_i = P (Zr vb_i − σ_i Qb ub_i); its norm² is zᵀ K_P z
        Ubk, Vbk, Sk = Ub[:, :kk], Vb[:, :kk], S[:kk]
        KRes = KZr @ Vbk - (KQb @ Ubk) * Sk[None, :]
        Res = Zr @ Vbk - (Qb @ Ubk) * Sk[None, :]
        res2 = xp.sum(Res * KRes, axis=0)
        sigma1 = float(S[0])
        rel = xp.sqrt(xp.clip(res2, 0.0, None)) / max(sigma1, 1e-300)
        residuals = [float(r) for r in rel]
        history.append(max(residuals))
        stalled = len(history) > 2 and history[-1] > 0.5 * history[-3] and history[-1] <= floor
        if sigma1 == 0.0 or history[-1] <= tol or stalled or Qb.shape[1] >= N:
            converged = converged or sigma1 == 0.0 or history[-1] <= tol or stalled or Qb.shape[1] >= N
            break
        nb = min(b, Ub.shape[1])  # thick restart from the leading Ritz vectors
        X, KX = Qb @ Ub[:, :nb], KQb @ Ub[:, :nb]
    if not converged:
        warnings.warn(
            f"gram_svd did not reach tol={tol:g} in {maxiter} iterations (residual {max(residuals):.2e})",
            ConvergenceWarning,
            stacklevel=3,
        )
    info = ConvergenceInfo(
        iterations=iterations, matvecs=products, converged=converged, residuals=tuple(residuals), tol=tol
    )
    if S is None or X.shape[1] == 0:
        zeros = xp.zeros((N, k), dtype=dtype, device=problem.device)
        return zeros, xp.zeros((k,), dtype=dtype, device=problem.device), zeros, info
    kk = min(k, S.shape[0])
    Xk, Yk, Sk = Qb @ (Ub[:, :kk] / math.sqrt(s_p)), Y @ (Vb[:, :kk] / math.sqrt(s_q)), S[:kk] * math.sqrt(s_p * s_q)
    if Sk.shape[0] < k:  # R has rank < k: pad with zero triplets
        pad = k - Sk.shape[0]
        Xk = xp.concat([Xk, xp.zeros((N, pad), dtype=dtype, device=problem.device)], axis=1)
        Yk = xp.concat([Yk, xp.zeros((N, pad), dtype=dtype, device=problem.device)], axis=1)
        Sk = xp.concat([Sk, xp.zeros((pad,), dtype=dtype, device=problem.device)])
    return Xk, Sk, Yk, info
