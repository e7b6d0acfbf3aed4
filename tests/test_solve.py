"""KronSumSolver / solve_kron_sum against a dense NumPy reference on every backend.

Tolerances: float64 results match ``np.linalg.solve`` on the dense (p·r)×(p·r) matrix to ``rtol=1e-10`` (factors of
condition number ≲ 30); float32 to ``rtol=2e-4`` relative to ‖U‖ (the ``tol`` fixture).  Ill-conditioned factors
(cond 1e8, float64) are compared by relative residual: within 10× of the dense solve's.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kronalg.solve import KronSumSolver, KronSumSolverWarning, solve_kron_sum
from tests.backends import assert_backend_array, to_numpy


# ----------------------------------------------------------------------------- data
def spd(rng: np.random.Generator, n: int, cond: float | None = None) -> np.ndarray:
    """Random SPD matrix: Wishart + shift (cond ≈ 10–30), or eigenvalues log-spaced over ``cond``."""
    if cond is None:
        G = rng.standard_normal((n, 2 * n))
        A = G @ G.T / (2 * n) + 0.2 * np.eye(n)
    else:
        Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        A = (Q * np.logspace(0, -np.log10(cond), n)) @ Q.T
    return (A + A.T) / 2


def sym_bounded(rng: np.random.Generator, A: np.ndarray, bound: float) -> np.ndarray:
    """Symmetric C whose generalized eigenvalues with respect to A lie in [-bound, bound]."""
    n = A.shape[0]
    L = np.linalg.cholesky(A)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    S = (Q * rng.uniform(-bound, bound, n)) @ Q.T
    C = L @ S @ L.T
    return (C + C.T) / 2


def full(X: float | np.ndarray, n: int) -> np.ndarray:
    return X * np.eye(n) if np.isscalar(X) else X


def dense_solve(A, B, C, D, V, sign):
    p, r = A.shape[0], B.shape[0]
    M = np.kron(A, B) + sign * np.kron(full(C, p), full(D, r))
    Vf = V.reshape(-1, p * r).T
    return np.linalg.solve(M, Vf).T.reshape(V.shape), M


def rel_residual(M: np.ndarray, U: np.ndarray, V: np.ndarray) -> float:
    p, r = V.shape[-2:]
    R = (M @ U.reshape(-1, p * r).T).T.reshape(V.shape) - V
    return float(np.linalg.norm(R) / np.linalg.norm(V))


def problem(rng, p, r, sign, c_kind="matrix", d_kind="matrix"):
    A, B = spd(rng, p), spd(rng, r)
    # |generalized eigenvalues| ≤ 0.7 (matrix) or ≤ 1.2 (c·I with c = 1.2·λmin): |s1 s2| ≤ 0.84, PD for either sign
    c, d = 0.7 * np.linalg.eigvalsh(A)[0], 1.2 * np.linalg.eigvalsh(B)[0]
    C = {"matrix": sym_bounded(rng, A, 0.7), "scalar": float(c), "eye": c * np.eye(p)}[c_kind]
    D = {"matrix": sym_bounded(rng, B, 0.7), "scalar": float(d), "eye": d * np.eye(r)}[d_kind]
    return A, B, C, D


def to_backend(backend, dtype, *arrays):
    return [X if np.isscalar(X) else backend.asarray(X, dtype) for X in arrays]


def check_against_dense(backend, dtype, tol, A, B, C, D, V, sign, **kw):
    Ub = solve_kron_sum(*to_backend(backend, dtype, A, B, C, D, V), sign=sign, **kw)
    assert_backend_array(backend, Ub, dtype)
    assert tuple(Ub.shape) == V.shape
    U_ref, _ = dense_solve(A, B, C, D, V, sign)
    U = to_numpy(Ub)
    np.testing.assert_allclose(U, U_ref, rtol=0, atol=tol["rtol"] * np.abs(U_ref).max() + tol["atol"])


# ----------------------------------------------------------------------------- correctness on every backend
@pytest.mark.parametrize("sign", [+1, -1])
def test_matches_dense(backend, dtype, tol, rng, sign):
    A, B, C, D = problem(rng, 5, 5, sign)
    check_against_dense(backend, dtype, tol, A, B, C, D, rng.standard_normal((5, 5)), sign)


@pytest.mark.parametrize(("p", "r"), [(3, 7), (8, 2)])
def test_rectangular(backend, dtype, tol, rng, p, r):
    A, B, C, D = problem(rng, p, r, +1)
    check_against_dense(backend, dtype, tol, A, B, C, D, rng.standard_normal((p, r)), +1)


@pytest.mark.parametrize(
    ("c_kind", "d_kind"), [("scalar", "matrix"), ("matrix", "scalar"), ("scalar", "scalar"), ("eye", "eye")]
)
@pytest.mark.parametrize("sign", [+1, -1])
def test_identity_fast_paths(backend, dtype, tol, rng, c_kind, d_kind, sign):
    p, r = 4, 6
    A, B, C, D = problem(rng, p, r, sign, c_kind, d_kind)
    check_against_dense(backend, dtype, tol, A, B, C, D, rng.standard_normal((p, r)), sign)


def test_tikhonov_damping(backend, dtype, tol, rng):
    """A⊗B + λI is C=λ, D=1; an identity given as a matrix takes the same path."""
    A, B, V = spd(rng, 6), spd(rng, 3), rng.standard_normal((6, 3))
    check_against_dense(backend, dtype, tol, A, B, 1e-2, 1.0, V, +1)
    solver = KronSumSolver(*to_backend(backend, dtype, A, B, np.eye(6), 1e-2 * np.eye(3)))
    assert solver._C is None and solver._D is None  # detected c·I


def test_batched_rhs(backend, dtype, tol, rng):
    A, B, C, D = problem(rng, 4, 3, -1)
    V = rng.standard_normal((2, 5, 4, 3))
    check_against_dense(backend, dtype, tol, A, B, C, D, V, -1)


def test_vec_form_and_matvec(backend, dtype, tol, rng):
    A, B, C, D = problem(rng, 4, 3, +1)
    solver = KronSumSolver(*to_backend(backend, dtype, A, B, C, D))
    assert solver.shape == (12, 12)
    assert solver.dtype == backend.dtype(dtype)
    v = rng.standard_normal(12)
    u = solver.solve(backend.asarray(v, dtype))
    assert_backend_array(backend, u, dtype)
    U_ref, M = dense_solve(A, B, C, D, v.reshape(4, 3), +1)
    np.testing.assert_allclose(to_numpy(u), U_ref.reshape(-1), rtol=0, atol=tol["rtol"] * np.abs(U_ref).max())
    w = solver.matvec(u)
    assert_backend_array(backend, w, dtype)
    np.testing.assert_allclose(to_numpy(w), M @ to_numpy(u), rtol=tol["rtol"], atol=tol["atol"] * 10)


def test_logdet(backend, rng):
    for c_kind in ("matrix", "scalar"):
        A, B, C, D = problem(rng, 4, 3, -1, c_kind)
        solver = KronSumSolver(*to_backend(backend, "float64", A, B, C, D), sign=-1)
        M = np.kron(A, B) - np.kron(full(C, 4), D)
        assert solver.logdet() == pytest.approx(np.linalg.slogdet(M)[1], rel=1e-10)


def test_factorize_once_reuse(rng):
    A, B, C, D = problem(rng, 6, 5, +1)
    solver = KronSumSolver(A, B, C, D)
    assert not solver.needs_refinement
    for _ in range(3):
        V = rng.standard_normal((6, 5))
        U_ref, _ = dense_solve(A, B, C, D, V, +1)
        np.testing.assert_allclose(solver.solve(V), U_ref, rtol=1e-10, atol=1e-12)
        assert solver.last_residual is None  # well conditioned: no residual computed, four GEMMs only


# ----------------------------------------------------------------------------- accuracy, refinement, warnings
def ill_conditioned(rng, n=40, cond=1e8):
    return spd(rng, n, cond), spd(rng, n, cond), spd(rng, n, cond), spd(rng, n, cond)


def test_ill_conditioned_refinement_matches_dense(rng):
    """cond 1e8 factors (float64): refined residual within 10× of the dense LU's; unrefined measurably worse."""
    n = 40
    A, B, C, D = ill_conditioned(rng, n)
    V = rng.standard_normal((n, n))
    U_dense, M = dense_solve(A, B, C, D, V, +1)
    res_dense = rel_residual(M, U_dense, V)

    solver = KronSumSolver(A, B, C, D)
    assert solver.needs_refinement
    U = solver.solve(V)
    res = rel_residual(M, U, V)
    assert res <= 10 * res_dense
    assert 1 <= solver.last_refine_steps <= 6
    assert solver.last_residual == pytest.approx(res, rel=0.5)

    with pytest.warns(KronSumSolverWarning, match="refine=False"):
        raw = KronSumSolver(A, B, C, D, refine=False)
    res_raw = rel_residual(M, raw.solve(V), V)
    assert raw.last_residual is None
    assert res_raw > 100 * res_dense  # refinement is what makes the difference
    assert raw.probe_residual > 100 * solver.last_residual

    forced = KronSumSolver(A, B, C, D, refine=3)
    forced.solve(V)
    assert forced.last_refine_steps == 3


