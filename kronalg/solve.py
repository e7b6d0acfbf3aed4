"""Solve ``(A ⊗ B + sign·C ⊗ D) vec(U) = vec(V)`` by one factorization and four GEMMs per right-hand side.

Martens & Grosse (2015), Appendix B, and Koroko et al. (2022), §3.4, without forming matrix square roots: the
symmetric-definite generalized eigenproblems ``C K₁ = A K₁ diag(s₁)`` and ``D K₂ = B K₂ diag(s₂)`` (with
``K₁ᵀ A K₁ = I``, ``K₂ᵀ B K₂ = I``) give

    (A ⊗ B + sign·C ⊗ D)⁻¹ = (K₁ ⊗ K₂) diag(1 / (1 + sign·s₁ s₂ᵀ)) (K₁ ⊗ K₂)ᵀ.

When ``C`` (or ``D``) is a multiple ``c·I`` of the identity, the plain eigendecomposition ``A = Q₁ diag(λ₁) Q₁ᵀ``
replaces the generalized one.  All paths store ``P₁, P₂`` and ``a₁, c₁, a₂, c₂`` with ``P₁ᵀ A P₁ = diag(a₁)``,
``P₁ᵀ C P₁ = diag(c₁)`` (likewise for ``B, D``), so one formula serves them all:

    U = P₁ [(P₁ᵀ V P₂) ⊙ W] P₂ᵀ,        W = 1 / (a₁ a₂ᵀ + sign·c₁ c₂ᵀ).

Accuracy.  The formula is not backward stable when the factors are ill-conditioned (its residual grows like
``eps·cond``² where a dense LU solve stays near ``eps``), so the solver measures itself once at setup on a seeded
random right-hand side and, only when that probe is inaccurate, adds fixed-precision iterative refinement to every
solve.  See :class:`KronSumSolver` for the thresholds.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np

from ._backend import (
    all_finite,
    asarray_on,
    cholesky,
    eigh,
    eps,
    generalized_eigh,
    namespace_and_device,
    to_scalar,
)
from ._checks import check_finite, check_floating, check_same_dtype, check_square

__all__ = ["KronSumSolver", "KronSumSolverWarning", "solve_kron_sum"]

#: Target residual ``‖V − op(U)‖_F ≤ eps·(TARGET_V·sqrt(p + r)·‖V‖_F + TARGET_U·ν·‖U‖_F)``, what a dense LU
#: solve typically reaches (it leaves about ``eps·‖V‖`` on well-conditioned and ``0.1·eps·ν‖U‖`` on ill-conditioned
#: systems; the unrefined formula leaves ``2–8·eps·sqrt(n)·‖V‖`` on well-conditioned ones).
TARGET_V = 2.0
TARGET_U = 0.25
#: :class:`KronSumSolverWarning` when the normwise backward error ``‖R‖_F / (‖V‖_F + ν‖U‖_F)`` of a returned
#: solution exceeds ``WARN_TOL_EPS·eps``.
WARN_TOL_EPS = 1024.0
#: Default bound on refinement steps in ``refine="auto"`` mode.
MAX_REFINE = 6
_PROBE_SEED = 0x5EED
_PROBE_SKETCH = 16
_POWER_ITERS = 4


class KronSumSolverWarning(RuntimeWarning):
    """A solution of :class:`KronSumSolver` is less accurate than the documented threshold.

    Raised as a warning (not an error) so that callers can decide; turn it into an exception with
    ``warnings.simplefilter("error", KronSumSolverWarning)``.
    """


def _is_scalar(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_symmetric(xp: Any, X: Any, name: str, device: Any) -> None:
    """Raise unless ``‖(X − Xᵀ) v‖ ≤ sqrt(eps)·(‖X v‖ + ‖Xᵀ v‖)`` for a seeded random ``v`` (two matvecs).

    Catches any clearly non-symmetric matrix (the asymmetric part would have to be nearly orthogonal to a random
    vector to slip through) without the cost of forming ``X − Xᵀ``.
    """
    tol = math.sqrt(eps(xp, X.dtype))
    v = asarray_on(xp, np.random.default_rng(_PROBE_SEED + 7).standard_normal(X.shape[0]), dtype=X.dtype, device=device)
    Xv, XTv = X @ v, xp.matrix_transpose(X) @ v
    norm = xp.linalg.vector_norm
    if to_scalar(norm(Xv - XTv) - tol * (norm(Xv) + norm(XTv))) > 0:
        raise ValueError(
            f"`{name}` must be symmetric, but ‖({name} − {name}ᵀ) v‖ > sqrt(eps)·(‖{name} v‖ + ‖{name}ᵀ v‖) "
            f"(sqrt(eps) = {tol:.1e}) for a random v"
        )


def _is_multiple_of_identity(xp: Any, X: Any, device: Any) -> float | None:
    """``c`` when ``X == c·I`` exactly, else ``None`` (usually one host sync on a single entry)."""
    n = X.shape[0]
    if n > 1 and to_scalar(X[0, 1]) != 0:
        return None
    c = X[0, 0]
    eye = xp.eye(n, dtype=X.dtype, device=device)
    if bool(xp.all(X == c * eye)):
        return to_scalar(c)
    return None


def _norm2_spd_or_sym(xp: Any, X: Any, device: Any, *, seed: int) -> float:
    """Block power estimate (a lower bound, typically within 20 %) of ``‖X‖₂`` for symmetric ``X``.

    Four passes over ``X`` with four columns; iterates are scaled by their largest entry, so tiny or huge ``X``
    neither underflow nor overflow.
    """
    n = X.shape[0]
    tiny = float(xp.finfo(X.dtype).smallest_normal)
    Y = asarray_on(xp, np.random.default_rng(seed).standard_normal((n, 4)), dtype=X.dtype, device=device)
    est = xp.max(xp.abs(Y))
    for _ in range(_POWER_ITERS):
        Y_new = X @ Y
        m = xp.max(xp.abs(Y_new)) + tiny
        Y_new = Y_new / m
        # + tiny: a (numerically) zero X maps Y to 0, and the next ratio would be 0/0
        est = m * xp.max(xp.linalg.vector_norm(Y_new, axis=0) / (xp.linalg.vector_norm(Y, axis=0) + tiny))
        Y = Y_new
    return to_scalar(est)


class KronSumSolver:
    """Factorize ``A ⊗ B + sign·C ⊗ D`` once, then solve ``A U Bᵀ + sign·C U Dᵀ = V`` with four GEMMs.

    ``U = P₁ [(P₁ᵀ V P₂) ⊙ W] P₂ᵀ`` with ``P₁ᵀ A P₁, P₁ᵀ C P₁`` diagonal (generalized eigenvectors, or the
    eigenvectors of ``A`` when ``C = c·I``), likewise ``P₂`` for ``B, D``, and ``W = 1 / (a₁ a₂ᵀ + sign·c₁ c₂ᵀ)``.

    Parameters
    ----------
    A : array of shape (p, p)
        Symmetric positive definite.
    B : array of shape (r, r)
        Symmetric positive definite.
    C : array of shape (p, p) or real scalar
        Symmetric.  A Python scalar ``c`` means ``c·I``; a matrix that is exactly ``c·I`` is detected, and both take
        the faster and more accurate eigendecomposition path.  Tikhonov damping ``A ⊗ B + λ I`` is ``C=λ, D=1``.
    D : array of shape (r, r) or real scalar
        Symmetric; a scalar ``d`` means ``d·I``.
    sign : {+1, -1}
        The sign of the second term.
    refine : "auto", bool or int
        Iterative refinement ``U ← U + solve(V − op(U))`` (four GEMMs for the residual, four for the correction).
        ``"auto"`` (default): refine only if the setup probe misses the target residual
        ``‖R‖_F ≤ eps·(TARGET_V·sqrt(p + r)·‖V‖_F + TARGET_U·ν·‖U‖_F)`` with ``ν = ‖A‖₂‖B‖₂ + ‖C‖₂‖D‖₂``
        (ill-conditioned factors); then every solve refines until it meets the target or the miss stops halving,
        at most ``max_refine`` steps.  ``True``: that loop in every solve.  ``False`` or ``0``: never refine (and
        compute no residual in ``solve``).  An int ``k > 0``: exactly ``k`` steps.
    max_refine : int
        Bound on the number of steps of ``"auto"``/``True`` refinement.
    psd_floor : float in (0, 1), optional
        Instead of raising when the system is not positive definite, raise each eigenvalue
        ``a₁ᵢa₂ⱼ + sign·c₁ᵢc₂ⱼ`` of the pencil below ``psd_floor·(a₁ᵢa₂ⱼ + |c₁ᵢc₂ⱼ|)`` to that floor: the solve is
        then with the matrix ``P⁻ᵀ diag(max(d, floor)) P⁻¹``, the positive definite matrix that agrees with
        ``A⊗B ± C⊗D`` on every eigendirection where it was already above the floor (``n_clipped`` counts the
        others).  When anything is clipped, no refinement is done (the residual would be against the unclipped
        system).  Used by optimizers whose Kronecker-rank-2 curvature estimate may be indefinite.

    Attributes
    ----------
    shape : tuple of int
        ``(p·r, p·r)``.
    dtype : dtype
        The dtype of the factors and of every solution.
    probe_residual : float
        Relative residual ``‖R‖_F / ‖V₀‖_F`` of the unrefined formula on a seeded random rank-1 probe ``V₀``
        (estimated through a 16-column Gaussian sketch, so the probe needs no GEMM).
    probe_backward_error : float
        Normwise backward error ``‖R‖_F / (‖V₀‖_F + ν‖U₀‖_F)`` of the probe (``ν`` from exact eigenvalues or
        power iteration).
    needs_refinement : bool
        Whether ``solve`` refines (``refine="auto"`` decides it from the probe).
    last_residual : float or None
        Largest relative residual ``‖V − op(U)‖_F / ‖V‖_F`` over the batch of the last ``solve``; ``None`` when that
        solve did not compute it (no refinement).
    last_backward_error : float or None
        The same as a backward error (see ``probe_backward_error``).
    last_refine_steps : int
        Correction steps taken by the last ``solve``.
    n_clipped : int
        Eigenvalues of the pencil raised to the floor (always 0 without ``psd_floor``).

    Warns
    -----
    KronSumSolverWarning
        From ``solve`` when a returned solution's normwise backward error ``‖R‖_F / (‖V‖_F + ν‖U‖_F)`` is above
        ``WARN_TOL_EPS·eps`` (refinement did not converge: the factors are too ill-conditioned for the dtype); from
        the constructor when ``refine=False`` and the probe is above that level.

    Raises
    ------
    ValueError
        If a matrix is not square, the shapes disagree, an input holds NaN/inf, a matrix is not symmetric, ``A`` or
        ``B`` is not positive definite, the whole system is not (numerically) positive definite, or ``sign`` or
        ``refine`` is invalid.
    TypeError
        For non-floating or mixed dtypes, or arrays from different libraries or devices.

    Notes
    -----
    Setup: two (generalized) symmetric eigendecompositions and the probe (thin products only); ``solve``: four GEMMs and
    one elementwise product when no refinement is needed.  Measured against ``numpy.linalg.solve`` on the dense
    matrix (relative residual ratio; all four factors of size 48 with eigenvalues log-spaced over ``κ``):

    - float64, unrefined: 2× at ``κ = 1e2``, 10× at ``1e3``, 30× at ``1e4``, 2·10⁴× at ``1e8``.  With
      ``refine="auto"``: ≤ 1× up to ``κ = 1e8`` (1–3 steps; refinement starts at ``κ ≈ 1e2``).  Around
      ``κ ≈ 1e9`` refinement diverges for about half the instances (warning); from ``κ ≈ 5e9`` the generalized
      eigenvalues are too inaccurate to establish positive definiteness (``ValueError``).
    - float32: the unrefined formula stays within 5–12× of a float32 dense solve up to ``κ ≈ 1e6`` with a
      normwise backward error below ``eps``, so ``"auto"`` rarely refines; from ``κ ≈ 1e7`` ``ValueError``.
    - ``C = c·I`` and ``D = d·I`` (both): ``U = Q₁[(Q₁ᵀ V Q₂) / (λ₁λ₂ᵀ + sign·c·d)]Q₂ᵀ`` is as accurate as the
      dense solve at any ``κ`` representable in the dtype.

    A system that is itself ill-conditioned (``sign = −1`` with ``s₁ s₂ᵀ`` close to 1, or huge ``κ``) gets a large
    relative residual with a small backward error, exactly like a dense solve; that is not warned about.

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg.solve import KronSumSolver
    >>> rng = np.random.default_rng(0)
    >>> A, B = np.diag([1.0, 2.0, 3.0]), np.diag([4.0, 5.0])
    >>> C, D = np.eye(3) + 0.1, np.ones((2, 2))
    >>> solver = KronSumSolver(A, B, C, D, sign=+1)
    >>> V = rng.standard_normal((3, 2))
    >>> U = solver.solve(V)
    >>> np.allclose(A @ U @ B.T + C @ U @ D.T, V)
    True
    >>> np.allclose(U.reshape(-1), np.linalg.solve(np.kron(A, B) + np.kron(C, D), V.reshape(-1)))
    True
    """

    def __init__(
        self,
        A: Any,
        B: Any,
        C: Any,
        D: Any,
        sign: int = +1,
        *,
        refine: str | bool | int = "auto",
        max_refine: int = MAX_REFINE,
        psd_floor: float | None = None,
    ) -> None:
        if isinstance(sign, bool) or not _is_scalar(sign) or sign not in (1, -1):
            raise ValueError(f"`sign` must be +1 or -1, got {sign!r}")
        if not (refine == "auto" or isinstance(refine, (bool, int))) or (
            not isinstance(refine, (bool, str)) and refine < 0
        ):
            raise ValueError(f'`refine` must be "auto", a bool or a non-negative int, got {refine!r}')
        if isinstance(max_refine, bool) or not isinstance(max_refine, int) or max_refine < 0:
            raise ValueError(f"`max_refine` must be a non-negative int, got {max_refine!r}")
        if psd_floor is not None and not (
            isinstance(psd_floor, (int, float)) and not isinstance(psd_floor, bool) and 0 < psd_floor < 1
        ):
            raise ValueError(f"`psd_floor` must be None or a number in (0, 1), got {psd_floor!r}")
        self._sign = int(sign)
        self._refine = refine
        self._max_refine = max_refine

        xp, device = namespace_and_device(A, B, C, D)
        self._xp, self._device = xp, device
        arrays = {"A": A, "B": B}
        for name, X in (("C", C), ("D", D)):
            if not _is_scalar(X):
                arrays[name] = X
        for name, X in arrays.items():
            check_square(X, name)
        p, r = A.shape[0], B.shape[0]
        for name, X, ref, n in (("C", C, "A", p), ("D", D, "B", r)):
            if name in arrays and X.shape[0] != n:
                raise ValueError(f"`{name}` must have shape ({n}, {n}) like `{ref}`, got {tuple(X.shape)}")
        for name, X in arrays.items():
            check_floating(xp, X, name)
        check_same_dtype(arrays)
        for name, X in arrays.items():
            check_finite(xp, X, name)
        for name, X in (("C", C), ("D", D)):
            if name not in arrays and not math.isfinite(float(X)):
                raise ValueError(f"`{name}` must be finite, got {X!r}")
        for name, X in arrays.items():
            _check_symmetric(xp, X, name, device)

        self._dtype = A.dtype
        self._p, self._r = p, r
        self._eps = eps(xp, A.dtype)
        self._A, self._B = A, B
        # C, D as (matrix or None, scalar or None)
        self._C, self._c = self._as_matrix_or_scalar(C)
        self._D, self._d = self._as_matrix_or_scalar(D)

        P1, a1, c1, nA, nC = self._factor_side(A, self._C, self._c, "A", "C", seed=_PROBE_SEED + 1)
        P2, a2, c2, nB, nD = self._factor_side(B, self._D, self._d, "B", "D", seed=_PROBE_SEED + 2)
        self._P1, self._P2 = P1, P2
        self._P1T, self._P2T = xp.matrix_transpose(P1), xp.matrix_transpose(P2)
        self._paths = (self._C is None, self._D is None)

        outer_a = a1[:, None] * a2[None, :]
        outer_c = c1[:, None] * c2[None, :]
        den = outer_a + self._sign * outer_c
        self.n_clipped: int = 0
        if psd_floor is not None:  # project onto the PD cone in the pencil's eigenbasis
            floor = psd_floor * (outer_a + xp.abs(outer_c))
            clipped = den < floor
            self.n_clipped = int(to_scalar(xp.sum(xp.astype(clipped, xp.int64))))
            den = xp.where(clipped, floor, den)
        rel = to_scalar(xp.min(den / (outer_a + xp.abs(outer_c))))
        if not rel > self._eps:
            raise ValueError(
                f"the system `A⊗B {'+' if self._sign > 0 else '−'} C⊗D` must be positive definite, but "
                f"min over (i, j) of (a1_i a2_j + sign·c1_i c2_j) / (a1_i a2_j + |c1_i c2_j|) is {rel:.3g}, "
                f"expected > eps = {self._eps:.1e} (this is 1 + sign·s1_i s2_j with the generalized eigenvalues s1 "
                "of (C, A) and s2 of (D, B)); either the system is not positive definite or its factors are too "
                f"ill-conditioned for {self._dtype} to establish that it is"
            )
        self._den = den
        self._W = 1.0 / den
        self._norm_op = nA * nB + nC * nD

        miss, rel_res, bwd = self._probe() if self.n_clipped == 0 else (math.nan, math.nan, math.nan)
        self.probe_residual: float = rel_res
        self.probe_backward_error: float = bwd
        if self.n_clipped:  # the clipped operator is not A⊗B ± C⊗D: residuals against it are meaningless
            self.needs_refinement = False
        elif refine == "auto":
            self.needs_refinement = miss > 1.0
        else:
            self.needs_refinement = bool(refine)
        self.last_residual: float | None = None
        self.last_backward_error: float | None = None
        self.last_refine_steps: int = 0
        if not self.n_clipped and (refine is False or (not isinstance(refine, str) and refine == 0)):
            if bwd > WARN_TOL_EPS * self._eps:
                warnings.warn(
                    f"KronSumSolver with refine=False: the probe solve has backward error {bwd:.2e} "
                    f"(relative residual {rel_res:.2e}), above the threshold {WARN_TOL_EPS:g}·eps; the factors are "
                    "too ill-conditioned for the unrefined formula — use refine='auto'",
                    KronSumSolverWarning,
                    stacklevel=2,
                )
        self._logdet: float | None = None

    # ------------------------------------------------------------------ setup helpers
    def _as_matrix_or_scalar(self, X: Any) -> tuple[Any, float | None]:
        if _is_scalar(X):
            return None, float(X)
        c = _is_multiple_of_identity(self._xp, X, self._device)
        if c is not None:
            return None, c
        return X, None

    def _factor_side(
        self, A: Any, C: Any, c: float | None, name_a: str, name_c: str, *, seed: int
    ) -> tuple[Any, Any, Any, float, float]:
        """``P, a, c_vec, ‖A‖₂, ‖C‖₂`` with ``Pᵀ A P = diag(a)`` and ``Pᵀ C P = diag(c_vec)``."""
        xp = self._xp
        n = A.shape[0]
        if C is None:
            lam, Q = eigh(xp, A)
            lam_min = to_scalar(lam[0])
            if not lam_min > 0:
                raise ValueError(
                    f"`{name_a}` must be symmetric positive definite, but its smallest eigenvalue is {lam_min:.3g}"
                )
            cvec = xp.full((n,), c, dtype=A.dtype, device=self._device)
            return Q, lam, cvec, to_scalar(lam[-1]), abs(c)
        s, K = generalized_eigh(xp, C, A, name_c=name_c, name_a=name_a)
        ones = xp.ones((n,), dtype=A.dtype, device=self._device)
        return (
            K,
            ones,
            s,
            _norm2_spd_or_sym(xp, A, self._device, seed=seed),
            _norm2_spd_or_sym(xp, C, self._device, seed=seed + 10),
        )

    def _probe(self) -> tuple[float, float, float]:
        """Miss ratio, relative residual and backward error of the formula on a seeded random rank-1 ``V₀ = x yᵀ``.

        Everything is applied to a Gaussian sketch ``H`` (r×16) from the right, so the probe costs O((p² + r² + pr)·16)
        flops instead of GEMMs: ``‖R‖_F ≈ ‖R H‖_F / 4`` and ``‖U₀‖_F ≈ ‖U₀ H‖_F / 4`` (χ²₁₆ estimates, within about
        ×0.6–1.4), ``‖V₀‖_F = ‖x‖‖y‖`` exactly.  ``U₀ = P₁ [(P₁ᵀx)(P₂ᵀy)ᵀ ⊙ W] P₂ᵀ`` goes through the same products
        as a solve, one column block at a time.
        """
        xp, p, r, k = self._xp, self._p, self._r, _PROBE_SKETCH
        gen = np.random.default_rng(_PROBE_SEED)
        x = asarray_on(xp, gen.standard_normal(p), dtype=self._dtype, device=self._device)
        y = asarray_on(xp, gen.standard_normal(r), dtype=self._dtype, device=self._device)
        H = asarray_on(xp, gen.standard_normal((r, k)), dtype=self._dtype, device=self._device)
        Z = (xp.matmul(self._P1T, x)[:, None] * xp.matmul(self._P2T, y)[None, :]) * self._W

        def u0_times(G: Any) -> Any:  # U₀ G for G of shape (r, k)
            return xp.matmul(self._P1, xp.matmul(Z, xp.matmul(self._P2T, G)))

        UH = u0_times(H)
        T1 = xp.matmul(self._A, u0_times(xp.matmul(xp.matrix_transpose(self._B), H)))
        G = H if self._D is None else xp.matmul(xp.matrix_transpose(self._D), H)
        T2 = u0_times(G)
        T2 = T2 if self._C is None else xp.matmul(self._C, T2)
        scale = self._sign * (1.0 if self._c is None else self._c) * (1.0 if self._d is None else self._d)
        RH = x[:, None] * xp.matmul(y, H)[None, :] - T1 - scale * T2
        nR = to_scalar(xp.linalg.matrix_norm(RH)) / math.sqrt(k)
        nU = to_scalar(xp.linalg.matrix_norm(UH)) / math.sqrt(k)
        nV = to_scalar(xp.linalg.vector_norm(x) * xp.linalg.vector_norm(y))
        tiny = float(xp.finfo(self._dtype).smallest_normal)
        target = self._eps * (TARGET_V * math.sqrt(p + r) * nV + TARGET_U * self._norm_op * nU)
        return nR / (target + tiny), nR / (nV + tiny), nR / (nV + self._norm_op * nU + tiny)

    # ------------------------------------------------------------------ operators
    @property
    def shape(self) -> tuple[int, int]:
        """``(p·r, p·r)``, the shape of ``A ⊗ B + sign·C ⊗ D``."""
        n = self._p * self._r
        return (n, n)

    @property
    def dtype(self) -> Any:
        """The dtype of the factors and of every solution."""
        return self._dtype

    @property
    def sign(self) -> int:
        """The sign (+1 or −1) of the ``C ⊗ D`` term."""
        return self._sign

    def _apply_inverse(self, V: Any) -> Any:
        xp = self._xp
        Z = xp.matmul(xp.matmul(self._P1T, V), self._P2)
        Z *= self._W  # Z is a fresh intermediate
        return xp.matmul(xp.matmul(self._P1, Z), self._P2T)

    def matvec(self, U: Any) -> Any:
        """Apply the operator: ``A U Bᵀ + sign·C U Dᵀ`` (``= (A ⊗ B + sign·C ⊗ D) vec U``).

        Parameters
        ----------
        U : array of shape (..., p, r)

        Returns
        -------
        array of shape (..., p, r)

        Examples
        --------
        >>> import numpy as np
        >>> from kronalg.solve import KronSumSolver
        >>> solver = KronSumSolver(np.eye(2), 2 * np.eye(3), 1.0, np.eye(3))
        >>> solver.matvec(np.ones((2, 3)))
        array([[3., 3., 3.],
               [3., 3., 3.]])
        """
        xp = self._xp
        U = self._check_rhs(U, "U", check_values=False)
        if U.ndim == 1:
            return xp.reshape(self._matvec(xp.reshape(U, (self._p, self._r))), (-1,))
        return self._matvec(U)

    def _matvec(self, U: Any) -> Any:
        xp = self._xp
        T1 = xp.matmul(xp.matmul(self._A, U), xp.matrix_transpose(self._B))
        X = U if self._C is None else xp.matmul(self._C, U)
        X = X if self._D is None else xp.matmul(X, xp.matrix_transpose(self._D))
        scale = self._sign * (1.0 if self._c is None else self._c) * (1.0 if self._d is None else self._d)
        return T1 + scale * X

    def _errors(self, V: Any, U: Any, R: Any) -> tuple[float, float, float]:
        """Over the batch, the largest ``‖R‖ / target``, relative residual and normwise backward error."""
        xp = self._xp
        nR = xp.reshape(xp.linalg.matrix_norm(R), (-1,))
        nV = xp.reshape(xp.linalg.matrix_norm(V), (-1,))
        nU = xp.reshape(xp.linalg.matrix_norm(U), (-1,))
        tiny = float(xp.finfo(self._dtype).smallest_normal)  # 0/0 (V = 0) reads as 0
        target = self._eps * (TARGET_V * math.sqrt(self._p + self._r) * nV + TARGET_U * self._norm_op * nU)
        miss = to_scalar(xp.max(nR / (target + tiny)))
        rel = to_scalar(xp.max(nR / (nV + tiny)))
        bwd = to_scalar(xp.max(nR / (nV + self._norm_op * nU + tiny)))
        return miss, rel, bwd

    # ------------------------------------------------------------------ solve
    def _check_rhs(self, V: Any, name: str, *, check_values: bool = True) -> Any:
        xp, _ = namespace_and_device(self._A, V)
        p, r = self._p, self._r
        if V.ndim == 1:
            if V.shape[0] != p * r:
                raise ValueError(
                    f"`{name}` must have shape (..., {p}, {r}) or ({p * r},) (vec form), got {tuple(V.shape)}"
                )
        elif V.ndim < 2 or V.shape[-2] != p or V.shape[-1] != r:
            raise ValueError(f"`{name}` must have shape (..., {p}, {r}) or ({p * r},) (vec form), got {tuple(V.shape)}")
        check_floating(xp, V, name)
        if V.dtype != self._dtype:
            raise TypeError(f"`{name}` has dtype {V.dtype} but the solver's factors have dtype {self._dtype}")
        if check_values:
            # One pass and one sync: the sum is finite unless an entry is NaN/inf (or the sum overflows).
            if not math.isfinite(to_scalar(xp.sum(V))) and not all_finite(xp, V):
                raise ValueError(f"`{name}` must be finite, but it contains NaN or infinity")
        return V

    def solve(self, V: Any) -> Any:
        """Solve ``A U Bᵀ + sign·C U Dᵀ = V``, i.e. ``(A ⊗ B + sign·C ⊗ D) vec U = vec V``.

        Parameters
        ----------
        V : array of shape (..., p, r) or (p·r,)
            One right-hand side, a batch of them, or one in vec form (row-major: ``v.reshape(p, r)``).

        Returns
        -------
        U : array of the shape of ``V``
            In the namespace, device and dtype of the inputs.

        Warns
        -----
        KronSumSolverWarning
            If the solution's normwise backward error is above ``WARN_TOL_EPS·eps`` (only checked when refining;
            with ``refine=False`` the constructor checks the probe instead).

        Examples
        --------
        >>> import numpy as np
        >>> from kronalg.solve import KronSumSolver
        >>> A, B = np.diag([1.0, 2.0]), np.diag([1.0, 3.0])
        >>> solver = KronSumSolver(A, B, 0.5, 1.0, sign=-1)  # A⊗B − 0.5·I
        >>> U = solver.solve(np.ones((2, 2)))
        >>> np.allclose(A @ U @ B.T - 0.5 * U, 1.0)
        True
        """
        xp = self._xp
        V = self._check_rhs(V, "V")
        if V.ndim == 1:
            return xp.reshape(self._solve(xp.reshape(V, (self._p, self._r))), (-1,))
        return self._solve(V)

    def _solve(self, V: Any) -> Any:
        U = self._apply_inverse(V)
        self.last_refine_steps = 0
        if not self.needs_refinement:
            self.last_residual = self.last_backward_error = None
            return U
        R = V - self._matvec(U)
        miss, rel, bwd = self._errors(V, U, R)
        forced = not isinstance(self._refine, (bool, str))
        steps = int(self._refine) if forced else self._max_refine
        for _ in range(steps):
            if not forced and miss <= 1.0:
                break
            U_new = U + self._apply_inverse(R)
            R_new = V - self._matvec(U_new)
            miss_new, rel_new, bwd_new = self._errors(V, U_new, R_new)
            self.last_refine_steps += 1
            if not forced and not miss_new < 0.5 * miss:  # stagnation: keep the better one and stop
                if miss_new < miss:
                    U, R, miss, rel, bwd = U_new, R_new, miss_new, rel_new, bwd_new
                break
            U, R, miss, rel, bwd = U_new, R_new, miss_new, rel_new, bwd_new
        self.last_residual, self.last_backward_error = rel, bwd
        if not bwd <= WARN_TOL_EPS * self._eps:
            warnings.warn(
                f"KronSumSolver.solve: backward error {bwd:.2e} (relative residual {rel:.2e}) after "
                f"{self.last_refine_steps} refinement steps is above {WARN_TOL_EPS:g}·eps = "
                f"{WARN_TOL_EPS * self._eps:.1e}; the factors are too ill-conditioned (or the system too close to "
                "singular) for this dtype and the solution is inaccurate",
                KronSumSolverWarning,
                stacklevel=3,
            )
        return U

    def logdet(self) -> float:
        """``log det(A ⊗ B + sign·C ⊗ D)`` from the factorization.

        ``= Σᵢⱼ log(a₁ᵢ a₂ⱼ + sign·c₁ᵢ c₂ⱼ) − 2r·log|det P₁| − 2p·log|det P₂|``; for the generalized path that is
        ``r·logdet A + p·logdet B + Σ log(1 + sign·s₁ᵢ s₂ⱼ)`` (one extra Cholesky of ``A`` and of ``B``, cached).

        Returns
        -------
        float

        Examples
        --------
        >>> import numpy as np
        >>> from kronalg.solve import KronSumSolver
        >>> A, B = np.diag([1.0, 2.0]), np.diag([3.0, 4.0])
        >>> C = np.array([[1.0, 0.5], [0.5, 1.0]])
        >>> solver = KronSumSolver(A, B, C, np.eye(2))
        >>> bool(np.isclose(solver.logdet(), np.linalg.slogdet(np.kron(A, B) + np.kron(C, np.eye(2)))[1]))
        True
        """
        if self._logdet is None:
            xp = self._xp
            total = xp.sum(xp.log(self._den))
            if self._C is not None:
                L = cholesky(xp, self._A, name="A")
                total = total + 2.0 * self._r * xp.sum(xp.log(xp.linalg.diagonal(L)))
            if self._D is not None:
                L = cholesky(xp, self._B, name="B")
                total = total + 2.0 * self._p * xp.sum(xp.log(xp.linalg.diagonal(L)))
            self._logdet = to_scalar(total)
        return self._logdet

    def __repr__(self) -> str:
        return (
            f"KronSumSolver(p={self._p}, r={self._r}, sign={self._sign:+d}, dtype={self._dtype}, "
            f"needs_refinement={self.needs_refinement}, probe_backward_error={self.probe_backward_error:.1e})"
        )


def solve_kron_sum(A: Any, B: Any, C: Any, D: Any, V: Any, sign: int = +1, **kwargs: Any) -> Any:
    """Solve ``A U Bᵀ + sign·C U Dᵀ = V`` once: ``KronSumSolver(A, B, C, D, sign, **kwargs).solve(V)``.

    Parameters
    ----------
    A : array of shape (p, p)
        Symmetric positive definite.
    B : array of shape (r, r)
        Symmetric positive definite.
    C : array of shape (p, p) or real scalar
        Symmetric; a scalar ``c`` means ``c·I``.
    D : array of shape (r, r) or real scalar
        Symmetric; a scalar ``d`` means ``d·I``.
    V : array of shape (..., p, r) or (p·r,)
        Right-hand side(s); vec form is row-major.
    sign : {+1, -1}
        The sign of the ``C ⊗ D`` term.
    **kwargs
        ``refine``, ``max_refine`` of :class:`KronSumSolver`.

    Returns
    -------
    U : array of the shape of ``V``

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg.solve import solve_kron_sum
    >>> A, B, V = np.diag([2.0, 3.0]), np.diag([1.0, 4.0]), np.ones((2, 2))
    >>> U = solve_kron_sum(A, B, 1e-2, 1.0, V)  # (A ⊗ B + 0.01 I) vec U = vec V
    >>> np.allclose(A @ U @ B + 1e-2 * U, V)
    True
    """
    return KronSumSolver(A, B, C, D, sign, **kwargs).solve(V)
