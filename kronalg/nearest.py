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
from typing import Any, NamedTuple

from ._backend import eps, namespace_and_device
from ._checks import check_finite, check_floating, check_shape_pair
from ._linalg import sign_of
from ._vec import rearrange_blocks
from .gram import GRAM_MAX_COEFFICIENTS, gram_problem, gram_svd
from .operators import KronSum, MatrixOperator, SampleKronSum
from .results import ConvergenceInfo, SVDResult

__all__ = ["NearestKroneckerInfo", "nearest_kronecker", "gram_size", "NEAREST_METHODS"]

#: The methods of :func:`nearest_kronecker`.
NEAREST_METHODS = ("auto", "svd", "gram", "power", "deflation", "lanczos", "randomized")

#: ``"auto"`` uses the dense SVD for dense input while ``min(p·q, r·s)`` is at most this.
AUTO_DENSE_SVD_MAX = 1024


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
    return factors_from_matrices(
        xp, xp.reshape(xp.matrix_transpose(U), (k, *a_shape)), S, xp.reshape(Vh, (k, *b_shape)), symmetric=symmetric
    )


def factors_from_matrices(xp: Any, Us: Any, S: Any, Vs: Any, *, symmetric: bool) -> tuple[Any, Any]:
    """:func:`factors_from_triplets` with the singular vectors already as matrices ``mat(u_i)``, ``mat(v_i)``.

    Parameters
    ----------
    xp : module
        Namespace of the arrays.
    Us : array of shape (k, p, q)
        ``mat(u_i)``, unit Frobenius norm.
    S : array of shape (k,)
    Vs : array of shape (k, r, s)
        ``mat(v_i)``, unit Frobenius norm.
    symmetric : bool
        Whether the approximated matrix is symmetric.

    Returns
    -------
    As : array of shape (k, p, q)
    Bs : array of shape (k, r, s)
    """
    k = S.shape[0]
    flat = xp.reshape(Us, (k, -1))  # sign rule of svd_flip on contiguous rows: largest-magnitude entry positive
    signs = 1.0 - 2.0 * xp.astype(-xp.min(flat, axis=1) > xp.max(flat, axis=1), S.dtype)
    root = xp.sqrt(xp.clip(S, 0.0, None))
    As = Us * (signs * root)[:, None, None]
    Bs = Vs * (signs * root)[:, None, None]
    if symmetric:
        A0 = 0.5 * (As[0, ...] + xp.matrix_transpose(As[0, ...]))
        B0 = 0.5 * (Bs[0, ...] + xp.matrix_transpose(Bs[0, ...]))
        trace_sign = sign_of(xp, xp.linalg.trace(A0))
        As = xp.concat([(trace_sign * A0)[None, ...], As[1:, ...]])
        Bs = xp.concat([(trace_sign * B0)[None, ...], Bs[1:, ...]])
    return As, Bs


class _MatrixTriplets(NamedTuple):
    """Singular triplets of ``R(M)`` with the vectors as matrices (the Gram route produces them so)."""

    Us: Any
    S: Any
    Vs: Any
    info: Any


def _x0_triplets(xp: Any, x0: Any, a: tuple, b: tuple) -> SVDResult | None:
    """A previous answer (KronSum or (A, B) pair) as normalized triplets of ``R(M)``."""
    if x0 is None:
        return None
    if isinstance(x0, KronSum):
        As, Bs = x0.stacked
    elif isinstance(x0, (tuple, list)) and len(x0) == 2:
        As, Bs = x0[0][None, ...], x0[1][None, ...]
    else:
        raise TypeError(f"`x0` must be a KronSum or an (A, B) pair from a previous call, got {type(x0).__name__}")
    if tuple(As.shape[1:]) != tuple(a) or tuple(Bs.shape[1:]) != tuple(b):
        raise ValueError(
            f"`x0` has factors {tuple(As.shape[1:])} ⊗ {tuple(Bs.shape[1:])}, expected {tuple(a)} ⊗ {tuple(b)}"
        )
    k = As.shape[0]
    Af, Bf = xp.reshape(As, (k, -1)), xp.reshape(Bs, (k, -1))
    na = xp.sqrt(xp.sum(Af**2, axis=1))
    nb = xp.sqrt(xp.sum(Bf**2, axis=1))
    tiny = xp.finfo(Af.dtype).tiny
    U = xp.matrix_transpose(Af / xp.clip(na, tiny, None)[:, None])
    Vh = Bf / xp.clip(nb, tiny, None)[:, None]
    return SVDResult(U, na * nb, Vh)


