"""KronSum and SampleKronSum against dense NumPy references, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kronalg import KronSum, SampleKronSum, partial_trace, rearrange
from kronalg.testing import dot_test
from tests.backends import assert_backend_array, to_numpy


def _terms(rng, k=3, a=(3, 4), b=(2, 5)):
    return [(rng.standard_normal(a), rng.standard_normal(b)) for _ in range(k)]


def _dense(terms):
    return sum(np.kron(A, B) for A, B in terms)


@pytest.mark.parametrize("stacked", [False, True])
def test_kronsum_products_match_dense(backend, dtype, tol, rng, stacked):
    terms = _terms(rng)
    M = _dense(terms)
    bt = [(backend.asarray(A, dtype), backend.asarray(B, dtype)) for A, B in terms]
    if stacked:
        xp = backend.xp
        op = KronSum((xp.stack([A for A, _ in bt]), xp.stack([B for _, B in bt])))
    else:
        op = KronSum(bt)
    assert op.shape == M.shape and len(op) == 3
    x, y = rng.standard_normal(M.shape[1]), rng.standard_normal(M.shape[0])
    X, Y = rng.standard_normal((M.shape[1], 4)), rng.standard_normal((M.shape[0], 4))
    out = op @ backend.asarray(x, dtype)
    assert_backend_array(backend, out, dtype)
    np.testing.assert_allclose(to_numpy(out), M @ x, **tol)
    np.testing.assert_allclose(to_numpy(op.rmatvec(backend.asarray(y, dtype))), M.T @ y, **tol)
    np.testing.assert_allclose(to_numpy(op @ backend.asarray(X, dtype)), M @ X, **tol)
    np.testing.assert_allclose(to_numpy(op.rmatmat(backend.asarray(Y, dtype))), M.T @ Y, **tol)
    np.testing.assert_allclose(to_numpy(op.to_dense()), M, **tol)
    np.testing.assert_allclose(to_numpy(op.T.to_dense()), M.T, **tol)
    np.testing.assert_allclose(float(op.fro_norm()), np.linalg.norm(M), rtol=tol["rtol"] * 10)


def test_kronsum_square_summaries(backend, dtype, tol, rng):
    terms = _terms(rng, a=(3, 3), b=(4, 4))
    M = _dense(terms)
    op = KronSum([(backend.asarray(A, dtype), backend.asarray(B, dtype)) for A, B in terms])
    np.testing.assert_allclose(float(op.trace()), np.trace(M), rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)
    for keep in ("a", "b"):
        out = op.partial_trace(keep)
        assert_backend_array(backend, out, dtype)
        np.testing.assert_allclose(to_numpy(out), partial_trace(M, (3, 3), (4, 4), keep), **tol)


def test_kronsum_rearranged_operator(backend, dtype, tol, rng):
    terms = _terms(rng)
    R = rearrange(_dense(terms), (3, 4), (2, 5))
    op = KronSum([(backend.asarray(A, dtype), backend.asarray(B, dtype)) for A, B in terms]).rearranged
    assert op.shape == R.shape
    v, u = rng.standard_normal(R.shape[1]), rng.standard_normal(R.shape[0])
    np.testing.assert_allclose(to_numpy(op @ backend.asarray(v, dtype)), R @ v, **tol)
    np.testing.assert_allclose(to_numpy(op.rmatvec(backend.asarray(u, dtype))), R.T @ u, **tol)
    np.testing.assert_allclose(to_numpy(op.to_dense()), R, **tol)


def test_kronsum_algebra(rng):
    t1, t2 = _terms(rng, k=1), _terms(rng, k=2)
    a, b = KronSum(t1), KronSum(t2)
    np.testing.assert_allclose((a + b).to_dense(), _dense(t1) + _dense(t2))
    np.testing.assert_allclose((a - b).to_dense(), _dense(t1) - _dense(t2))
    np.testing.assert_allclose((2.5 * a).to_dense(), 2.5 * _dense(t1))
    A0, B0 = b.factors[1]
    np.testing.assert_array_equal(A0, t2[1][0])
    np.testing.assert_array_equal(B0, t2[1][1])


def test_kronsum_dot_test(backend, dtype, rng):
    op = KronSum([(backend.asarray(A, dtype), backend.asarray(B, dtype)) for A, B in _terms(rng)])
    dot_test(op)
    dot_test(op.rearranged)


# --- SampleKronSum --------------------------------------------------------------------
def _dense_second_moment(X, w):
    Xf = X.reshape(X.shape[0], -1)
    return Xf.T @ (w[:, None] * Xf)


def _sample_operators(backend, dtype, rng, n=7, p=3, r=4, T=5):
    """The three ways to build a SampleKronSum, each with its dense reference."""
    w = rng.random(n)
    G, A = rng.standard_normal((n, p)), rng.standard_normal((n, r))
    Gc, Ac = rng.standard_normal((n, T, p)), rng.standard_normal((n, T, r))
    X = rng.standard_normal((n, p, r))
    wb = backend.asarray(w, dtype)
    return {
        "rank1": (
            SampleKronSum.from_factors(backend.asarray(G, dtype), backend.asarray(A, dtype), wb),
            _dense_second_moment(G[:, :, None] * A[:, None, :], w),
        ),
        "conv": (
            SampleKronSum.from_factors(backend.asarray(Gc, dtype), backend.asarray(Ac, dtype), wb),
            _dense_second_moment(np.einsum("ntp,ntr->npr", Gc, Ac), w),
        ),
        "dense": (SampleKronSum(backend.asarray(X, dtype), wb), _dense_second_moment(X, w)),
    }


@pytest.mark.parametrize("kind", ["rank1", "conv", "dense"])
def test_sample_kron_sum_matches_dense(backend, dtype, tol, rng, kind):
    op, F = _sample_operators(backend, dtype, rng)[kind]
    assert op.shape == F.shape == (12, 12)
    x, X = rng.standard_normal(12), rng.standard_normal((12, 3))
    out = op @ backend.asarray(x, dtype)
    assert_backend_array(backend, out, dtype)
    np.testing.assert_allclose(to_numpy(out), F @ x, **tol)
    np.testing.assert_allclose(to_numpy(op.rmatvec(backend.asarray(x, dtype))), F @ x, **tol)
    np.testing.assert_allclose(to_numpy(op @ backend.asarray(X, dtype)), F @ X, **tol)
    np.testing.assert_allclose(to_numpy(op.to_dense()), F, **tol)
    np.testing.assert_allclose(float(op.trace()), np.trace(F), rtol=tol["rtol"] * 10)
    np.testing.assert_allclose(float(op.fro_norm()), np.linalg.norm(F), rtol=tol["rtol"] * 10)
    for keep in ("a", "b"):
        pt = op.partial_trace(keep)
        assert_backend_array(backend, pt, dtype)
        np.testing.assert_allclose(to_numpy(pt), partial_trace(F, (3, 3), (4, 4), keep), **tol)


@pytest.mark.parametrize("kind", ["rank1", "conv", "dense"])
def test_sample_kron_sum_rearranged_products(backend, dtype, tol, rng, kind):
    op, F = _sample_operators(backend, dtype, rng)[kind]
    R = rearrange(F, (3, 3), (4, 4))
    Rop = op.rearranged
    assert Rop.shape == R.shape == (9, 16)
    v, u = rng.standard_normal(16), rng.standard_normal(9)
    V, U = rng.standard_normal((16, 3)), rng.standard_normal((9, 3))
    out = Rop @ backend.asarray(v, dtype)
    assert_backend_array(backend, out, dtype)
    np.testing.assert_allclose(to_numpy(out), R @ v, **tol)
    np.testing.assert_allclose(to_numpy(Rop.rmatvec(backend.asarray(u, dtype))), R.T @ u, **tol)
    np.testing.assert_allclose(to_numpy(Rop @ backend.asarray(V, dtype)), R @ V, **tol)
    np.testing.assert_allclose(to_numpy(Rop.rmatmat(backend.asarray(U, dtype))), R.T @ U, **tol)
    np.testing.assert_allclose(to_numpy(Rop.to_dense()), R, **tol)
    dot_test(Rop)
    dot_test(op)


def test_sample_kron_sum_scalar_and_default_weights(rng):
    G, A = rng.standard_normal((4, 2)), rng.standard_normal((4, 3))
    one = SampleKronSum.from_factors(G, A)
    quarter = SampleKronSum.from_factors(G, A, weights=0.25)
    np.testing.assert_allclose(quarter.to_dense(), one.to_dense() / 4)
    assert one.is_psd and not SampleKronSum.from_factors(G, A, weights=-np.ones(4)).is_psd


def test_sample_kron_sum_fro_norm_in_blocks(rng, monkeypatch):
    import kronalg.operators as ops

    monkeypatch.setattr(ops, "_GRAM_BLOCK_ENTRIES", 16)  # force several row blocks
    G, A, w = rng.standard_normal((11, 3)), rng.standard_normal((11, 2)), rng.random(11)
    op = SampleKronSum.from_factors(G, A, w)
    np.testing.assert_allclose(float(op.fro_norm()), np.linalg.norm(op.to_dense()), rtol=1e-12)


@given(n=st.integers(1, 6), p=st.integers(1, 4), r=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_sample_kron_sum_rearrangement_is_sum_of_kron(n, p, r, seed):
    # R(Σ w vec(X)vec(X)ᵀ) = Σ w X ⊗ X, and the products of the operator agree.
    rng = np.random.default_rng(seed)
    X, w = rng.standard_normal((n, p, r)), rng.random(n)
    op = SampleKronSum(X, w)
    R_ref = sum(wi * np.kron(Xi, Xi) for wi, Xi in zip(w, X))
    v = rng.standard_normal(r * r)
    np.testing.assert_allclose(op.rearranged @ v, R_ref @ v, rtol=1e-10, atol=1e-10)


# --- bad input ------------------------------------------------------------------------
def test_kronsum_rejects_empty_terms():
    with pytest.raises(TypeError, match="`terms` must be a non-empty list"):
        KronSum([])


def test_kronsum_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="every term must have the shapes of the first"):
        KronSum([(np.eye(2), np.eye(3)), (np.eye(2), np.eye(4))])


def test_kronsum_rejects_bad_pair():
    with pytest.raises(TypeError, match=r"`terms\[0\]` must be an \(A, B\) pair"):
        KronSum([np.eye(2)])


def test_kronsum_rejects_integer_factors():
    with pytest.raises(TypeError, match="real floating dtype"):
        KronSum([(np.eye(2, dtype=int), np.eye(2, dtype=int))])


def test_kronsum_rejects_mixed_backends():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="one library"):
        KronSum([(np.eye(2), torch.eye(2, dtype=torch.float64))])


def test_operator_rejects_wrong_vector():
    op = KronSum([(np.eye(2), np.eye(3))])
    with pytest.raises(ValueError, match=r"`x` must have shape \(6,\)"):
        op.matvec(np.ones(5))
    with pytest.raises(TypeError, match="dtype"):
        op.matvec(np.ones(6, dtype=np.float32))


def test_kronsum_trace_needs_square():
    with pytest.raises(ValueError, match="square factors"):
        KronSum([(np.ones((2, 3)), np.eye(2))]).trace()


def test_sample_kron_sum_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"`X` must have shape \(n, p, r\)"):
        SampleKronSum(np.ones((3, 4)))
    with pytest.raises(ValueError, match="`weights` must be a float or an array of shape"):
        SampleKronSum(np.ones((3, 2, 2)), np.ones(2))
    with pytest.raises(ValueError, match="agree on the leading dimensions"):
        SampleKronSum.from_factors(np.ones((3, 2)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="must both be"):
        SampleKronSum.from_factors(np.ones((3, 2)), np.ones((3, 2, 2)))


def test_sample_kron_sum_rejects_nan_weights():
    with pytest.raises(ValueError, match="`weights` must be finite"):
        SampleKronSum(np.ones((2, 2, 2)), np.array([1.0, np.nan]))
