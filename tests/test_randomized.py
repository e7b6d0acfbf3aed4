"""randomized_svd and randomized_eigh against dense NumPy references, on every backend.

Bounds tested (Frobenius error ``e = ‖A − U S Vh‖_F`` against the Eckart–Young
optimum ``e* = sqrt(Σ_{i>k} σ_i²)``):

* exponential decay σ_i = 2^{-i}: ``e ≤ 1.001·e*`` and the top-k singular values
  to ``1e-8`` (float64) relative — the fast-decay case is essentially exact;
* polynomial decay σ_i = 1/i²: ``e ≤ 1.01·e*``, top-k values to 1e-3 relative;
* flat spectrum (σ linear from 1 to 0.5): ``e ≤ 1.02·e*`` only (measured 1.004) —
  the values are underestimates (interlacing) within 10 % (measured 3 %): the
  weaker accuracy the docstring's bound predicts for slow decay.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kronalg import KronSum, SampleKronSum
from kronalg.randomized import randomized_eigh, randomized_svd
from tests.backends import assert_backend_array, make_backend, to_numpy


def _matrix(rng, m, n, sigma):
    U, _ = np.linalg.qr(rng.standard_normal((m, sigma.size)))
    V, _ = np.linalg.qr(rng.standard_normal((n, sigma.size)))
    return (U * sigma) @ V.T


def _errors(A, res, k):
    U, S, Vh = (to_numpy(x) for x in res)
    sigma = np.linalg.svd(A, compute_uv=False)
    return np.linalg.norm(A - (U * S) @ Vh), np.sqrt(np.sum(sigma[k:] ** 2)), S, sigma[:k]


def _check_orthonormal(res, dtype):
    U, _, Vh = (to_numpy(x) for x in res)
    atol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=atol)
    np.testing.assert_allclose(Vh @ Vh.T, np.eye(Vh.shape[0]), atol=atol)


# ---------------------------------------------------------------------------
# accuracy on known spectra
# ---------------------------------------------------------------------------
def test_exponential_decay(backend, dtype, rng):
    m, n, k = 60, 40, 8
    A = _matrix(rng, m, n, 2.0 ** -np.arange(n))
    res = randomized_svd(backend.asarray(A, dtype), k, seed=0)
    for x in res:
        assert_backend_array(backend, x, dtype)
    assert res.U.shape == (m, k) and res.S.shape == (k,) and res.Vh.shape == (k, n)
    err, opt, S, sigma = _errors(A, res, k)
    if dtype == "float64":
        assert err <= 1.001 * opt
        np.testing.assert_allclose(S, sigma, rtol=1e-8)
    else:
        assert err <= 1.001 * opt + 1e-5
        np.testing.assert_allclose(S, sigma, rtol=1e-4, atol=1e-6)
    assert np.all(np.diff(S) <= 0)
    _check_orthonormal(res, dtype)
    assert res.info.iterations == 4  # "auto": k >= 0.1·min(m, n)
    assert res.info.matvecs == 18 * (2 * 4 + 2) and res.info.converged


def test_polynomial_decay(backend, dtype, rng):
    m, n, k = 200, 150, 10
    A = _matrix(rng, m, n, 1.0 / np.arange(1, n + 1) ** 2)
    res = randomized_svd(backend.asarray(A, dtype), k, seed=1)
    assert res.info.iterations == 7  # "auto": k < 0.1·min(m, n)
    err, opt, S, sigma = _errors(A, res, k)
    assert err <= 1.01 * opt
    np.testing.assert_allclose(S, sigma, rtol=1e-3)
    _check_orthonormal(res, dtype)


def test_flat_spectrum_weaker_bound(rng):
    m, n, k = 120, 100, 10
    A = _matrix(rng, m, n, np.linspace(1.0, 0.5, n))
    res = randomized_svd(A, k, seed=2)
    err, opt, S, sigma = _errors(A, res, k)
    assert err <= 1.02 * opt
    assert np.all(S <= sigma * (1 + 1e-12))  # Ritz values interlace from below
    assert np.all(S >= 0.9 * sigma)


def test_power_iterations_are_normalized(rng):
    """Unnormalized A^{2q+1} Ω would lose every σ_i below σ_1·eps^{1/(2q+1)} (here i ≳ 3)."""
    A = _matrix(rng, 80, 60, 2.0 ** -np.arange(60))
    res = randomized_svd(A, 20, n_iter=10, seed=0)
    np.testing.assert_allclose(res.S, 2.0 ** -np.arange(20), rtol=1e-6)


def test_sketch_capped_at_min_dimension(rng):
    A = rng.standard_normal((12, 10))
    res = randomized_svd(A, 8, oversample=10, n_iter=0, seed=0)  # ell = min(18, 10) = 10: exact
    np.testing.assert_allclose(res.S, np.linalg.svd(A, compute_uv=False)[:8], rtol=1e-12)
    assert res.info.matvecs == 10 * 2


def test_wide_matrix(rng):
    A = _matrix(rng, 30, 70, 2.0 ** -np.arange(30))
    res = randomized_svd(A, 5, seed=0)
    assert res.U.shape == (30, 5) and res.Vh.shape == (5, 70)
    err, opt, S, sigma = _errors(A, res, 5)
    assert err <= 1.001 * opt
    np.testing.assert_allclose(S, sigma, rtol=1e-10)


# ---------------------------------------------------------------------------
# determinism and backend agreement
# ---------------------------------------------------------------------------
def test_same_seed_same_result(rng):
    A = _matrix(rng, 50, 40, 1.0 / np.arange(1, 41))
    r1, r2 = randomized_svd(A, 6, seed=7), randomized_svd(A, 6, seed=7)
    r3 = randomized_svd(A, 6, seed=np.random.default_rng(7))
    for a, b, c in zip(r1, r2, r3):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert np.max(np.abs(r1.U[:, -1] - randomized_svd(A, 6, n_iter=0, seed=8).U[:, -1])) > 1e-8


def test_backends_agree_with_numpy(backend, rng):
    """Same seed, same start vectors: every backend gives NumPy's vectors (signs included)."""
    A = _matrix(rng, 70, 50, 0.7 ** np.arange(50))
    ref = randomized_svd(A, 6, seed=3)
    res = randomized_svd(backend.asarray(A, "float64"), 6, seed=3)
    for a, b in zip(res, ref):
        np.testing.assert_allclose(to_numpy(a), b, atol=1e-10)
    w_ref, V_ref = randomized_eigh(A @ A.T, 6, seed=3)
    w, V = randomized_eigh(backend.asarray(A @ A.T, "float64"), 6, seed=3)
    np.testing.assert_allclose(to_numpy(w), w_ref, rtol=1e-10)
    np.testing.assert_allclose(to_numpy(V), V_ref, atol=1e-8)