def test_refine_true_on_well_conditioned_is_cheap(rng):
    A, B, C, D = problem(rng, 6, 5, +1)
    solver = KronSumSolver(A, B, C, D, refine=True)
    solver.solve(rng.standard_normal((6, 5)))
    assert solver.last_refine_steps == 0  # already on target: only the residual check
    assert solver.last_residual < 1e-13


def test_warns_when_refinement_is_off_and_needed():
    """cond 1e8 factors in float64 with refinement switched off: the probe's backward error is too large, so the
    constructor warns instead of letting solve return a silently inaccurate answer."""
    rng = np.random.default_rng(0)
    A, B, C, D = ill_conditioned(rng, 48, cond=1e8)
    with pytest.warns(KronSumSolverWarning, match="backward error"):
        KronSumSolver(A, B, C, D, refine=False)


@pytest.mark.parametrize("cond", [2e9, 1e10, 1e12])
def test_beyond_convergence_range_never_silent(cond):
    """Past the range where refinement converges the solver raises, or warns on solve — it never returns quietly."""
    rng = np.random.default_rng(0)
    A, B, C, D = ill_conditioned(rng, 48, cond=cond)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            solver = KronSumSolver(A, B, C, D)
            solver.solve(rng.standard_normal((48, 48)))
        except ValueError as exc:
            assert "positive definite" in str(exc)
            return
    assert any(issubclass(w.category, KronSumSolverWarning) for w in caught)
    assert solver.last_backward_error > 1024 * np.finfo(np.float64).eps


