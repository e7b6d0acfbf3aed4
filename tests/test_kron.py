"""kron, kron_matvec, rearrange/unrearrange and partial_trace against NumPy references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kronalg import kron, kron_matvec, partial_trace, rearrange, unrearrange
from tests.backends import assert_backend_array, to_numpy


def test_kron_matches_numpy(backend, dtype, tol, rng):
    A, B = rng.standard_normal((3, 4)), rng.standard_normal((2, 5))
    out = kron(backend.asarray(A, dtype), backend.asarray(B, dtype))
    assert_backend_array(backend, out, dtype)
    np.testing.assert_allclose(to_numpy(out), np.kron(A, B), **tol)


def test_kron_matvec_matches_dense(backend, dtype, tol, rng):
    A, B, X = rng.standard_normal((3, 4)), rng.standard_normal((2, 5)), rng.standard_normal((4, 5))
    out = kron_matvec(backend.asarray(A, dtype), backend.asarray(B, dtype), backend.asarray(X, dtype))
    assert_backend_array(backend, out, dtype)
    assert out.shape == (3, 2)
    np.testing.assert_allclose(to_numpy(out).reshape(-1), np.kron(A, B) @ X.reshape(-1), **tol)


def test_kron_matvec_batched(backend, dtype, tol, rng):
    A, B, X = rng.standard_normal((3, 4)), rng.standard_normal((2, 5)), rng.standard_normal((6, 7, 4, 5))
    out = kron_matvec(backend.asarray(A, dtype), backend.asarray(B, dtype), backend.asarray(X, dtype))
    assert out.shape == (6, 7, 3, 2)
    ref = (np.kron(A, B) @ X.reshape(6, 7, 20)[..., None])[..., 0].reshape(6, 7, 3, 2)
    np.testing.assert_allclose(to_numpy(out), ref, **tol)


def test_rearrange_roundtrip_and_outer_product(backend, dtype, tol, rng):
    A, B = rng.standard_normal((3, 2)), rng.standard_normal((4, 5))
    M = backend.asarray(np.kron(A, B), dtype)
    R = rearrange(M, (3, 2), (4, 5))
    assert_backend_array(backend, R, dtype)
    np.testing.assert_allclose(to_numpy(R), np.outer(A.ravel(), B.ravel()), **tol)
    np.testing.assert_allclose(to_numpy(unrearrange(R, (3, 2), (4, 5))), np.kron(A, B), **tol)


def test_partial_trace_dense_reference(backend, dtype, tol, rng):
    p, r = 3, 4
    M = rng.standard_normal((p * r, p * r))
    Mb = backend.asarray(M, dtype)
    blocks = M.reshape(p, r, p, r)
    keep_a = np.array([[np.trace(blocks[i, :, j, :]) for j in range(p)] for i in range(p)])
    keep_b = sum(blocks[i, :, i, :] for i in range(p))
    out_a = partial_trace(Mb, (p, p), (r, r), keep="a")
    assert_backend_array(backend, out_a, dtype)
    np.testing.assert_allclose(to_numpy(out_a), keep_a, **tol)
    np.testing.assert_allclose(to_numpy(partial_trace(Mb, (p, p), (r, r), keep="b")), keep_b, **tol)


def test_partial_trace_rectangular_grid(rng):
    # keep="a" only needs square B blocks; keep="b" only a square grid of blocks.
    M = rng.standard_normal((2 * 3, 5 * 3))
    out = partial_trace(M, (2, 5), (3, 3), keep="a")
    assert out.shape == (2, 5)
    M2 = rng.standard_normal((3 * 2, 3 * 4))
    assert partial_trace(M2, (3, 3), (2, 4), keep="b").shape == (2, 4)


# --- hypothesis: identities -----------------------------------------------------
dims = st.integers(min_value=1, max_value=5)


@given(p=dims, q=dims, r=dims, s=dims, seed=st.integers(0, 2**31 - 1))
def test_vec_identity(p, q, r, s, seed):
    rng = np.random.default_rng(seed)
    A, B, X = rng.standard_normal((p, q)), rng.standard_normal((r, s)), rng.standard_normal((q, s))
    np.testing.assert_allclose(kron_matvec(A, B, X).reshape(-1), np.kron(A, B) @ X.reshape(-1), rtol=1e-10, atol=1e-12)


@given(p=dims, q=dims, r=dims, s=dims, seed=st.integers(0, 2**31 - 1))
def test_rearrangement_frobenius_identity(p, q, r, s, seed):
    rng = np.random.default_rng(seed)
    M, A, B = rng.standard_normal((p * r, q * s)), rng.standard_normal((p, q)), rng.standard_normal((r, s))
    lhs = np.linalg.norm(M - np.kron(A, B))
    rhs = np.linalg.norm(rearrange(M, (p, q), (r, s)) - np.outer(A.ravel(), B.ravel()))
    assert abs(lhs - rhs) <= 1e-10 * max(1.0, lhs)


@given(p=dims, r=dims, seed=st.integers(0, 2**31 - 1))
def test_partial_traces_of_a_kronecker_product(p, r, seed):
    rng = np.random.default_rng(seed)
    A, B = rng.standard_normal((p, p)), rng.standard_normal((r, r))
    M = np.kron(A, B)
    np.testing.assert_allclose(partial_trace(M, (p, p), (r, r), "a"), np.trace(B) * A, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(partial_trace(M, (p, p), (r, r), "b"), np.trace(A) * B, rtol=1e-10, atol=1e-10)


# --- bad input ------------------------------------------------------------------------
def test_kron_rejects_vectors():
    with pytest.raises(ValueError, match="`A` must be a 2-D array"):
        kron(np.ones(3), np.ones((2, 2)))


def test_kron_matvec_rejects_wrong_x_shape():
    with pytest.raises(ValueError, match=r"`X` must have shape \(\.\.\., 3, 2\)"):
        kron_matvec(np.ones((2, 3)), np.ones((4, 2)), np.ones((2, 3)))


def test_kron_rejects_mixed_backends():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="one library"):
        kron(np.ones((2, 2)), torch.ones((2, 2), dtype=torch.float64))


def test_kron_rejects_mixed_dtypes():
    with pytest.raises(TypeError, match="dtype"):
        kron(np.ones((2, 2)), np.ones((2, 2), dtype=np.float32))


def test_kron_rejects_non_arrays():
    with pytest.raises(TypeError, match="expected an array"):
        kron([[1.0]], np.ones((2, 2)))


def test_rearrange_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"`M` must have shape \(p\*r, q\*s\)"):
        rearrange(np.ones((6, 6)), (2, 2), (3, 2))


def test_rearrange_rejects_bad_shape_argument():
    with pytest.raises(ValueError, match="`a_shape` must be a pair of positive ints"):
        rearrange(np.ones((6, 6)), (0, 2), (3, 3))
    with pytest.raises(TypeError, match="`b_shape` must be a pair"):
        rearrange(np.ones((6, 6)), (2, 2), 3)


def test_unrearrange_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"`R` must have shape \(p\*q, r\*s\)"):
        unrearrange(np.ones((6, 6)), (2, 2), (3, 3))


def test_partial_trace_rejects_bad_keep():
    with pytest.raises(ValueError, match="`keep` must be"):
        partial_trace(np.eye(4), (2, 2), (2, 2), keep="c")


def test_partial_trace_needs_square_blocks():
    with pytest.raises(ValueError, match="must be square"):
        partial_trace(np.ones((4, 6)), (2, 2), (2, 3), keep="a")
    with pytest.raises(ValueError, match="must be square"):
        partial_trace(np.ones((4, 6)), (2, 3), (2, 2), keep="b")


def test_partial_trace_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"`M` must have shape"):
        partial_trace(np.ones((5, 5)), (2, 2), (2, 2))