# ---------------------------------------------------------------------------
# operators
# ---------------------------------------------------------------------------
def test_scipy_linear_operator(rng):
    from scipy.sparse.linalg import aslinearoperator

    A = _matrix(rng, 60, 45, 1.0 / np.arange(1, 46) ** 2)
    ref = randomized_svd(A, 5, seed=0)
    res = randomized_svd(aslinearoperator(A), 5, seed=0)
    assert isinstance(res.U, np.ndarray)
    for a, b in zip(res, ref):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_kronsum_rearranged(backend, dtype, tol, rng):
    terms = [(rng.standard_normal((3, 4)), rng.standard_normal((5, 2))) for _ in range(3)]
    R = sum(np.outer(A.ravel(), B.ravel()) for A, B in terms)  # R(Σ A_i⊗B_i)
    op = KronSum([(backend.asarray(A, dtype), backend.asarray(B, dtype)) for A, B in terms]).rearranged
    res = randomized_svd(op, 3, seed=0)
    assert_backend_array(backend, res.U, dtype)
    U, S, Vh = (to_numpy(x) for x in res)
    np.testing.assert_allclose(S, np.linalg.svd(R, compute_uv=False)[:3], rtol=tol["rtol"] * 10)
    np.testing.assert_allclose((U * S) @ Vh, R, rtol=tol["rtol"] * 10, atol=tol["atol"] * 100)


# ---------------------------------------------------------------------------
# randomized_eigh
# ---------------------------------------------------------------------------
def test_eigh_psd(backend, dtype, rng):
    n, k = 80, 6
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    lam = 0.6 ** np.arange(n)
    K = (Q * lam) @ Q.T
    res = randomized_eigh(backend.asarray(K, dtype), k, seed=0)
    w, V = res
    assert_backend_array(backend, w, dtype)
    assert_backend_array(backend, V, dtype)
    w, V = to_numpy(w), to_numpy(V)
    rtol = 1e-10 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(w, lam[:k], rtol=rtol)
    np.testing.assert_allclose(np.abs(V.T @ Q[:, :k]), np.eye(k), atol=1e-6 if dtype == "float64" else 1e-3)
    np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-12 if dtype == "float64" else 1e-5)
    assert np.all(V[np.argmax(np.abs(V), axis=0), np.arange(k)] > 0)  # deterministic signs
    assert res.info.iterations == 7 and res.info.matvecs == 16 * (2 * 7 + 2)


