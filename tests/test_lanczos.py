"""lanczos_svd against np.linalg.svd on every backend and dtype."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.sparse.linalg as spla
from hypothesis import given
from hypothesis import strategies as st

from kronalg import SampleKronSum
from kronalg.lanczos import lanczos_svd
from kronalg.results import ConvergenceWarning, SVDResult
from tests.backends import assert_backend_array, to_numpy


def _matrix(rng, m, n, s):
    U, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    V, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return (U * np.asarray(s)) @ V.T


def _check_triplets(M, res, k, *, rtol, vec_tol):
    """Values, orthonormality, residuals, and the rank-k truncation against the dense SVD."""
    U_ref, S_ref, Vh_ref = np.linalg.svd(M, full_matrices=False)
    U, S, Vh = (to_numpy(x) for x in res)
    assert U.shape == (M.shape[0], k) and S.shape == (k,) and Vh.shape == (k, M.shape[1])
    assert np.all(np.diff(S) <= 0)
    np.testing.assert_allclose(S, S_ref[:k], rtol=rtol, atol=rtol * S_ref[0])
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=vec_tol)
    np.testing.assert_allclose(Vh @ Vh.T, np.eye(k), atol=vec_tol)
    res_a = np.linalg.norm(M @ Vh.T - U * S, axis=0)
    res_t = np.linalg.norm(M.T @ U - Vh.T * S, axis=0)
    assert np.max(np.maximum(res_a, res_t)) <= 2 * res.info.tol * S_ref[0]
    truncation = (U_ref[:, :k] * S_ref[:k]) @ Vh_ref[:k]
    np.testing.assert_allclose((U * S) @ Vh, truncation, atol=vec_tol * S_ref[0])
    for i in range(k):  # agreement with the dense vectors up to sign (distinct values here)
        assert abs(abs(U[:, i] @ U_ref[:, i]) - 1) < vec_tol and abs(abs(Vh[i] @ Vh_ref[i]) - 1) < vec_tol
    assert np.all(np.abs(U).argmax(axis=0) == U.argmax(axis=0))  # svd_flip signs


@pytest.mark.parametrize("shape", [(40, 30), (25, 45)])
def test_lanczos_matches_dense_svd(backend, dtype, rng, shape):
    m, n = shape
    M = _matrix(rng, m, n, 0.7 ** np.arange(min(m, n)))
    res = lanczos_svd(backend.asarray(M, dtype), 4, seed=0)
    for x in res:
        assert_backend_array(backend, x, dtype)
    assert res.info.converged and len(res.info.residuals) == 4
    assert max(res.info.residuals) <= res.info.tol
    f64 = dtype == "float64"
    _check_triplets(M, res, 4, rtol=1e-12 if f64 else 1e-5, vec_tol=1e-9 if f64 else 1e-3)


def test_lanczos_restarts(backend, rng):
    """A small Krylov dimension forces several restart cycles."""
    M = _matrix(rng, 80, 60, 0.95 ** np.arange(60))
    res = lanczos_svd(backend.asarray(M), 5, krylov_dim=8, seed=1)
    assert res.info.iterations > 2 and res.info.converged
    _check_triplets(M, res, 5, rtol=1e-12, vec_tol=1e-8)


@functools.cache
def _ill_conditioned():
    rng = np.random.default_rng(7)
    s = np.concatenate([np.logspace(0, -9, 10), np.logspace(-9.2, -10, 190)])
    return _matrix(rng, 300, 200, s), s


def test_lanczos_ill_conditioned(backend):
    """σ from 1 to 1e-10: small top-k triplets stay accurate relative to σ_1 (no AᵀA)."""
    M, s = _ill_conditioned()
    res = lanczos_svd(backend.asarray(M), 10, seed=0)
    U, S, Vh = (to_numpy(x) for x in res)
    assert res.info.converged
    res_a = np.linalg.norm(M @ Vh.T - U * S, axis=0)
    res_t = np.linalg.norm(M.T @ U - Vh.T * S, axis=0)
    assert np.all(np.maximum(res_a, res_t) <= 2 * res.info.tol * s[0])
    np.testing.assert_allclose(S, s[:10], rtol=1e-3, atol=1e-14)  # σ_10 = 1e-9 to 3 digits
    np.testing.assert_allclose(S[:6], s[:6], rtol=1e-8)


def test_lanczos_clustered_spectrum(backend, rng):
    s = np.concatenate([[3.0, 1 + 2e-9, 1 + 1e-9, 1.0], 0.5 * 0.9 ** np.arange(46)])
    M = _matrix(rng, 70, 50, s)
    res = lanczos_svd(backend.asarray(M), 4, seed=3)
    U, S, Vh = (to_numpy(x) for x in res)
    np.testing.assert_allclose(S, s[:4], rtol=1e-12)
    U_ref, S_ref, Vh_ref = np.linalg.svd(M)
    np.testing.assert_allclose((U * S) @ Vh, (U_ref[:, :4] * S_ref[:4]) @ Vh_ref[:4], atol=1e-8)
    # the cluster's vectors are only defined as a subspace: compare projectors of the top 4
    np.testing.assert_allclose(U @ U.T, U_ref[:, :4] @ U_ref[:, :4].T, atol=1e-8)
    np.testing.assert_allclose(Vh.T @ Vh, Vh_ref[:4].T @ Vh_ref[:4], atol=1e-8)


@pytest.mark.parametrize("shape", [(12, 7), (7, 12)])
def test_lanczos_full_dimension_is_exact(rng, shape):
    M = rng.standard_normal(shape)
    res = lanczos_svd(M, 7, seed=0)
    assert res.info.iterations == 1 and res.info.converged
    _check_triplets(M, res, 7, rtol=1e-12, vec_tol=1e-10)


def test_lanczos_low_rank_breakdown(backend, rng):
    """Rank 3 with k = 5: an invariant subspace is found and the rest are zeros."""
    M = _matrix(rng, 30, 20, [3.0, 2.0, 1.0])
    res = lanczos_svd(backend.asarray(M), 5, seed=0)
    U, S, Vh = (to_numpy(x) for x in res)
    assert res.info.converged
    np.testing.assert_allclose(S, [3.0, 2.0, 1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(U.T @ U, np.eye(5), atol=1e-10)
    np.testing.assert_allclose((U * S) @ Vh, M, atol=1e-12)


def test_lanczos_zero_operator():
    res = lanczos_svd(np.zeros((6, 4)), 2, seed=0)
    assert res.info.converged and np.all(res.S == 0)


def test_lanczos_warm_start_needs_fewer_products(rng):
    M = _matrix(rng, 120, 90, 1.0 / np.arange(1, 91))
    cold = lanczos_svd(M, 5, seed=0)
    M2 = M + 1e-7 * rng.standard_normal(M.shape)
    warm = lanczos_svd(M2, 5, x0=cold)
    cold2 = lanczos_svd(M2, 5, seed=0)
    assert warm.info.converged and cold2.info.converged
    assert warm.info.matvecs < 0.75 * cold2.info.matvecs
    _check_triplets(M2, warm, 5, rtol=1e-12, vec_tol=1e-8)
    wide = lanczos_svd(M2.T, 5, x0=SVDResult(cold.Vh.T, cold.S, cold.U.T))  # m < n: left vectors start
    assert wide.info.matvecs < 0.75 * cold2.info.matvecs


def test_lanczos_start_vector(rng):
    M = _matrix(rng, 40, 30, 0.8 ** np.arange(30))
    for shape in ((40, 30), (30, 40)):
        A = M if shape == (40, 30) else M.T
        res = lanczos_svd(A, 3, x0=np.ones(shape[1]))
        _check_triplets(A, res, 3, rtol=1e-12, vec_tol=1e-9)


def test_lanczos_on_linear_operator(rng):
    M = _matrix(rng, 50, 35, 0.8 ** np.arange(35))
    res = lanczos_svd(spla.aslinearoperator(M), 3, seed=2)
    assert isinstance(res.U, np.ndarray)
    _check_triplets(M, res, 3, rtol=1e-12, vec_tol=1e-9)


def test_lanczos_on_rearranged_sample_kron_sum(backend, dtype, rng):
    G, A = rng.standard_normal((60, 5)), rng.standard_normal((60, 4))
    F = SampleKronSum.from_factors(backend.asarray(G, dtype), backend.asarray(A, dtype), weights=1 / 60)
    R = F.rearranged
    res = lanczos_svd(R, 3, seed=0)
    assert_backend_array(backend, res.U, dtype)
    dense = to_numpy(R.to_dense())
    S_ref = np.linalg.svd(dense, compute_uv=False)
    f64 = dtype == "float64"
    np.testing.assert_allclose(to_numpy(res.S), S_ref[:3], rtol=1e-10 if f64 else 1e-4)
    U, S, Vh = (to_numpy(x) for x in res)
    r = np.linalg.norm(dense.T @ U - Vh.T * S, axis=0)
    assert np.all(r <= 2 * res.info.tol * S_ref[0])


def test_lanczos_warns_when_not_converged(rng):
    M = _matrix(rng, 60, 50, 1.0 - 0.001 * np.arange(50))
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = lanczos_svd(M, 4, krylov_dim=6, maxiter=1, seed=0)
    assert not res.info.converged and res.info.iterations == 1
    assert res.U.shape == (60, 4) and max(res.info.residuals) > res.info.tol


@given(
    m=st.integers(2, 25),
    n=st.integers(2, 25),
    kfrac=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_lanczos_property_numpy(m, n, kfrac, seed):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((m, n))
    k = 1 + int(kfrac * (min(m, n) - 1))
    res = lanczos_svd(M, k, seed=seed)
    U, S, Vh = res
    S_ref = np.linalg.svd(M, compute_uv=False)
    np.testing.assert_allclose(S, S_ref[:k], rtol=1e-8, atol=1e-9 * S_ref[0])
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=1e-8)
    np.testing.assert_allclose(Vh @ Vh.T, np.eye(k), atol=1e-8)
    assert np.linalg.norm(M @ Vh.T - U * S) <= 1e-8 * S_ref[0]


# --- validation: one rule per test -------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, -1])
def test_lanczos_rejects_nonpositive_k(k):
    with pytest.raises(ValueError, match=r"`k` must satisfy 1 <= k <= min\(m, n\) = 3"):
        lanczos_svd(np.ones((4, 3)), k)


def test_lanczos_rejects_k_above_min_dim():
    with pytest.raises(ValueError, match=r"`k` must satisfy 1 <= k <= min\(m, n\) = 3 .* got 4"):
        lanczos_svd(np.ones((4, 3)), 4)


def test_lanczos_rejects_non_int_k():
    with pytest.raises(TypeError, match="`k` must be an int"):
        lanczos_svd(np.ones((4, 3)), 2.0)


@pytest.mark.parametrize("krylov_dim", [2, 11])
def test_lanczos_rejects_bad_krylov_dim(krylov_dim):
    with pytest.raises(ValueError, match="`krylov_dim` must satisfy k < krylov_dim <= min"):
        lanczos_svd(np.ones((12, 10)), 2, krylov_dim=krylov_dim)


def test_lanczos_rejects_x0_of_wrong_shape():
    with pytest.raises(ValueError, match=r"`x0` must have shape \(3,\)"):
        lanczos_svd(np.ones((4, 3)), 1, x0=np.ones((3, 1)))


@pytest.mark.parametrize("tol", [0.0, 2.0, float("inf")])
def test_lanczos_rejects_bad_tol(tol):
    with pytest.raises(ValueError, match="`tol` must satisfy 0 < tol < 1"):
        lanczos_svd(np.ones((4, 3)), 1, tol=tol)


def test_lanczos_rejects_bad_maxiter():
    with pytest.raises(ValueError, match="`maxiter` must be >= 1"):
        lanczos_svd(np.ones((4, 3)), 1, maxiter=0)


def test_lanczos_rejects_mixed_backends():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="`x0` must come from the operator's array library"):
        lanczos_svd(torch.ones((4, 3), dtype=torch.float64), 1, x0=np.ones(3))


def test_lanczos_rejects_mixed_backends_in_svdresult():
    torch = pytest.importorskip("torch")
    x0 = SVDResult(torch.ones((4, 1)), torch.ones(1), torch.ones((1, 3)))
    with pytest.raises(TypeError, match=r"`x0\.Vh\.T` must come from the operator's array library"):
        lanczos_svd(np.ones((4, 3)), 1, x0=x0)