def _partial_trace_start(xp: Any, M: SampleKronSum) -> SVDResult:
    """Cold start for iterative methods: the right vector ``vec(PTr_a(F)) = vec(Σ w_n X_nᵀ X_n)``.

    The trace-restricted (TKFAC) factor is close to the KPSVD factor of a Fisher
    block and costs half a K-FAC factor, so power and Lanczos start near the answer.
    """
    B = M.partial_trace("b")
    v = xp.reshape(B, (1, -1))
    norm = xp.sqrt(xp.sum(v**2))
    v = v / xp.where(norm > 0, norm, xp.ones_like(norm))
    u = xp.zeros((M.a_shape[0] * M.a_shape[1], 1), dtype=M.dtype, device=M.device)
    return SVDResult(u, xp.reshape(norm, (1,)), v)


def _dense_or_implicit_norm(xp: Any, M: Any) -> float:
    if isinstance(M, (KronSum, SampleKronSum)):
        return float(M.fro_norm())
    return float(xp.sqrt(xp.sum(M**2)))


def _rearranged_operator(xp: Any, M: Any, a: tuple, b: tuple) -> Any:
    if isinstance(M, (KronSum, SampleKronSum)):
        return M.rearranged
    return MatrixOperator(rearrange_blocks(xp, M, a, b))


def _resolve_auto(M: Any, a: tuple, b: tuple, rank: int, x0: Any) -> str:
    if not isinstance(M, (KronSum, SampleKronSum)):
        return "svd" if min(a[0] * a[1], b[0] * b[1]) <= AUTO_DENSE_SVD_MAX else "lanczos"
    if _gram_pays_off(M, a, b):
        return "gram"
    return "lanczos"  # warm-started from x0 when given; plain power stalls on small singular gaps


def _gram_pays_off(M: KronSum | SampleKronSum, a: tuple, b: tuple) -> bool:
    """The Gram route pays off while its coefficient space is no larger than the smaller side of ``R(M)``."""
    N = gram_size(M)
    return N <= GRAM_MAX_COEFFICIENTS and N <= min(a[0] * a[1], b[0] * b[1])


def gram_size(M: KronSum | SampleKronSum) -> int:
    """Coefficient dimension ``N`` of the Gram route: terms of a KronSum, ``n·T²`` for samples.

    Parameters
    ----------
    M : KronSum or SampleKronSum
        The implicit sum.

    Returns
    -------
    int
    """
    if isinstance(M, KronSum):
        return len(M)
    return M.n_samples * min(M.n_locations, M.a_shape[0], M.b_shape[0]) ** 2


def _svd_dense(xp: Any, R: Any, rank: int) -> tuple[SVDResult, float]:
    U, S, Vh = xp.linalg.svd(R, full_matrices=False)
    tail = float(xp.sum(S[rank:] ** 2)) if S.shape[0] > rank else 0.0
    return SVDResult(U[:, :rank], S[:rank], Vh[:rank, :]), math.sqrt(max(tail, 0.0))


def _svd_via_gram_dense(xp: Any, R: Any, rank: int) -> SVDResult:
    """Top triplets of a dense ``R`` from the eigendecomposition of its smaller Gram matrix."""
    m, n = R.shape
    Rt = xp.matrix_transpose(R)
    wide = m <= n
    lam, E = xp.linalg.eigh(R @ Rt if wide else Rt @ R)
    idx = slice(lam.shape[0] - rank, lam.shape[0])
    lam, E = xp.flip(lam[idx]), xp.flip(E[:, idx], axis=1)
    S = xp.sqrt(xp.clip(lam, 0.0, None))
    inv = xp.where(S > 0, 1.0 / xp.where(S > 0, S, 1.0), 0.0)
    if wide:  # R Rᵀ = E Λ Eᵀ: u = e, v = Rᵀ e / σ
        return SVDResult(E, S, inv[:, None] * (xp.matrix_transpose(E) @ R))
    return SVDResult(R @ E * inv[None, :], S, xp.matrix_transpose(E))


