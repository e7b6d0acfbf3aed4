"""Dominant singular triplet by alternating power iteration.

``u ← A v / ‖A v‖``, ``v ← Aᵀ u / ‖Aᵀ u‖`` converges to ``(u_1, v_1)`` at the
rate ``(σ_2/σ_1)²`` per iteration (Koroko et al., App. B.1).  Each iteration
costs one product with ``A`` and one with ``Aᵀ``; the stopping test reuses them.

References
----------
.. [1] Koroko et al., "Efficient approximations of the Fisher matrix in neural networks using
   Kronecker product singular value decomposition", App. B.1 (power SVD).
.. [2] G. H. Golub and C. F. Van Loan, *Matrix Computations*, 4th ed., §8.2.1 and §10.4.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np

from ._backend import namespace_and_device
from ._checks import check_finite
from ._linalg import default_tol, random_normal, svd_flip
from .operators import KronOperator, MatrixOperator, as_operator
from .results import ConvergenceInfo, ConvergenceWarning, SVDResult

__all__ = ["power_svd"]

#: Default iteration cap of :func:`power_svd`.
POWER_MAXITER = 1000


# ---------------------------------------------------------------------------
# Validation helpers shared with :mod:`kronalg.lanczos`
# ---------------------------------------------------------------------------
def _check_operator(op: Any) -> KronOperator:
    """Wrap ``op`` and check that it is a non-empty real floating operator."""
    A = as_operator(op)
    m, n = A.shape
    if m < 1 or n < 1:
        raise ValueError(f"`op` must have a non-empty shape, got {A.shape}")
    xp = A.xp
    try:
        floating = bool(xp.isdtype(A.dtype, "real floating"))
    except Exception:  # a duck-typed operator's dtype that the namespace does not know
        floating = False
    if not floating:
        raise TypeError(f"`op` must have a real floating dtype (float32 or float64), got {A.dtype}")
    if isinstance(A, MatrixOperator):
        check_finite(xp, A.matrix, "op")
    return A


def _check_tol(A: KronOperator, tol: Any) -> float:
    if tol is None:
        return default_tol(A.xp, A.dtype)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"`tol` must be a float, got {type(tol).__name__}")
    if not (math.isfinite(tol) and 0 < tol < 1):
        raise ValueError(f"`tol` must satisfy 0 < tol < 1, got {tol}")
    return float(tol)


def _check_maxiter(maxiter: Any, default: int) -> int:
    if maxiter is None:
        return default
    if isinstance(maxiter, bool) or not isinstance(maxiter, numbers.Integral):
        raise TypeError(f"`maxiter` must be an int, got {type(maxiter).__name__}")
    if maxiter < 1:
        raise ValueError(f"`maxiter` must be >= 1, got {maxiter}")
    return int(maxiter)


def _check_seed(seed: Any) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"`seed` must be None, an int or a numpy.random.Generator, got {type(seed).__name__}")
    if seed is not None and seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed}")
    return np.random.default_rng(seed)


def _check_start_array(A: KronOperator, x: Any, size: int, name: str) -> Any:
    """Check a start array against the operator's namespace, device and leading size; cast its dtype."""
    xp0, device0 = namespace_and_device(x)
    if xp0 is not A.xp or str(device0) != str(A.device):
        raise TypeError(
            f"`{name}` must come from the operator's array library and device ({A.xp.__name__} on {A.device}), "
            f"got {xp0.__name__} on {device0}"
        )
    if not bool(xp0.isdtype(x.dtype, "real floating")):
        raise TypeError(f"`{name}` must have a real floating dtype, got {x.dtype}")
    if x.shape[0] != size:
        raise ValueError(f"`{name}` must have {size} rows for `op` of shape {A.shape}, got shape {tuple(x.shape)}")
    check_finite(xp0, x, name)
    return xp0.astype(x, A.dtype)


