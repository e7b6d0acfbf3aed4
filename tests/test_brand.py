"""Brand updates, light correction and spectrum continuation against dense NumPy references, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kronalg.brand import brand_light_correction, brand_update, brand_update_sym, spectrum_continuation
from tests.backends import assert_backend_array, to_numpy


def _orth_error(U):
    return np.abs(U.T @ U - np.eye(U.shape[1])).max() if U.shape[1] else 0.0


def _low_rank_svd(rng, m, n, k):
    U, S, Vh = np.linalg.svd(rng.standard_normal((m, k)) @ rng.standard_normal((k, n)), full_matrices=False)
    return U[:, :k], S[:k], Vh[:k]


def _low_rank_evd(rng, d, k):
    G = rng.standard_normal((d, k))
    w, U = np.linalg.eigh(G @ G.T)
    return U[:, ::-1][:, :k].copy(), w[::-1][:k].copy()


def _scale(tol):
    """Tolerances for quantities of size ~10-100 built from a few GEMMs."""
    return {"rtol": tol["rtol"] * 50, "atol": tol["atol"] * 1e3}


# ------------------------------------------------------------------------------------------------------------
# brand_update
# ------------------------------------------------------------------------------------------------------------


def test_brand_update_matches_dense_svd(backend, dtype, tol, rng):
    m, n, k, c = 30, 20, 4, 3
    U, S, Vh = _low_rank_svd(rng, m, n, k)
    A, B = rng.standard_normal((m, c)), rng.standard_normal((n, c))
    X = (U * S) @ Vh + A @ B.T
    res = brand_update(*(backend.asarray(x, dtype) for x in (U, S, Vh, A, B)))
    for x in res:
        assert_backend_array(backend, x, dtype)
    Un, Sn, Vhn = (to_numpy(x) for x in res)
    assert Un.shape == (m, k + c) and Sn.shape == (k + c,) and Vhn.shape == (k + c, n)
    np.testing.assert_allclose(Sn, np.linalg.svd(X, compute_uv=False)[: k + c], **_scale(tol))
    assert np.all(np.diff(Sn) <= 0)
    np.testing.assert_allclose((Un * Sn) @ Vhn, X, **_scale(tol))
    assert _orth_error(Un) < 50 * tol["rtol"] and _orth_error(Vhn.T) < 50 * tol["rtol"]
    # deterministic signs: the largest-magnitude entry of each left vector is positive
    assert np.all(Un[np.argmax(np.abs(Un), axis=0), np.arange(k + c)] > 0)


def test_brand_update_truncation_is_optimal(backend, dtype, tol, rng):
    m, n, k, c, r = 25, 18, 5, 3, 4
    U, S, Vh = _low_rank_svd(rng, m, n, k)
    A, B = rng.standard_normal((m, c)), rng.standard_normal((n, c))
    X = (U * S) @ Vh + A @ B.T
    sigma = np.linalg.svd(X, compute_uv=False)
    Un, Sn, Vhn = (to_numpy(x) for x in brand_update(*(backend.asarray(x, dtype) for x in (U, S, Vh, A, B)), rank=r))
    assert Un.shape == (m, r) and Vhn.shape == (r, n)
    np.testing.assert_allclose(Sn, sigma[:r], **_scale(tol))
    err = np.linalg.norm(X - (Un * Sn) @ Vhn)
    np.testing.assert_allclose(err, np.sqrt(np.sum(sigma[r:] ** 2)), rtol=100 * tol["rtol"])


def test_brand_update_rank_deficient_stays_orthonormal(backend, dtype, tol, rng):
    m, n, k = 20, 15, 4
    U, S, Vh = _low_rank_svd(rng, m, n, k)
    A = np.hstack([U[:, :2] @ rng.standard_normal((2, 2)), np.zeros((m, 1))])  # inside span(U), and a zero column
    B = rng.standard_normal((n, 3))
    X = (U * S) @ Vh + A @ B.T
    Un, Sn, Vhn = (to_numpy(x) for x in brand_update(*(backend.asarray(x, dtype) for x in (U, S, Vh, A, B))))
    assert _orth_error(Un) < 50 * tol["rtol"] and _orth_error(Vhn.T) < 50 * tol["rtol"]
    np.testing.assert_allclose((Un * Sn) @ Vhn, X, **_scale(tol))


def test_brand_update_from_empty_basis(rng):
    A, B = rng.standard_normal((12, 3)), rng.standard_normal((9, 3))
    U, S, Vh = brand_update(np.zeros((12, 0)), np.zeros(0), np.zeros((0, 9)), A, B)
    np.testing.assert_allclose(S, np.linalg.svd(A @ B.T, compute_uv=False)[:3], rtol=1e-12)
    np.testing.assert_allclose((U * S) @ Vh, A @ B.T, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# brand_update_sym
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decay", [1.0, 0.9])
def test_brand_update_sym_matches_dense_eigh(backend, dtype, tol, rng, decay):
    d, k, n = 30, 5, 4
    U, w = _low_rank_evd(rng, d, k)
    A = rng.standard_normal((d, n))
    M = decay * (U * w) @ U.T + A @ A.T
    res = brand_update_sym(backend.asarray(U, dtype), backend.asarray(w, dtype), backend.asarray(A, dtype), decay=decay)
    assert_backend_array(backend, res.eigenvalues, dtype)
    assert_backend_array(backend, res.eigenvectors, dtype)
    wn, Un = to_numpy(res.eigenvalues), to_numpy(res.eigenvectors)
    assert Un.shape == (d, k + n)
    np.testing.assert_allclose(wn, np.linalg.eigvalsh(M)[::-1][: k + n], **_scale(tol))
    assert np.all(np.diff(wn) <= 0)
    np.testing.assert_allclose((Un * wn) @ Un.T, M, **_scale(tol))
    assert _orth_error(Un) < 50 * tol["rtol"]
    assert np.all(Un[np.argmax(np.abs(Un), axis=0), np.arange(k + n)] > 0)


def test_brand_update_sym_truncation_is_optimal(backend, dtype, tol, rng):
    d, k, n, r = 30, 6, 4, 5
    U, w = _low_rank_evd(rng, d, k)
    A = rng.standard_normal((d, n))
    M = 0.8 * (U * w) @ U.T + A @ A.T
    lam = np.linalg.eigvalsh(M)[::-1]
    args = (backend.asarray(U, dtype), backend.asarray(w, dtype), backend.asarray(A, dtype))
    wn, Un = (to_numpy(x) for x in brand_update_sym(*args, rank=r, decay=0.8))
    assert Un.shape == (d, r)
    np.testing.assert_allclose(wn, lam[:r], **_scale(tol))
    err = np.linalg.norm(M - (Un * wn) @ Un.T)
    np.testing.assert_allclose(err, np.sqrt(np.sum(lam[r:] ** 2)), rtol=100 * tol["rtol"])


@pytest.mark.parametrize("kind", ["in_span", "zero", "duplicate", "overfull"])
def test_brand_update_sym_rank_deficient_stays_orthonormal(backend, dtype, tol, rng, kind):
    d, k = 16, 5
    U, w = _low_rank_evd(rng, d, k)
    A = {
        "in_span": U[:, :3] @ rng.standard_normal((3, 4)),
        "zero": np.zeros((d, 3)),
        "duplicate": np.repeat(rng.standard_normal((d, 2)), 3, axis=1),
        "overfull": rng.standard_normal((d, 14)),  # k + n > d
    }[kind]
    M = (U * w) @ U.T + A @ A.T
    wn, Un = (to_numpy(x) for x in brand_update_sym(*(backend.asarray(x, dtype) for x in (U, w, A))))
    assert Un.shape[1] <= min(d, k + A.shape[1])
    assert _orth_error(Un) < 50 * tol["rtol"]
    np.testing.assert_allclose((Un * wn) @ Un.T, M, **_scale(tol))


def test_brand_update_sym_from_empty_basis(backend, dtype, tol, rng):
    A = rng.standard_normal((10, 3))
    res = brand_update_sym(
        backend.asarray(np.zeros((10, 0)), dtype), backend.asarray(np.zeros(0), dtype), backend.asarray(A, dtype)
    )
    np.testing.assert_allclose(to_numpy(res.eigenvalues), np.linalg.eigvalsh(A @ A.T)[::-1][:3], **_scale(tol))


def test_brand_update_sym_200_updates_no_drift_with_truncation(rng):
    d, n, r, rho = 200, 4, 30, 0.95
    U, w = _low_rank_evd(rng, d, r)
    for _ in range(200):
        A = np.sqrt((1 - rho) / n) * rng.standard_normal((d, n))
        w, U = brand_update_sym(U[:, :r], w[:r], A, decay=rho)
    assert U.shape == (d, r + n)
    assert _orth_error(U) <= 1e-12


def test_brand_update_sym_200_updates_match_exact_ema(rng):
    # rank=None: the basis grows to span R^d and the representation stays exact (no truncation ever happens)
    d, n, rho = 120, 2, 0.97
    U, w = _low_rank_evd(rng, d, 6)
    M = (U * w) @ U.T
    for _ in range(200):
        A = np.sqrt(1 - rho) * rng.standard_normal((d, n))
        M = rho * M + A @ A.T
        w, U = brand_update_sym(U, w, A, decay=rho)
    assert U.shape == (d, d)
    assert _orth_error(U) <= 1e-12
    np.testing.assert_allclose(w, np.linalg.eigvalsh(M)[::-1], rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose((U * w) @ U.T, M, atol=1e-11)


def test_brand_update_sym_ill_conditioned_update_keeps_information(rng):
    d, k = 60, 5
    U, w = _low_rank_evd(rng, d, k)
    A = rng.standard_normal((d, 8)) @ np.diag(np.logspace(0, -12, 8)) @ np.linalg.qr(rng.standard_normal((8, 8)))[0]
    M = (U * w) @ U.T + A @ A.T
    wn, Un = brand_update_sym(U, w, A)
    assert _orth_error(Un) <= 1e-13
    np.testing.assert_allclose((Un * wn) @ Un.T, M, atol=1e-13)


# ------------------------------------------------------------------------------------------------------------
# light correction and spectrum continuation
# ------------------------------------------------------------------------------------------------------------


def test_light_correction_matches_alg6(backend, dtype, tol, rng):
    d, r, nc = 25, 6, 3
    G = rng.standard_normal((d, d))
    M = G @ G.T
    U = np.linalg.qr(rng.standard_normal((d, r)))[0]
    w = np.sort(rng.uniform(1, 5, r))[::-1].copy()
    res = brand_light_correction(*(backend.asarray(x, dtype) for x in (U, w, M)), nc, seed=3)
    assert_backend_array(backend, res.eigenvectors, dtype)
    wn, Un = (to_numpy(x) for x in res)
    assert Un.shape == (d, r) and np.all(np.diff(wn) <= 0)
    assert _orth_error(Un) < 50 * tol["rtol"]
    # span(U) is unchanged, exactly nc modes were corrected, and the error cannot grow (Puiu, footnote 11)
    np.testing.assert_allclose(Un @ Un.T, U @ U.T, **_scale(tol))
    err = lambda w_, U_: np.linalg.norm(M - (U_ * w_) @ U_.T)  # noqa: E731
    assert err(wn, Un) <= err(w, U) * (1 + 1e-6)
    kept = [np.min(np.abs(wn - x)) < 1e-4 * x for x in w]
    assert sum(kept) >= r - nc
    # on the corrected subspace the projection matches M
    chosen = np.sort(np.random.default_rng(3).choice(r, nc, replace=False))
    UJ = U[:, chosen]
    E = UJ.T @ (M - (Un * wn) @ Un.T) @ UJ
    assert np.abs(E).max() < 1e3 * tol["rtol"] * np.abs(M).max()


def test_light_correction_all_modes_is_rayleigh_ritz(rng):
    d, r = 20, 5
    G = rng.standard_normal((d, d))
    M = G @ G.T
    U = np.linalg.qr(rng.standard_normal((d, r)))[0]
    wn, _ = brand_light_correction(U, np.ones(r), M, r, seed=0)
    np.testing.assert_allclose(wn, np.linalg.eigvalsh(U.T @ M @ U)[::-1], rtol=1e-12)


def test_spectrum_continuation(backend, dtype, tol):
    w, lam = spectrum_continuation(backend.asarray([4.0, 2.0, 0.5], dtype), damping=1e-2)
    assert_backend_array(backend, w, dtype)
    np.testing.assert_allclose(to_numpy(w), [3.5, 1.5, 0.0], **tol)
    np.testing.assert_allclose(float(lam), 0.51, **tol)
    # rounding-level negative eigenvalues never lower the damping
    w, lam = spectrum_continuation(backend.asarray([1.0, -1e-9], dtype), damping=0.1)
    np.testing.assert_allclose(float(lam), 0.1, **tol)


# ------------------------------------------------------------------------------------------------------------
# validation: one rule per test
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def sym_args(rng):
    U, w = _low_rank_evd(rng, 10, 3)
    return U, w, rng.standard_normal((10, 2))


@pytest.fixture
def svd_args(rng):
    U, S, Vh = _low_rank_svd(rng, 10, 8, 3)
    return U, S, Vh, rng.standard_normal((10, 2)), rng.standard_normal((8, 2))


def test_sym_rejects_row_mismatch(sym_args):
    U, w, A = sym_args
    with pytest.raises(ValueError, match=r"`A` must have d = U.shape\[0\] rows.*10, got 9"):
        brand_update_sym(U, w, A[:9])


def test_sym_rejects_eigenvalue_length(sym_args):
    U, w, A = sym_args
    with pytest.raises(ValueError, match=r"`w` must have length k"):
        brand_update_sym(U, w[:2], A)


def test_sym_rejects_non_matrix(sym_args):
    U, w, A = sym_args
    with pytest.raises(ValueError, match=r"`A` must be a 2-D array"):
        brand_update_sym(U, w, A[:, 0])


@pytest.mark.parametrize("rank", [0, -2])
def test_sym_rejects_non_positive_rank(sym_args, rank):
    with pytest.raises(ValueError, match=r"`rank` must be a positive int or None"):
        brand_update_sym(*sym_args, rank=rank)


def test_sym_rejects_non_integer_rank(sym_args):
    with pytest.raises(TypeError, match=r"`rank` must be a positive int or None, got float"):
        brand_update_sym(*sym_args, rank=2.0)


def test_sym_rejects_negative_decay(sym_args):
    with pytest.raises(ValueError, match=r"`decay` must be a finite number >= 0"):
        brand_update_sym(*sym_args, decay=-0.5)


def test_sym_rejects_nan(sym_args):
    U, w, A = sym_args
    A = A.copy()
    A[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"`A` must be finite"):
        brand_update_sym(U, w, A)


def test_sym_rejects_integer_dtype(sym_args):
    U, w, _ = sym_args
    with pytest.raises(TypeError, match=r"`A` must have a real floating dtype"):
        brand_update_sym(U, w, np.ones((10, 2), dtype=np.int64))


def test_sym_rejects_mixed_dtypes(sym_args):
    U, w, A = sym_args
    with pytest.raises(TypeError, match=r"`A` has dtype float32 but `U` has dtype float64"):
        brand_update_sym(U, w, A.astype(np.float32))


def test_sym_rejects_mixed_backends(sym_args):
    torch = pytest.importorskip("torch")
    U, w, A = sym_args
    with pytest.raises(TypeError, match=r"one library"):
        brand_update_sym(U, w, torch.from_numpy(A))


def test_update_rejects_column_mismatch(svd_args):
    U, S, Vh, A, B = svd_args
    with pytest.raises(ValueError, match=r"`B` must have as many columns as `A`.*2, got 1"):
        brand_update(U, S, Vh, A, B[:, :1])


def test_update_rejects_vh_rows(svd_args):
    U, S, Vh, A, B = svd_args
    with pytest.raises(ValueError, match=r"`Vh` must have k = U.shape\[1\] rows"):
        brand_update(U, S, Vh[:2], A, B)


def test_update_rejects_b_rows(svd_args):
    U, S, Vh, A, B = svd_args
    with pytest.raises(ValueError, match=r"`B` must have n = Vh.shape\[1\] rows.*8, got 7"):
        brand_update(U, S, Vh, A, B[:7])


def test_update_rejects_negative_rank(svd_args):
    with pytest.raises(ValueError, match=r"`rank` must be a positive int or None, got -1"):
        brand_update(*svd_args, rank=-1)


def test_update_rejects_infinity(svd_args):
    U, S, Vh, A, B = svd_args
    S = S.copy()
    S[0] = np.inf
    with pytest.raises(ValueError, match=r"`S` must be finite"):
        brand_update(U, S, Vh, A, B)


def test_light_correction_rejects_n_correct(rng):
    U, w = _low_rank_evd(rng, 10, 3)
    with pytest.raises(ValueError, match=r"`n_correct` must be in \[1, r\] = \[1, 3\]"):
        brand_light_correction(U, w, np.eye(10), 4)


def test_light_correction_rejects_matrix_shape(rng):
    U, w = _low_rank_evd(rng, 10, 3)
    with pytest.raises(ValueError, match=r"`M` must have shape \(d, d\) = \(10, 10\)"):
        brand_light_correction(U, w, np.eye(9), 2)


def test_spectrum_continuation_rejects_empty():
    with pytest.raises(ValueError, match=r"`eigenvalues` must hold at least one eigenvalue"):
        spectrum_continuation(np.zeros(0))


# ------------------------------------------------------------------------------------------------------------
# property test
# ------------------------------------------------------------------------------------------------------------


@given(
    d=st.integers(4, 24),
    k=st.integers(0, 6),
    n=st.integers(1, 6),
    decay=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_brand_update_sym_property(d, k, n, decay, seed):
    rng = np.random.default_rng(seed)
    k = min(k, d)
    U, w = _low_rank_evd(rng, d, k) if k else (np.zeros((d, 0)), np.zeros(0))
    A = rng.standard_normal((d, n)) * rng.uniform(0.1, 10)
    M = decay * (U * w) @ U.T + A @ A.T
    wn, Un = brand_update_sym(U, w, A, decay=decay)
    scale = max(1.0, np.abs(M).max())
    assert Un.shape[1] <= min(d, k + n)
    assert _orth_error(Un) < 1e-12
    assert np.all(np.diff(wn) <= 1e-12 * scale)
    np.testing.assert_allclose((Un * wn) @ Un.T, M, atol=1e-11 * scale)
    np.testing.assert_allclose(wn, np.linalg.eigvalsh(M)[::-1][: wn.shape[0]], atol=1e-11 * scale)