def _triplets(
    xp: Any, M: Any, a: tuple, b: tuple, rank: int, method: str, tol: Any, maxiter: Any, x0: Any, seed: Any
) -> tuple[SVDResult | _MatrixTriplets, int, bool, float | None]:
    """Top-``rank`` triplets of ``R(M)`` by ``method``.

    Returns them, the iterations, convergence, and ``‖M‖_F²`` when it came for free (else ``None``).
    """
    if method == "svd":
        R = _rearranged_operator(xp, M, a, b).to_dense()
        return _svd_dense(xp, R, rank)[0], 0, True, None
    if method == "gram":
        if not isinstance(M, (KronSum, SampleKronSum)):
            return _svd_via_gram_dense(xp, rearrange_blocks(xp, M, a, b), rank), 0, True, None
        N = gram_size(M)
        if N > GRAM_MAX_COEFFICIENTS:
            raise ValueError(
                f'method="gram" works in n·T² = {N} coefficients here, above GRAM_MAX_COEFFICIENTS = '
                f'{GRAM_MAX_COEFFICIENTS}; use method="lanczos" or "power" for this sum'
            )
        problem = gram_problem(M)
        X, S, Y, info = gram_svd(problem, rank, tol=tol, maxiter=maxiter or 300, seed=0 if seed is None else seed)
        Us, Vs = problem.left(xp.matrix_transpose(X)), problem.right(xp.matrix_transpose(Y))
        return _MatrixTriplets(Us, S, Vs, info), info.iterations, info.converged, problem.fro_norm_sq()
    if method == "deflation" and isinstance(M, (KronSum, SampleKronSum)) and _gram_pays_off(M, a, b):
        return _deflation_gram(xp, M, rank, tol, maxiter, seed)
    op = _rearranged_operator(xp, M, a, b)
    start = _x0_triplets(xp, x0, a, b)
    if start is None and isinstance(M, SampleKronSum) and M.is_psd:
        start = _partial_trace_start(xp, M)
    if method == "lanczos":
        from .lanczos import lanczos_svd

        res = lanczos_svd(op, rank, tol=tol, maxiter=maxiter, x0=start, seed=seed)
        return res, res.info.iterations, res.info.converged, None
    if method == "randomized":
        from .randomized import randomized_svd

        res = randomized_svd(op, rank, seed=seed)
        return res, res.info.iterations if res.info else 0, True, None
    # "power" (rank > 1) and "deflation": successive rank-1 solves on deflated operators (Koroko §3.2.1);
    # "power" stages run the power method, "deflation" stages a restarted Lanczos (robust to small gaps)
    from .deflation import deflate
    from .lanczos import lanczos_svd
    from .power import power_svd

    Us, Ss, Vhs, iterations, converged = [], [], [], 0, True
    for i in range(rank):
        target = op if i == 0 else deflate(op, xp.concat(Us, axis=1), xp.concat(Ss), xp.concat(Vhs, axis=0))
        guess = None
        if start is not None and i < start.S.shape[0]:
            guess = start.Vh[i, :]
        stage_seed = None if seed is None else seed + i
        if method == "deflation":
            res = lanczos_svd(target, 1, x0=guess, tol=tol, maxiter=maxiter, seed=stage_seed)
        else:
            res = power_svd(target, x0=guess, tol=tol, maxiter=maxiter, seed=stage_seed)
        Us.append(res.U)
        Ss.append(res.S)
        Vhs.append(res.Vh)
        iterations += res.info.iterations
        converged = converged and res.info.converged
    return SVDResult(xp.concat(Us, axis=1), xp.concat(Ss), xp.concat(Vhs, axis=0)), iterations, converged, None


