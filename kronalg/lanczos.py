"""Top-k singular triplets by restarted Golub–Kahan–Lanczos bidiagonalization.

The bidiagonalization works on the operator itself, never on ``AᵀA``, so small
singular values in the top ``k`` keep their accuracy relative to ``σ_1``.
After ``K`` steps it holds

    A V_K = U_K B_K,    Aᵀ U_K = V_K B_Kᵀ + β_K v_{K+1} e_Kᵀ

with orthonormal bases ``U_K`` (m×K), ``V_K`` (n×K) and a small upper
triangular ``B_K``.  For the SVD ``B_K = X Σ Yᵀ`` the Ritz triplets
``(σ_i, U_K x_i, V_K y_i)`` satisfy ``A ṽ_i = σ_i ũ_i`` exactly and
``‖Aᵀ ũ_i − σ_i ṽ_i‖ = |β_K|·|e_Kᵀ x_i|``, a residual read off the small problem.

Restarts follow the augmented scheme of Baglama & Reichel (the one in irlba):
the next bidiagonalization starts from the ``p`` best Ritz vectors and the
residual direction ``v_{K+1}``, and ``B`` becomes an "arrow" matrix
``[diag(σ_1..σ_p), ρ; 0, α_{p+1}, β_{p+1}, ...]`` with ``ρ_i = β_K e_Kᵀ x_i``.
Both bases are reorthogonalized in full by classical Gram–Schmidt applied
twice ("twice is enough"), as matrix–vector products with the stored bases.

References
----------
.. [1] J. Baglama and L. Reichel, "Augmented implicitly restarted Lanczos bidiagonalization
   methods", SIAM J. Sci. Comput. 27 (2005), 19–42.
.. [2] G. H. Golub and W. Kahan, "Calculating the singular values and pseudo-inverse of a
   matrix", SIAM J. Numer. Anal. 2 (1965).
.. [3] L. Giraud, J. Langou, M. Rozložník, "The loss of orthogonality in the Gram–Schmidt
   orthogonalization process", Comput. Math. Appl. 50 (2005) ("twice is enough").
.. [4] Koroko et al., "Efficient approximations of the Fisher matrix in neural networks using
   Kronecker product singular value decomposition", §3.2.2 and App. B.2.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np

from ._linalg import random_normal, svd_flip
from .operators import KronOperator
from .power import _check_maxiter, _check_operator, _check_seed, _check_tol, _start_vectors
from .results import ConvergenceInfo, ConvergenceWarning, SVDResult

__all__ = ["lanczos_svd"]

#: Default cap on restart cycles of :func:`lanczos_svd`.
LANCZOS_MAXITER = 1000

# A Lanczos coefficient below this multiple of eps·‖A‖ (after two Gram–Schmidt
# passes) means the new vector lies in the span of the basis: a breakdown.
_BREAKDOWN_FACTOR = 64.0


def _default_krylov_dim(k: int, small: int) -> int:
    return min(max(2 * k + 10, 20), small)


def _iv(
    op: Any, k: Any, krylov_dim: Any, tol: Any, maxiter: Any, x0: Any, seed: Any
) -> tuple[KronOperator, int, int, float, int, Any, Any, np.random.Generator]:
    """Input validation of :func:`lanczos_svd`."""
    A = _check_operator(op)
    m, n = A.shape
    small = min(m, n)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"`k` must be an int, got {type(k).__name__}")
    if not 1 <= k <= small:
        raise ValueError(f"`k` must satisfy 1 <= k <= min(m, n) = {small} for `op` of shape {A.shape}, got {k}")
    k = int(k)
    if krylov_dim is None:
        K = _default_krylov_dim(k, small)
    else:
        if isinstance(krylov_dim, bool) or not isinstance(krylov_dim, numbers.Integral):
            raise TypeError(f"`krylov_dim` must be an int or None, got {type(krylov_dim).__name__}")
        K = int(krylov_dim)
        if not k <= K <= small or (K == k and K < small):
            raise ValueError(
                f"`krylov_dim` must satisfy k < krylov_dim <= min(m, n) (or equal min(m, n) = {small}), "
                f"got krylov_dim={K} with k={k}"
            )
    tol = _check_tol(A, tol)
    maxiter = _check_maxiter(maxiter, LANCZOS_MAXITER)
    rng = _check_seed(seed)
    V0, U0 = _start_vectors(A, x0)
    return A, k, K, tol, maxiter, V0, U0, rng


class _Sides:
    """The operator seen from the smaller side: ``fwd`` maps the short space to the long one."""

    def __init__(self, A: KronOperator):
        m, n = A.shape
        self.A = A
        self.transposed = m < n  # work with Aᵀ so that the right space is the smaller one
        self.n, self.m = (m, n) if self.transposed else (n, m)
        self.matvecs = 0

    def fwd(self, x: Any) -> Any:
        self.matvecs += 1
        return self.A.rmatvec(x) if self.transposed else self.A.matvec(x)

    def bwd(self, y: Any) -> Any:
        self.matvecs += 1
        return self.A.matvec(y) if self.transposed else self.A.rmatvec(y)


def _cgs2(xp: Any, Q: Any, x: Any) -> Any:
    """Remove from ``x`` its components along the rows of ``Q`` (orthonormal), by two CGS passes."""
    if Q.shape[0] == 0:
        return x
    for _ in range(2):
        x = x - (Q @ x) @ Q
    return x


def _small_matrix(xp: Any, dtype: Any, device: Any, sig: Any, rho: Any, alphas: list, betas: list) -> Any:
    """Arrow-bidiagonal ``B`` of size ``J = p + len(alphas)``.

    ``B[:p, :p] = diag(sig)``, ``B[:p, p] = rho``, diagonal ``alphas`` after
    that, and superdiagonal ``B[i, i+1] = betas[i - p]`` for ``i ≥ p``.
    """
    p = sig.shape[0]
    J = p + len(alphas)
    diag = xp.concat([sig, xp.stack(alphas)]) if p else xp.stack(alphas)
    B = xp.eye(J, dtype=dtype, device=device) * diag[None, :]
    if len(betas):
        sup = xp.concat([xp.zeros((p + 1,), dtype=dtype, device=device), xp.stack(betas)])
        B = B + xp.eye(J, J, k=1, dtype=dtype, device=device) * sup[None, :]
    if p and J > p:
        col = xp.concat([rho, xp.zeros((J - p,), dtype=dtype, device=device)])
        e_p = xp.eye(J, dtype=dtype, device=device)[p, :]
        B = B + col[:, None] * e_p[None, :]
    return B


def _steps_to_next_check(history: tuple[int, float] | None, step: int, rel: float, tol: float, most: int) -> int:
    """Steps until the next convergence check: half the steps a geometric fit of the residual predicts."""
    if history is None or rel <= 0:
        return most
    step0, rel0 = history
    if rel >= rel0 or rel0 <= 0:
        return most
    rate = math.log(rel / rel0) / max(1, step - step0)  # < 0: log-decrease per step
    predicted = math.log(tol / rel) / rate
    return int(min(most, max(1, math.ceil(0.5 * predicted))))


def lanczos_svd(
    op: Any,
    k: int,
    *,
    krylov_dim: int | None = None,
    tol: float | None = None,
    maxiter: int | None = None,
    x0: Any = None,
    seed: int | np.random.Generator | None = None,
) -> SVDResult:
    """Top-``k`` singular triplets ``A V_k = U_k diag(S)``, ``Aᵀ U_k = V_k diag(S)`` by restarted Lanczos.

    Golub–Kahan–Lanczos bidiagonalization of the operator with full
    reorthogonalization of both bases and augmented (thick) restarts
    (Baglama & Reichel): each cycle extends the bidiagonalization to
    ``krylov_dim`` steps, and a restart keeps the best Ritz vectors plus the
    residual direction.  A triplet has converged when
    ``‖Aᵀ u_i − σ_i v_i‖ ≤ tol·σ_1`` (and ``A v_i = σ_i u_i`` holds by
    construction), estimated from the small problem without extra products.

    Parameters
    ----------
    op : array of shape (m, n) or operator
        A matrix of any supported backend, a kronalg operator (e.g.
        ``SampleKronSum.rearranged``), or an object with ``shape``, ``dtype``,
        ``matvec`` and ``rmatvec`` (``scipy.sparse.linalg.LinearOperator``, NumPy only).
    k : int
        Number of triplets, ``1 <= k <= min(m, n)``.
    krylov_dim : int, optional
        Size ``K`` of the bidiagonalization before a restart,
        ``k < K <= min(m, n)`` (or ``K = min(m, n)``, which is exact in one
        cycle).  Default ``min(max(2k + 10, 20), min(m, n))``.
    tol : float, optional
        Relative residual tolerance (relative to ``σ_1``); default ``1e-10``
        in float64, ``1e-5`` in float32.  The singular values are then
        accurate to about ``(tol·σ_1)²/gap``.
    maxiter : int, optional
        Maximum number of restart cycles, default 1000.
    x0 : array of shape (n,), SVDResult, or None
        Start vector of the right space; an :class:`SVDResult` (a previous
        answer) starts from the sum of its right singular vectors, whose
        Krylov space contains them all after as many steps as it has
        vectors, so a close answer converges in about that many steps.
        ``None`` draws a Gaussian vector from ``seed``.
    seed : int, numpy.random.Generator or None
        Seed of the random start and of the (rare) random vectors that
        replace a breakdown.

    Returns
    -------
    SVDResult
        ``U`` of shape (m, k), ``S`` of shape (k,) descending, ``Vh`` of shape
        (k, n), in the namespace, device and dtype of ``op``, signs fixed by
        ``svd_flip``.  ``.info`` holds the restart cycles (``iterations``),
        products with ``A`` or ``Aᵀ`` (``matvecs``), and each triplet's
        residual ``‖Aᵀ u_i − σ_i v_i‖ / σ_1``.

    Raises
    ------
    ValueError
        For ``k`` or ``krylov_dim`` out of range, a bad ``x0`` shape, or
        ``tol``/``maxiter`` out of range.
    TypeError
        For non-integer ``k``, non-floating input, or ``x0`` from another
        array library or device.

    Warns
    -----
    ConvergenceWarning
        When ``maxiter`` cycles do not meet ``tol``; the current Ritz triplets
        are returned with ``info.converged = False``.

    Notes
    -----
    When ``m < n`` the method runs on ``Aᵀ`` so that the right space is the
    smaller one; with ``krylov_dim = min(m, n)`` the bidiagonalization then
    spans it and is exact.  A breakdown (a coefficient ``β_j ≈ 0``: an
    invariant subspace) is continued with a random vector orthogonal to the
    basis, so exact low-rank operators are handled.  Convergence is checked
    a few times per cycle (costing an SVD of the small ``B`` and one host
    sync each), so a warm start can stop well before the cycle ends.

    References
    ----------
    .. [1] J. Baglama and L. Reichel, "Augmented implicitly restarted Lanczos
       bidiagonalization methods", SIAM J. Sci. Comput. 27 (2005).
    .. [2] Koroko et al., App. B.2 (Lanczos bidiagonalization).

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg.lanczos import lanczos_svd
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((60, 40)) @ np.diag(0.8 ** np.arange(40)) @ rng.standard_normal((40, 40))
    >>> res = lanczos_svd(A, 3, seed=0)
    >>> bool(np.allclose(res.S, np.linalg.svd(A, compute_uv=False)[:3]))
    True
    >>> res.U.shape, res.S.shape, res.Vh.shape
    ((60, 3), (3,), (3, 40))
    """
    A, k, K, tol, maxiter, V0, U0, rng = _iv(op, k, krylov_dim, tol, maxiter, x0, seed)
    xp, dtype, device = A.xp, A.dtype, A.device
    side = _Sides(A)
    n, m = side.n, side.m  # short (right) and long (left) dimensions of the working operator
    norm = xp.linalg.vector_norm
    eps = float(xp.finfo(dtype).eps)

    # ---- start vector in the short space -------------------------------------------
    if V0 is None:
        start = random_normal(xp, (n,), dtype=dtype, device=device, seed=rng)
    elif side.transposed:
        # the short space is A's left space: a previous answer's left vectors, or A x0
        start = xp.sum(U0, axis=1) if U0 is not None else side.bwd(V0[:, 0])
    else:
        start = xp.sum(V0, axis=1)

    def random_orthogonal(Q: Any, size: int) -> Any:
        x = random_normal(xp, (size,), dtype=dtype, device=device, seed=rng)
        x = _cgs2(xp, Q, x)
        return x / norm(x)

    Vt = xp.zeros((K + 1, n), dtype=dtype, device=device)  # right basis, one vector per row
    Ut = xp.zeros((K, m), dtype=dtype, device=device)  # left basis
    snorm = norm(start)
    if float(snorm) <= 0.0:  # e.g. A x0 = 0 in the transposed case, or summed vectors cancelling
        start = random_normal(xp, (n,), dtype=dtype, device=device, seed=rng)
        snorm = norm(start)
    Vt[0, :] = start / snorm

    zero = xp.zeros((), dtype=dtype, device=device)
    one = xp.ones((), dtype=dtype, device=device)
    anorm = zero  # running estimate of ‖A‖ (device), the scale of breakdown tests
    sig = xp.zeros((0,), dtype=dtype, device=device)  # kept Ritz values after a restart
    rho = xp.zeros((0,), dtype=dtype, device=device)  # coupling of kept vectors to the residual direction
    p = 0  # kept vectors
    keep = min(K - 1, k + max(2, (K - k) // 2)) if K > k else k
    check_every = max(1, (K - k) // 4)

    converged = False
    cycles = 0
    next_check = k
    steps = 0  # Lanczos steps over all cycles
    history: tuple[int, float] | None = None  # (global step, residual) of the previous check
    X = S = Yh = None
    J = 0
    last_beta = zero
    rel = math.inf
    while True:
        cycles += 1
        alphas: list[Any] = []
        betas: list[Any] = []
        for j in range(p, K):
            v = Vt[j, :]
            w = side.fwd(v)
            if j > p:
                w = w - betas[-1] * Ut[j - 1, :]
            elif p:
                w = w - rho @ Ut[:p, :]
            w = _cgs2(xp, Ut[:j, :], w)
            alpha = norm(w)
            u = w / xp.where(alpha > 0, alpha, one)
            z = _cgs2(xp, Vt[: j + 1, :], side.bwd(u) - alpha * v)
            beta = norm(z)
            anorm = xp.maximum(anorm, xp.maximum(alpha, beta))
            thr = _BREAKDOWN_FACTOR * eps * anorm
            # one host sync per step: 1 = α breakdown, 2 = β breakdown, 3 = both; NaN = bad operator
            code = float(xp.astype(alpha <= thr, dtype) + 2.0 * xp.astype(beta <= thr, dtype) + 0.0 * beta)
            if math.isnan(code):
                raise ValueError("`op` produced NaN or infinity; its products must be finite")
            if code in (1.0, 3.0):  # A v_j lies in span(U_{j}): continue with a random left vector
                alpha = zero
                u = random_orthogonal(Ut[:j, :], m)
                z = _cgs2(xp, Vt[: j + 1, :], side.bwd(u))
                beta = norm(z)
                code = float(2.0 * xp.astype(beta <= thr, dtype) + 0.0 * beta)
            Ut[j, :] = u
            if code >= 2.0:  # invariant subspace: β = 0, continue with a random right vector (if room)
                beta = zero
                z = random_orthogonal(Vt[: j + 1, :], n) if j + 1 < n else xp.zeros((n,), dtype=dtype, device=device)
            else:
                z = z / beta
            Vt[j + 1, :] = z
            alphas.append(alpha)
            J = j + 1
            steps += 1
            if J == K or J == next_check:
                B = _small_matrix(xp, dtype, device, sig, rho, alphas, betas)
                X, S, Yh = xp.linalg.svd(B, full_matrices=False)
                last_beta = beta
                res = xp.abs(beta * X[J - 1, :k])
                scale = xp.where(S[0] > 0, S[0], one)
                rel = float(xp.max(res) / scale)  # the convergence sync
                if rel <= tol:
                    converged = True
                    break
                next_check = J + _steps_to_next_check(history, steps, rel, tol, check_every)
                history = (steps, rel)
            betas.append(beta)
        if converged or cycles >= maxiter or keep >= K:  # keep >= K only when K = k = min(m, n)
            break
        next_check = keep + max(1, next_check - K)
        # ---- augmented restart: keep the best `keep` Ritz pairs and the residual direction ----
        p = keep
        rho = last_beta * X[K - 1, :p]
        sig = S[:p]
        Vnew = Yh[:p, :] @ Vt[:K, :]
        Unew = xp.matrix_transpose(X[:, :p]) @ Ut[:K, :]
        Vt[p, :] = Vt[K, :]
        Vt[:p, :] = Vnew
        Ut[:p, :] = Unew

    # ---- Ritz triplets of the working operator, then back to A -------------------------
    R = xp.matrix_transpose(X[:, :k]) @ Ut[:J, :]  # (k, m): left Ritz vectors of the working operator
    W = Yh[:k, :] @ Vt[:J, :]  # (k, n): right Ritz vectors
    Sk = S[:k]
    res = xp.abs(last_beta * X[J - 1, :k]) / xp.where(S[0] > 0, S[0], one)
    residuals = tuple(float(res[i]) for i in range(k))
    if side.transposed:  # Aᵀ w = σ r  ⇔  A r = σ w
        U, Vh = xp.matrix_transpose(W), R
    else:
        U, Vh = xp.matrix_transpose(R), W
    U, Vh = svd_flip(xp, U, Vh)
    if not converged:
        warnings.warn(
            f"lanczos_svd did not converge in maxiter={maxiter} restart cycles: "
            f"max relative residual {rel:.3e} > tol={tol:.3e}",
            ConvergenceWarning,
            stacklevel=2,
        )
    info = ConvergenceInfo(iterations=cycles, matvecs=side.matvecs, converged=converged, residuals=residuals, tol=tol)
    return SVDResult(U, Sk, Vh, info)