def _start_vectors(A: KronOperator, x0: Any) -> tuple[Any, Any]:
    """Validate ``x0``: returns ``(V, U)``, right vectors ``(n, j)`` and left vectors ``(m, j)`` (or ``None``).

    ``x0`` is ``None``, a vector of shape ``(n,)``, or an :class:`SVDResult`
    with ``U`` of shape ``(m, j)`` and ``Vh`` of shape ``(j, n)``.
    """
    m, n = A.shape
    if x0 is None:
        return None, None
    if isinstance(x0, SVDResult):
        U, Vh = x0.U, x0.Vh
        if getattr(Vh, "ndim", None) != 2 or getattr(U, "ndim", None) != 2:
            raise ValueError("`x0` as an SVDResult needs 2-D `U` of shape (m, j) and `Vh` of shape (j, n)")
        V = _check_start_array(A, A.xp.matrix_transpose(Vh), n, "x0.Vh.T")
        U = _check_start_array(A, U, m, "x0.U")
        if U.shape[1] != V.shape[1] or V.shape[1] < 1:
            raise ValueError(
                f"`x0.U` and `x0.Vh` must hold the same number (>= 1) of vectors, got {U.shape[1]} and {V.shape[1]}"
            )
        return V, U
    if getattr(x0, "ndim", None) is None:
        raise TypeError(f"`x0` must be None, an array of shape ({n},) or an SVDResult, got {type(x0).__name__}")
    if x0.ndim != 1 or x0.shape[0] != n:
        raise ValueError(f"`x0` must have shape ({n},) for `op` of shape {A.shape}, got {tuple(x0.shape)}")
    v = _check_start_array(A, x0, n, "x0")
    if float(A.xp.linalg.vector_norm(v)) == 0.0:
        raise ValueError("`x0` must be a nonzero vector")
    return v[:, None], None


def _iv(op: Any, x0: Any, tol: Any, maxiter: Any, seed: Any) -> tuple[KronOperator, Any, float, int, Any]:
    """Input validation of :func:`power_svd`."""
    A = _check_operator(op)
    tol = _check_tol(A, tol)
    maxiter = _check_maxiter(maxiter, POWER_MAXITER)
    rng = _check_seed(seed)
    V, _ = _start_vectors(A, x0)
    return A, (None if V is None else V[:, 0]), tol, maxiter, rng


