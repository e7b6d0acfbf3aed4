"""The exact Gram route: implicit KPSVD equal to the dense SVD route."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kronalg import KronSum, SampleKronSum, nearest_kronecker, rearrange
from kronalg.gram import gram_problem, gram_svd
from kronalg.nearest import gram_size
from tests.backends import assert_backend_array, to_numpy


def _samples(kind, rng, n=12, p=5, r=4, T=3):
    w = rng.random(n) / n
    if kind == "rank1":
        return SampleKronSum.from_factors(rng.standard_normal((n, p)), rng.standard_normal((n, r)) + 0.3, w), w
    if kind == "conv":
        G, A = rng.standard_normal((n, T, p)), rng.standard_normal((n, T, r)) + 0.3
        return SampleKronSum.from_factors(G, A, w), w
    return SampleKronSum(rng.standard_normal((n, p, r)), w), w


def _as_backend(backend, dtype, F, kind, rng):
    """Rebuild the same sum on the backend under test."""
    if F.kind == "rank1":
        return SampleKronSum.from_factors(
            backend.asarray(F._G, dtype), backend.asarray(F._A, dtype), backend.asarray(F.weights, dtype)
        )
    if kind == "conv":
        G, A = F.location_factors()
        return SampleKronSum.from_factors(
            backend.asarray(G, dtype), backend.asarray(A, dtype), backend.asarray(F.weights, dtype)
        )
    return SampleKronSum(backend.asarray(F.samples(), dtype), backend.asarray(F.weights, dtype))


@pytest.mark.parametrize("kind", ["rank1", "conv", "dense"])
@pytest.mark.parametrize("rank", [1, 3])
def test_gram_equals_dense_svd_route(backend, dtype, rng, kind, rank):
    F_np, _ = _samples(kind, rng)
    F = _as_backend(backend, dtype, F_np, kind, rng)
    K = nearest_kronecker(F, rank=rank, method="gram")
    ref = nearest_kronecker(F_np, rank=rank, method="svd")
    assert K.info.method == "gram" and K.info.converged
    A0, _ = K.factors[0]
    assert_backend_array(backend, A0, dtype)
    scale = np.abs(ref.to_dense()).max()
    atol = (1e-4 if dtype == "float32" else 1e-8) * scale
    np.testing.assert_allclose(to_numpy(K.to_dense()), ref.to_dense(), atol=atol)
    np.testing.assert_allclose(
        to_numpy(K.info.singular_values), to_numpy(ref.info.singular_values), rtol=1e-4 if dtype == "float32" else 1e-10
    )
    assert K.info.relative_residual == pytest.approx(ref.info.relative_residual, rel=1e-3, abs=1e-6)


def test_gram_leading_pair_is_psd(rng):
    F, _ = _samples("rank1", rng, n=30)
    K = nearest_kronecker(F, rank=2, method="gram")
    A0, B0 = K.factors[0]
    for M in (A0, B0):
        np.testing.assert_array_equal(M, M.T)
        assert np.linalg.eigvalsh(M).min() >= -1e-12 * np.abs(M).max()


def test_gram_handles_duplicate_samples_and_rank_deficiency(rng):
    # n > p(p+1)/2 and repeated samples make the Gram matrices singular.
    G, A = rng.standard_normal((5, 2)), rng.standard_normal((5, 2))
    G, A = np.concatenate([G] * 8), np.concatenate([A] * 8)
    F = SampleKronSum.from_factors(G, A, weights=1 / 40)
    K = nearest_kronecker(F, rank=3, method="gram")
    ref = nearest_kronecker(F, rank=3, method="svd")
    np.testing.assert_allclose(K.to_dense(), ref.to_dense(), atol=1e-9 * np.abs(ref.to_dense()).max())


def test_gram_on_kronsum_pads_beyond_its_rank(rng):
    terms = [(rng.standard_normal((3, 3)), rng.standard_normal((2, 2))) for _ in range(2)]
    K = nearest_kronecker(KronSum(terms), rank=3, method="gram")
    S = np.asarray(K.info.singular_values)
    assert S[2] == 0.0
    np.testing.assert_allclose(K.to_dense(), sum(np.kron(A, B) for A, B in terms), atol=1e-10)


def test_gram_on_dense_input(rng):
    M = rng.standard_normal((12, 12))
    K = nearest_kronecker(M, (3, 3), (4, 4), rank=2, method="gram")
    ref = nearest_kronecker(M, (3, 3), (4, 4), rank=2, method="svd")
    np.testing.assert_allclose(K.to_dense(), ref.to_dense(), atol=1e-9)


def test_auto_picks_gram_for_small_implicit_sums(rng):
    F, _ = _samples("rank1", rng)
    assert gram_size(F) == 12
    assert nearest_kronecker(F).info.method == "gram"


def test_gram_refuses_too_many_coefficients(rng):
    F = SampleKronSum.from_factors(rng.standard_normal((2, 60, 50)), rng.standard_normal((2, 60, 55)))
    with pytest.raises(ValueError, match='method="gram" works in n·T² = 5000 coefficients'):
        nearest_kronecker(F, method="gram")


def test_gram_svd_orthonormal_triplets(rng):
    F, _ = _samples("rank1", rng, n=20)
    problem = gram_problem(F)
    X, S, Y, info = gram_svd(problem, 3)
    U = problem.left(X.T).reshape(3, -1).T
    V = problem.right(Y.T).reshape(3, -1).T
    np.testing.assert_allclose(U.T @ U, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(V.T @ V, np.eye(3), atol=1e-12)
    R = rearrange(F.to_dense(), F.a_shape, F.b_shape)
    np.testing.assert_allclose(R @ V, U * S, atol=1e-9 * S[0])
    assert info.converged and max(info.residuals) <= 1e-8  # the Gram metric resolves ~sqrt(eps)·σ₁ at worst


@given(n=st.integers(1, 15), p=st.integers(1, 4), r=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_gram_matches_svd_property(n, p, r, seed):
    rng = np.random.default_rng(seed)
    F = SampleKronSum.from_factors(rng.standard_normal((n, p)), rng.standard_normal((n, r)), rng.random(n))
    K = nearest_kronecker(F, rank=1, method="gram")
    ref = nearest_kronecker(F, rank=1, method="svd")
    scale = max(np.abs(ref.to_dense()).max(), 1e-300)
    np.testing.assert_allclose(K.to_dense(), ref.to_dense(), atol=1e-7 * scale)


@pytest.mark.parametrize("kind", ["rank1", "conv"])
def test_deflation_runs_exact_gram_stages(backend, dtype, rng, kind):
    F_np, _ = _samples(kind, rng)
    F = _as_backend(backend, dtype, F_np, kind, rng)
    K = nearest_kronecker(F, rank=3, method="deflation")
    ref = nearest_kronecker(F_np, rank=3, method="svd")
    assert K.info.method == "deflation" and K.info.converged
    atol = (1e-4 if dtype == "float32" else 1e-8) * np.abs(ref.to_dense()).max()
    np.testing.assert_allclose(to_numpy(K.to_dense()), ref.to_dense(), atol=atol)


def test_gram_problem_without_removes_terms_and_keeps_the_norm_exact(rng):
    F, _ = _samples("rank1", rng, n=15)
    problem = gram_problem(F)
    X, S, Y, _ = gram_svd(problem, 1)
    deflated = problem.without(X, S, Y)
    R = rearrange(F.to_dense(), F.a_shape, F.b_shape)
    u = problem.left(X.T).reshape(1, -1).T
    v = problem.right(Y.T).reshape(1, -1).T
    R2 = R - S[0] * u @ v.T
    assert deflated.fro_norm_sq() == pytest.approx(np.sum(R2**2), rel=1e-10)
    _, S2, _, _ = gram_svd(deflated, 2)
    np.testing.assert_allclose(S2, np.linalg.svd(R2, compute_uv=False)[:2], rtol=1e-9)


def test_gram_compacts_convolutions_with_many_locations(rng):
    # T = 40 locations but X_n is 3×4: the Gram route works with n·min(p, r)² coefficients, exactly.
    F = SampleKronSum.from_factors(rng.standard_normal((5, 40, 3)), rng.standard_normal((5, 40, 4)), weights=0.2)
    assert gram_size(F) == 5 * 9
    K = nearest_kronecker(F, rank=2, method="gram")
    ref = nearest_kronecker(F, rank=2, method="svd")
    np.testing.assert_allclose(K.to_dense(), ref.to_dense(), atol=1e-9 * np.abs(ref.to_dense()).max())


@pytest.mark.parametrize("scale", [2.0**-24, 2.0**24])
def test_gram_is_scale_invariant_in_float32(rng, scale):
    """Tiny (or huge) per-sample gradients: the Gram iteration divides the scale out instead of underflowing.

    Scaling by a power of two is exact, so the float32 answer must be the unscaled one times ``scale²``.
    """
    import warnings

    G = rng.standard_normal((96, 24)).astype(np.float32)
    A = rng.standard_normal((96, 13)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unit = nearest_kronecker(SampleKronSum.from_factors(G, A, weights=1 / 96), rank=2, method="gram")
        K = nearest_kronecker(SampleKronSum.from_factors(scale * G, A, weights=1 / 96), rank=2, method="gram")
    assert K.info.converged
    dense, dense_ref = K.to_dense().astype(np.float64), scale**2 * unit.to_dense().astype(np.float64)
    assert np.linalg.norm(dense - dense_ref) <= 1e-5 * np.linalg.norm(dense_ref)
