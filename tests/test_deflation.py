"""deflate(): the operator minus known triplets, against the dense difference."""

from __future__ import annotations

import numpy as np
import pytest

from kronalg import SampleKronSum, deflate
from kronalg.testing import dot_test
from tests.backends import assert_backend_array, to_numpy


def test_deflate_matches_dense(backend, dtype, tol, rng):
    M = rng.standard_normal((7, 5))
    U, S, Vh = np.linalg.svd(M, full_matrices=False)
    D = deflate(
        backend.asarray(M, dtype),
        backend.asarray(U[:, :2], dtype),
        backend.asarray(S[:2], dtype),
        backend.asarray(Vh[:2], dtype),
    )
    ref = M - (U[:, :2] * S[:2]) @ Vh[:2]
    x, y, X = rng.standard_normal(5), rng.standard_normal(7), rng.standard_normal((5, 3))
    out = D @ backend.asarray(x, dtype)
    assert_backend_array(backend, out, dtype)
    np.testing.assert_allclose(to_numpy(out), ref @ x, **tol)
    np.testing.assert_allclose(to_numpy(D.rmatvec(backend.asarray(y, dtype))), ref.T @ y, **tol)
    np.testing.assert_allclose(to_numpy(D @ backend.asarray(X, dtype)), ref @ X, **tol)
    np.testing.assert_allclose(to_numpy(D.to_dense()), ref, **tol)
    dot_test(D)


def test_deflate_an_implicit_operator(rng):
    F = SampleKronSum.from_factors(rng.standard_normal((6, 3)), rng.standard_normal((6, 2)))
    R = F.rearranged
    Rd = R.to_dense()
    U, S, Vh = np.linalg.svd(Rd, full_matrices=False)
    D = deflate(R, U[:, :1], S[:1], Vh[:1])
    np.testing.assert_allclose(D.to_dense(), Rd - S[0] * np.outer(U[:, 0], Vh[0]), atol=1e-12)
    assert np.linalg.norm(D.to_dense(), 2) == pytest.approx(S[1])


def test_deflate_validates_shapes():
    M = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"`U` must have shape \(4, k\)"):
        deflate(M, np.ones((3, 1)), np.ones(1), np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"`S` must have shape \(1,\)"):
        deflate(M, np.ones((4, 1)), np.ones(2), np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"`Vh` must have shape \(1, 3\)"):
        deflate(M, np.ones((4, 1)), np.ones(1), np.ones((1, 4)))
    with pytest.raises(TypeError, match="dtype"):
        deflate(M, np.ones((4, 1), dtype=np.float32), np.ones(1, dtype=np.float32), np.ones((1, 3), dtype=np.float32))