def test_eigh_sample_kron_sum(rng):
    """A layer's Fisher block as an implicit PSD operator (only matmat is used)."""
    G, A = rng.standard_normal((40, 4)), rng.standard_normal((40, 5))
    F = SampleKronSum.from_factors(G, A, weights=1 / 40)
    w, V = randomized_eigh(F, 4, seed=0)
    ref = np.linalg.eigh(F.to_dense())[0][::-1][:4]
    np.testing.assert_allclose(w, ref, rtol=1e-6)
    np.testing.assert_allclose(F.to_dense() @ V, V * w, atol=1e-6 * ref[0])


def test_eigh_indefinite_keeps_largest_magnitude(rng):
    Q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    lam = np.concatenate([[5.0, -4.0, 3.0], 0.01 * rng.standard_normal(27)])
    w, _ = randomized_eigh((Q * lam) @ Q.T, 3, seed=0)
    np.testing.assert_allclose(w, [5.0, 3.0, -4.0], rtol=1e-8)


# ---------------------------------------------------------------------------
# property test
# ---------------------------------------------------------------------------
@given(
    m=st.integers(2, 25),
    n=st.integers(2, 25),
    data=st.data(),
    seed=st.integers(0, 2**31 - 1),
)
def test_exact_recovery_of_rank_k(m, n, data, seed):
    r = data.draw(st.integers(1, min(m, n)))
    oversample = data.draw(st.integers(2, 6))
    gen = np.random.default_rng(seed)
    A = gen.standard_normal((m, r)) @ gen.standard_normal((r, n))
    U, S, Vh = randomized_svd(A, r, oversample=oversample, seed=seed)
    np.testing.assert_allclose((U * S) @ Vh, A, atol=1e-9 * np.linalg.norm(A))
    np.testing.assert_allclose(S, np.linalg.svd(A, compute_uv=False)[:r], rtol=1e-8)


# ---------------------------------------------------------------------------
# validation: each rule its own test
# ---------------------------------------------------------------------------
A_BAD = np.ones((6, 4))


@pytest.mark.parametrize("k", [0, -2])
def test_k_not_positive(k):
    with pytest.raises(ValueError, match=r"`k` must satisfy 1 <= k <= min\(m, n\) = 4"):
        randomized_svd(A_BAD, k)


def test_k_above_min_dimension():
    with pytest.raises(ValueError, match=r"`k` must satisfy .* got 5"):
        randomized_svd(A_BAD, 5)


def test_k_not_int():
    with pytest.raises(TypeError, match="`k` must be an int, got float"):
        randomized_svd(A_BAD, 2.0)


@pytest.mark.parametrize("n_iter", ["fast", -1])
def test_n_iter_bad_value(n_iter):
    with pytest.raises(ValueError, match='`n_iter` must be "auto" or an int >= 0'):
        randomized_svd(A_BAD, 2, n_iter=n_iter)


def test_n_iter_bad_kind():
    with pytest.raises(TypeError, match='`n_iter` must be "auto" or an int >= 0, got float'):
        randomized_svd(A_BAD, 2, n_iter=2.5)


def test_oversample_negative():
    with pytest.raises(ValueError, match="`oversample` must be >= 0, got -1"):
        randomized_svd(A_BAD, 2, oversample=-1)


def test_seed_bad_kind():
    with pytest.raises(TypeError, match=r"`seed` must be None, an int or a numpy\.random\.Generator, got str"):
        randomized_svd(A_BAD, 2, seed="abc")


def test_integer_matrix_rejected():
    with pytest.raises(TypeError, match="`op` must have a real floating dtype"):
        randomized_svd(np.ones((5, 4), dtype=np.int64), 2)


def test_eigh_non_square():
    with pytest.raises(ValueError, match=r"`op` must be square \(symmetric\) for randomized_eigh, got shape \(6, 4\)"):
        randomized_eigh(A_BAD, 2)


def test_mixed_backends():
    """An operator declaring torch but answering with NumPy arrays is refused, not silently mixed."""
    torch_backend = make_backend("torch")

    class Liar:
        xp, device = torch_backend.xp, torch_backend.device
        shape, dtype = (6, 4), torch_backend.dtype("float64")

        def matvec(self, x):
            return np.ones(6)

        def rmatvec(self, y):
            return np.ones(4)

        def matmat(self, X):
            return np.ones((6, X.shape[1]))

        def rmatmat(self, Y):
            return np.ones((4, Y.shape[1]))

    with pytest.raises(TypeError, match="mixed backends"):
        randomized_svd(Liar(), 2)
