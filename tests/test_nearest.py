"""Dense KPSVD: nearest_kronecker against the SVD of the rearranged matrix."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kronalg import KronSum, SampleKronSum, nearest_kronecker, rearrange
from tests.backends import assert_backend_array, to_numpy


def _reference(M, a, b, k):
    """Best Kronecker-rank-k approximation and its error from NumPy's SVD."""
    U, S, Vh = np.linalg.svd(rearrange(M, a, b), full_matrices=False)
    approx = sum(S[i] * np.kron(U[:, i].reshape(a), Vh[i].reshape(b)) for i in range(k))
    return approx, S


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize(("a", "b"), [((3, 4), (2, 5)), ((4, 4), (3, 3)), ((1, 6), (5, 1))])
def test_nearest_matches_svd_reference(backend, dtype, rng, rank, a, b):
    M = rng.standard_normal((a[0] * b[0], a[1] * b[1]))
    rank = min(rank, a[0] * a[1], b[0] * b[1])
    K = nearest_kronecker(backend.asarray(M, dtype), a, b, rank=rank, method="svd")
    assert len(K) == rank and K.a_shape == a and K.b_shape == b
    A0, _ = K.factors[0]
    assert_backend_array(backend, A0, dtype)
    ref, S = _reference(M, a, b, rank)
    rtol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(to_numpy(K.to_dense()), ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    np.testing.assert_allclose(to_numpy(K.info.singular_values), S[:rank], rtol=rtol)
    err = np.linalg.norm(M - ref)
    assert K.info.residual == pytest.approx(err, rel=1e-3 if dtype == "float32" else 1e-8, abs=1e-5)
    assert K.info.relative_residual == pytest.approx(err / np.linalg.norm(M), rel=1e-3, abs=1e-6)
    assert K.info.method == "svd" and K.info.converged and K.info.iterations == 0


def test_nearest_recovers_exact_kronecker_rank(backend, dtype, rng):
    terms = [(rng.standard_normal((3, 3)), rng.standard_normal((4, 2))) for _ in range(2)]
    M = sum(np.kron(A, B) for A, B in terms)
    K = nearest_kronecker(backend.asarray(M, dtype), (3, 3), (4, 2), rank=2)
    np.testing.assert_allclose(to_numpy(K.to_dense()), M, rtol=1e-4 if dtype == "float32" else 1e-10, atol=1e-4)
    assert K.info.relative_residual < (1e-3 if dtype == "float32" else 1e-7)


def test_leading_pair_symmetric_psd_for_psd_input(backend, dtype, rng):
    # A PSD matrix that is not a Kronecker product: Fisher-like second moment.
    X = rng.standard_normal((20, 4, 3))
    Xf = X.reshape(20, -1)
    F = Xf.T @ Xf / 20
    K = nearest_kronecker(backend.asarray(F, dtype), (4, 4), (3, 3), rank=2)
    A0, B0 = (to_numpy(f) for f in K.factors[0])
    np.testing.assert_array_equal(A0, A0.T)
    np.testing.assert_array_equal(B0, B0.T)
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert np.linalg.eigvalsh(A0).min() >= -tol * np.abs(A0).max()
    assert np.linalg.eigvalsh(B0).min() >= -tol * np.abs(B0).max()
    assert np.trace(A0) > 0 and np.trace(B0) > 0


def test_signs_are_deterministic_across_backends(rng):
    torch = pytest.importorskip("torch")
    M = rng.standard_normal((12, 12))
    Kn = nearest_kronecker(M, (3, 4), (4, 3), rank=3)
    Kt = nearest_kronecker(torch.from_numpy(M), (3, 4), (4, 3), rank=3)
    for (An, Bn), (At, Bt) in zip(Kn.factors, Kt.factors):
        np.testing.assert_allclose(An, At.numpy(), atol=1e-10)
        np.testing.assert_allclose(Bn, Bt.numpy(), atol=1e-10)


def test_nearest_on_implicit_sums(backend, dtype, rng):
    G, A = rng.standard_normal((9, 4)), rng.standard_normal((9, 3))
    F = SampleKronSum.from_factors(backend.asarray(G, dtype), backend.asarray(A, dtype), weights=1 / 9)
    dense = to_numpy(F.to_dense())
    K = nearest_kronecker(F, rank=2)
    ref, _ = _reference(dense, (4, 4), (3, 3), 2)
    rtol = 1e-4 if dtype == "float32" else 1e-10
    np.testing.assert_allclose(to_numpy(K.to_dense()), ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    terms = [(rng.standard_normal((3, 2)), rng.standard_normal((2, 4))) for _ in range(3)]
    S = KronSum([(backend.asarray(P, dtype), backend.asarray(Q, dtype)) for P, Q in terms])
    K2 = nearest_kronecker(S, rank=1)
    ref2, _ = _reference(sum(np.kron(P, Q) for P, Q in terms), (3, 2), (2, 4), 1)
    np.testing.assert_allclose(to_numpy(K2.to_dense()), ref2, rtol=rtol, atol=rtol * np.abs(ref2).max())


@given(
    p=st.integers(1, 4), q=st.integers(1, 4), r=st.integers(1, 4), s=st.integers(1, 4), seed=st.integers(0, 2**31 - 1)
)
def test_nearest_error_is_the_tail_of_the_spectrum(p, q, r, s, seed):
    # Eckart–Young through the rearrangement: ‖M − M̂_k‖² = Σ_{i>k} σ_i² and the error decreases with k.
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((p * r, q * s))
    S = np.linalg.svd(rearrange(M, (p, q), (r, s)), compute_uv=False)
    errors = []
    for k in range(1, min(p * q, r * s) + 1):
        K = nearest_kronecker(M, (p, q), (r, s), rank=k)
        err = np.linalg.norm(M - K.to_dense())
        assert err == pytest.approx(np.sqrt(np.sum(S[k:] ** 2)), abs=1e-9 * max(1, np.linalg.norm(M)))
        errors.append(err)
    assert all(e2 <= e1 + 1e-12 for e1, e2 in itertools.pairwise(errors))


# --- bad input ------------------------------------------------------------------------
def test_rejects_unknown_method():
    with pytest.raises(ValueError, match=r"`method` must be one of \('auto', 'svd', 'gram'"):
        nearest_kronecker(np.eye(4), (2, 2), (2, 2), method="power-iteration")


def test_rejects_bad_rank():
    with pytest.raises(ValueError, match="`rank` must be a positive int"):
        nearest_kronecker(np.eye(4), (2, 2), (2, 2), rank=0)
    with pytest.raises(ValueError, match="`rank` must be at most"):
        nearest_kronecker(np.eye(4), (2, 2), (2, 2), rank=5)


def test_rejects_missing_or_wrong_shapes():
    with pytest.raises(ValueError, match="`a_shape` and `b_shape` are required"):
        nearest_kronecker(np.eye(4))
    with pytest.raises(ValueError, match=r"`M` must have shape \(p\*r, q\*s\)"):
        nearest_kronecker(np.eye(4), (2, 2), (3, 2))
    F = SampleKronSum(np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match="does not match the operator's factor shape"):
        nearest_kronecker(F, (3, 3), None)


def test_rejects_nan_input():
    M = np.eye(4)
    M[0, 1] = np.nan
    with pytest.raises(ValueError, match="`M` must be finite"):
        nearest_kronecker(M, (2, 2), (2, 2))


def test_rejects_integer_input():
    with pytest.raises(TypeError, match="`M` must have a real floating dtype"):
        nearest_kronecker(np.eye(4, dtype=np.int64), (2, 2), (2, 2))