def test_float32_moderate_conditioning(rng):
    """float32: cond 1e3 factors stay within 10× of a float32 dense LU solve's residual, without a warning."""
    n = 24
    A, B, C, D = (X.astype(np.float32) for X in ill_conditioned(rng, n, cond=1e3))
    V = rng.standard_normal((n, n)).astype(np.float32)
    M = np.kron(A, B).astype(np.float64) + np.kron(C, D)
    res_dense = rel_residual(M, np.linalg.solve(M.astype(np.float32), V.reshape(-1)), V)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        U = KronSumSolver(A, B, C, D).solve(V)
    assert U.dtype == np.float32
    assert rel_residual(M, U.astype(np.float64), V) <= 10 * res_dense


# ----------------------------------------------------------------------------- psd_floor (indefinite systems)
def clipped_dense(A, B, C, D, sign, floor):
    """Dense ``P⁻ᵀ diag(max(d, floor·(1 + |s1 s2|))) P⁻¹`` from scipy's generalized eigendecompositions."""
    import scipy.linalg

    s1, K1 = scipy.linalg.eigh(C, A)  # K1ᵀ A K1 = I, K1ᵀ C K1 = diag(s1)
    s2, K2 = scipy.linalg.eigh(D, B)
    prod = np.outer(s1, s2)
    d = 1 + sign * prod
    d = np.maximum(d, floor * (1 + np.abs(prod)))
    Kinv = np.linalg.inv(np.kron(K1, K2))
    return Kinv.T @ np.diag(d.reshape(-1)) @ Kinv, int(np.sum(1 + sign * prod < floor * (1 + np.abs(prod))))