# ---------------------------------------------------------------------------
# power_svd
# ---------------------------------------------------------------------------
def power_svd(
    op: Any,
    *,
    x0: Any = None,
    tol: float | None = None,
    maxiter: int | None = None,
    seed: int | np.random.Generator | None = None,
) -> SVDResult:
    """Dominant singular triplet ``A v_1 = σ_1 u_1``, ``Aᵀ u_1 = σ_1 v_1`` by power iteration.

    Alternates ``u ← A v/‖A v‖`` and ``v ← Aᵀ u/‖Aᵀ u‖``.  With ``σ = ‖A v‖``
    the pair satisfies ``A v = σ u`` exactly, so the residual of the triplet is
    ``r = ‖Aᵀ u − σ v‖`` and is read off the product ``Aᵀ u`` that the next
    step needs anyway: no extra product per iteration and one host sync.

    Parameters
    ----------
    op : array of shape (m, n) or operator
        A matrix of any supported backend, a kronalg operator, or an object
        with ``shape``, ``dtype``, ``matvec`` and ``rmatvec`` (e.g. a
        ``scipy.sparse.linalg.LinearOperator``, NumPy only).
    x0 : array of shape (n,), SVDResult, or None
        Start vector for ``v``; an :class:`SVDResult` (e.g. last step's answer)
        starts from its first right singular vector.  ``None`` draws a
        Gaussian vector from ``seed``.
    tol : float, optional
        Stop when ``‖Aᵀ u − σ v‖ ≤ tol·σ``.  Default ``1e-10`` in float64,
        ``1e-5`` in float32.
    maxiter : int, optional
        Maximum number of iterations (two products each), default 1000.
    seed : int, numpy.random.Generator or None
        Seed of the random start when ``x0`` is ``None``.

    Returns
    -------
    SVDResult
        ``U`` of shape (m, 1), ``S`` of shape (1,), ``Vh`` of shape (1, n),
        in the namespace, device and dtype of ``op``; signs fixed by
        ``svd_flip`` (largest entry of ``u`` positive).  ``.info`` is a
        :class:`ConvergenceInfo` with ``residuals = (r/σ,)``.

    Raises
    ------
    ValueError
        For a bad ``x0`` shape, a zero ``x0``, or ``tol``/``maxiter`` out of range.
    TypeError
        For non-floating input, or ``x0`` from another array library or device.

    Warns
    -----
    ConvergenceWarning
        When ``maxiter`` iterations do not meet ``tol``; the last iterate is
        returned with ``info.converged = False``.

    Notes
    -----
    The error in ``σ`` is about ``r²/(σ_1 − σ_2)``, far below ``r``.
    Convergence is linear with ratio ``(σ_2/σ_1)²``; for clustered leading
    singular values use :func:`kronalg.lanczos_svd`.  A start close to
    the answer (a warm start) converges in a few iterations.

    References
    ----------
    .. [1] Koroko et al., "Efficient approximations of the Fisher matrix in neural networks
       using Kronecker product singular value decomposition", App. B.1.

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg.power import power_svd
    >>> A = np.diag([3.0, 1.0, 0.5]) @ np.ones((3, 4))
    >>> res = power_svd(A, seed=0)
    >>> bool(np.isclose(res.S[0], np.linalg.norm(A, 2)))
    True
    >>> res.info.converged
    True
    """
    A, v, tol, maxiter, rng = _iv(op, x0, tol, maxiter, seed)
    xp, dtype, device = A.xp, A.dtype, A.device
    m, n = A.shape
    norm = xp.linalg.vector_norm
    if v is None:
        v = random_normal(xp, (n,), dtype=dtype, device=device, seed=rng)
    v = v / norm(v)

    matvecs = 0
    rel = math.inf
    converged = False
    restarted = False
    it = 0
    u = sigma = None
    one = xp.ones((), dtype=dtype, device=device)
    while it < maxiter:
        it += 1
        w = A.matvec(v)
        sigma = norm(w)
        positive = sigma > 0
        u = w / xp.where(positive, sigma, one)
        z = A.rmatvec(u)
        matvecs += 2
        r = norm(z - sigma * v)  # ‖Aᵀu − σ v‖, with A v = σ u exactly
        # the one host sync per iteration: r/σ, or −1 when A v = 0 (NaN if the operator returned NaN)
        rel = float(xp.where(positive, r / xp.where(positive, sigma, one), -one))
        if math.isnan(rel):
            raise ValueError("`op` produced NaN or infinity; its products must be finite")
        if rel < 0:
            # A v = 0: v lies in the null space.  Try one fresh random start, else A = 0.
            if not restarted:
                restarted = True
                v = random_normal(xp, (n,), dtype=dtype, device=device, seed=rng)
                v = v / norm(v)
                continue
            u = xp.concat([one[None], xp.zeros((m - 1,), dtype=dtype, device=device)])
            rel, converged = 0.0, True
            break
        if rel <= tol:
            converged = True
            break
        v = z / norm(z)

    if not converged:
        warnings.warn(
            f"power_svd did not converge in maxiter={maxiter} iterations: relative residual {rel:.3e} > tol={tol:.3e}",
            ConvergenceWarning,
            stacklevel=2,
        )
    U, Vh = svd_flip(xp, u[:, None], v[None, :])
    S = xp.reshape(sigma, (1,))
    info = ConvergenceInfo(iterations=it, matvecs=matvecs, converged=converged, residuals=(rel,), tol=tol)
    return SVDResult(U, S, Vh, info)