def _deflation_gram(
    xp: Any, M: KronSum | SampleKronSum, rank: int, tol: Any, maxiter: Any, seed: Any
) -> tuple[_MatrixTriplets, int, bool, float]:
    """Koroko §3.2.1 with exact stages: the best Kronecker product of ``M``, then of ``M`` minus it, and so on.

    Each stage is a rank-1 Gram problem on the deflated core ``C = W − Σ σ x yᵀ``; nothing is formed.
    """
    base = gram_problem(M)
    problem, total = base, base.fro_norm_sq()
    Xs, Ss, Ys, iterations, converged = [], [], [], 0, True
    for i in range(rank):
        X, S, Y, info = gram_svd(problem, 1, tol=tol, maxiter=maxiter or 300, seed=(0 if seed is None else seed) + i)
        Xs.append(X)
        Ss.append(S)
        Ys.append(Y)
        iterations += info.iterations
        converged = converged and info.converged
        problem = problem.without(X, S, Y)
    X, S, Y = xp.concat(Xs, axis=1), xp.concat(Ss), xp.concat(Ys, axis=1)
    Us, Vs = base.left(xp.matrix_transpose(X)), base.right(xp.matrix_transpose(Y))
    info = ConvergenceInfo(iterations=iterations, matvecs=0, converged=converged, residuals=(), tol=tol or 0.0)
    return _MatrixTriplets(Us, S, Vs, info), iterations, converged, total


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
    seed: int | None = 0,
) -> KronSum:
    """Best Kronecker-rank-``rank`` approximation ``M ≈ Σ_{i<rank} A_i ⊗ B_i`` in the Frobenius norm.

    Solves ``min ‖M − Σ A_i⊗B_i‖_F`` through the top singular triplets of the
    rearrangement ``R(M)``: ``A_i = √σ_i mat(u_i)``, ``B_i = √σ_i mat(v_i)``.
    For symmetric PSD ``M`` with square factor shapes the leading pair is
    returned symmetric PSD (Koroko Prop. 3.2); later pairs are returned as the
    SVD gives them.

    Parameters
    ----------
    M : array of shape (p·r, q·s), KronSum, or SampleKronSum
        The matrix to approximate; implicit sums carry their factor shapes and
        are never formed (except by ``method="svd"``).
    a_shape : pair of int, optional
        ``(p, q)``; required for a dense ``M``.
    b_shape : pair of int, optional
        ``(r, s)``; required for a dense ``M``.
    rank : int
        Number of Kronecker terms, at most ``min(p·q, r·s)``.
    method : {"auto", "svd", "gram", "power", "deflation", "lanczos", "randomized"}
        ``"svd"``: dense ``R(M)`` and a full SVD (exact; forms ``R(M)``, as many
        entries as ``M``). ``"gram"``: exact top triplets from the ``N×N`` Gram
        matrices of an implicit sum (``N`` = samples·T², or terms), iterated in
        coefficient space to ``tol``; on dense input, from the smaller Gram
        matrix of ``R(M)``. ``"power"``: power SVD (Koroko App. B.1), rank > 1 by
        deflation. ``"deflation"``: successive rank-1 solves on deflated operators
        (Koroko §3.2.1), each stage a rank-1 Lanczos on the deflated operator, or,
        where the Gram route pays off, an exact Gram problem on the deflated core.
        ``"lanczos"``: restarted Golub–Kahan–Lanczos (§3.2.2).
        ``"randomized"``: randomized SVD (approximate, no tolerance).
        ``"auto"``: dense input → ``"svd"`` while ``min(p·q, r·s) ≤ 1024``, else
        ``"lanczos"``; implicit input → ``"gram"`` while ``N ≤ 4096`` and ``N ≤ min(p·q, r·s)``, else
        ``"lanczos"`` (warm-started from ``x0`` when given).
    tol : float, optional
        Relative residual of iterative methods (default 1e-10 in float64, 1e-5 in float32).
    maxiter : int, optional
        Iteration cap of iterative methods.
    x0 : KronSum or (A, B) pair, optional
        A previous answer to warm-start iterative methods; direct methods ignore it.
    seed : int or None
        Seed of random starts (drawn with NumPy, so every backend starts alike).

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
    resolved = _resolve_auto(M, a, b, rank, x0) if method == "auto" else method
    if resolved == "svd":
        R = _rearranged_operator(xp, M, a, b).to_dense()
        triplets, residual = _svd_dense(xp, R, rank)
        total = float(xp.sum(R**2))
        iterations, converged = 0, True
    else:
        triplets, iterations, converged, total = _triplets(xp, M, a, b, rank, resolved, tol, maxiter, x0, seed)
        total = _dense_or_implicit_norm(xp, M) ** 2 if total is None else total
        residual = math.sqrt(max(total - float(xp.sum(triplets.S**2)), 0.0))
    if isinstance(triplets, _MatrixTriplets):
        As, Bs = factors_from_matrices(xp, triplets.Us, triplets.S, triplets.Vs, symmetric=symmetric)
    else:
        As, Bs = factors_from_triplets(xp, triplets.U, triplets.S, triplets.Vh, a, b, symmetric=symmetric)
    info = NearestKroneckerInfo(
        method=resolved,
        iterations=iterations,
        converged=converged,
        residual=residual,
        relative_residual=residual / math.sqrt(total) if total > 0 else 0.0,
        singular_values=triplets.S,
    )
    return KronSum((As, Bs), info=info)