@pytest.mark.parametrize("sign", [+1, -1])
def test_psd_floor_projects_indefinite_system(backend, rng, sign):
    A, B = spd(rng, 5), spd(rng, 4)
    C, D = sym_bounded(rng, A, 2.0), sym_bounded(rng, B, 2.0)  # |s1 s2| up to 4: indefinite for either sign
    V = rng.standard_normal((5, 4))
    M, n_clipped = clipped_dense(A, B, C, D, sign, 0.05)
    assert n_clipped > 0
    with pytest.raises(ValueError, match="must be positive definite"):
        KronSumSolver(*to_backend(backend, "float64", A, B, C, D), sign=sign)
    solver = KronSumSolver(*to_backend(backend, "float64", A, B, C, D), sign=sign, psd_floor=0.05)
    assert solver.n_clipped == n_clipped
    assert not solver.needs_refinement
    U = to_numpy(solver.solve(backend.asarray(V, "float64")))
    np.testing.assert_allclose(U.reshape(-1), np.linalg.solve(M, V.reshape(-1)), rtol=1e-9, atol=1e-10)
    assert np.all(np.linalg.eigvalsh((M + M.T) / 2) > 0)


def test_psd_floor_leaves_definite_systems_alone(rng):
    A, B, C, D = problem(rng, 5, 4, +1)
    V = rng.standard_normal((5, 4))
    solver = KronSumSolver(A, B, C, D, psd_floor=0.05)
    assert solver.n_clipped == 0
    np.testing.assert_allclose(solver.solve(V), KronSumSolver(A, B, C, D).solve(V), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("floor", [0.0, 1.0, -0.1, True, "x"])
def test_psd_floor_validated(good, floor):
    with pytest.raises(ValueError, match="`psd_floor` must be None or a number in"):
        KronSumSolver(*good, psd_floor=floor)


# ----------------------------------------------------------------------------- validation
@pytest.fixture
def good(rng):
    return problem(rng, 4, 3, +1)


def test_non_pd_A(good):
    A, B, C, D = good
    with pytest.raises(ValueError, match="`A` must be symmetric positive definite"):
        KronSumSolver(-A, B, C, D)
    with pytest.raises(ValueError, match="`A` must be symmetric positive definite"):
        KronSumSolver(-A, B, 0.1, D)  # eigendecomposition path


def test_non_pd_B(good):
    A, B, C, D = good
    B = B.copy()
    B[0, 0] = -1.0
    with pytest.raises(ValueError, match="`B` must be symmetric positive definite"):
        KronSumSolver(A, B, C, D)


def test_sign_minus_not_pd(good):
    A, B, _, _ = good
    with pytest.raises(ValueError, match="must be positive definite"):
        KronSumSolver(A, B, 2 * A, B, sign=-1)  # 1 − 2·1 < 0
    with pytest.raises(ValueError, match="must be positive definite"):
        KronSumSolver(np.eye(4), np.eye(3), 1.0, 1.0, sign=-1)  # exactly singular


def test_wrong_V_shape(good):
    solver = KronSumSolver(*good)
    with pytest.raises(ValueError, match=r"`V` must have shape \(\.\.\., 4, 3\)"):
        solver.solve(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"`V` must have shape"):
        solver.solve(np.ones(11))


def test_non_square_A(good):
    A, B, C, D = good
    with pytest.raises(ValueError, match="`A` must be square"):
        KronSumSolver(A[:, :3], B, C, D)


def test_mismatched_C_shape(good):
    A, B, C, D = good
    with pytest.raises(ValueError, match=r"`C` must have shape \(4, 4\) like `A`"):
        KronSumSolver(A, B, C[:3, :3], D)
    with pytest.raises(ValueError, match=r"`D` must have shape \(3, 3\) like `B`"):
        KronSumSolver(A, B, C, np.eye(4))


def test_nan_input(good):
    A, B, C, D = good
    C = C.copy()
    C[1, 2] = np.nan
    with pytest.raises(ValueError, match="`C` must be finite"):
        KronSumSolver(A, B, C, D)
    with pytest.raises(ValueError, match="`D` must be finite"):
        KronSumSolver(A, B, 0.1, float("inf"))
    V = np.ones((4, 3))
    V[0, 0] = np.inf
    with pytest.raises(ValueError, match="`V` must be finite"):
        KronSumSolver(*good).solve(V)


def test_not_symmetric(good):
    A, B, C, D = good
    C = C + np.triu(np.ones_like(C), 1)
    with pytest.raises(ValueError, match="`C` must be symmetric"):
        KronSumSolver(A, B, C, D)


@pytest.mark.parametrize("sign", [0, 2, -2, 0.5, True, "+"])
def test_bad_sign(good, sign):
    with pytest.raises(ValueError, match="`sign` must be"):
        KronSumSolver(*good, sign=sign)


@pytest.mark.parametrize("refine", ["yes", -1, 1.5])
def test_bad_refine(good, refine):
    with pytest.raises(ValueError, match="`refine` must be"):
        KronSumSolver(*good, refine=refine)


def test_integer_dtype(good):
    _, B, C, D = good
    with pytest.raises(TypeError, match="`A` must have a real floating dtype"):
        KronSumSolver(np.eye(4, dtype=np.int64), B, C, D)


def test_mixed_dtypes(good):
    A, B, C, D = good
    with pytest.raises(TypeError, match="dtype"):
        KronSumSolver(A, B.astype(np.float32), C, D)
    with pytest.raises(TypeError, match="`V` has dtype float32"):
        KronSumSolver(*good).solve(np.ones((4, 3), dtype=np.float32))


def test_mixed_namespaces(good):
    torch = pytest.importorskip("torch")
    A, B, C, D = good
    with pytest.raises(TypeError, match="one library"):
        KronSumSolver(A, torch.as_tensor(B), C, D)
    with pytest.raises(TypeError, match="one library"):
        KronSumSolver(*good).solve(torch.ones(4, 3, dtype=torch.float64))


# ----------------------------------------------------------------------------- property
@given(
    p=st.integers(1, 6),
    r=st.integers(1, 6),
    sign=st.sampled_from([1, -1]),
    bound=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_residual_small(p, r, sign, bound, seed):
    rng = np.random.default_rng(seed)
    A, B = spd(rng, p), spd(rng, r)
    C, D = sym_bounded(rng, A, bound), sym_bounded(rng, B, 1.0)  # |s1 s2| ≤ bound < 1: PD for either sign
    V = rng.standard_normal((p, r))
    U = KronSumSolver(A, B, C, D, sign=sign).solve(V)
    _, M = dense_solve(A, B, C, D, V, sign)
    assert rel_residual(M, U, V) < 1e-12


def test_torch_float32_eigh_failure_falls_back_to_float64(monkeypatch, rng):
    """torch's float32 CPU syevd can return NaN (or raise) on matrices with many repeated eigenvalues."""
    torch = pytest.importorskip("torch")
    real_eigh = torch.linalg.eigh

    def flaky_eigh(A, *args, **kwargs):
        w, Q = real_eigh(A, *args, **kwargs)
        return (w * float("nan"), Q) if A.dtype == torch.float32 else (w, Q)

    monkeypatch.setattr(torch.linalg, "eigh", flaky_eigh)
    A, B, C, D = problem(rng, 5, 4, +1)
    V = rng.standard_normal((5, 4))
    args = [torch.as_tensor(X, dtype=torch.float32) for X in (A, B, C, D)]
    U = KronSumSolver(*args).solve(torch.as_tensor(V, dtype=torch.float32))
    U_ref, _ = dense_solve(A, B, C, D, V, +1)
    np.testing.assert_allclose(U.numpy(), U_ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("scale", [0.0, 5e-324, 1e-310])
def test_zero_or_subnormal_second_term(rng, scale):
    """C = scale·(symmetric): the norm estimate must not divide 0 by 0 (hypothesis found bound = 5e-324)."""
    A, B = spd(rng, 2), spd(rng, 3)
    C, D = scale * np.array([[1.0, 0.5], [0.5, 2.0]]), spd(rng, 3)
    V = rng.standard_normal((2, 3))
    U = KronSumSolver(A, B, C, D).solve(V)
    U_ref, _ = dense_solve(A, B, C, D, V, +1)
    np.testing.assert_allclose(U, U_ref, rtol=1e-10, atol=1e-12)
