"""One shared test base for every top-k SVD engine (in the manner of scipy's SVDSCommonTests).

Each engine gets the same checks: shapes, descending values, orthonormal vectors,
agreement with the dense SVD up to sign, reconstruction of the rank-k truncation,
namespace/device/dtype of the results, and the same operator kinds.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as sla

from kronalg import KronSum, lanczos_svd, power_svd, randomized_svd
from tests.backends import assert_backend_array, to_numpy


def _run(method, op, k):
    if method == "power":
        return power_svd(op, seed=0)
    if method == "lanczos":
        return lanczos_svd(op, k, seed=0)
    return randomized_svd(op, k, n_iter=8, seed=0)


METHODS = ["power", "lanczos", "randomized"]


def _k_for(method, k):
    return 1 if method == "power" else k


def _test_matrix(rng, m=60, n=45, decay=0.6):
    U, _ = np.linalg.qr(rng.standard_normal((m, n)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    s = decay ** np.arange(n)
    return (U * s) @ V.T, s


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(60, 45), (45, 60)])
def test_common_properties(backend, dtype, rng, method, shape):
    M, s = _test_matrix(rng, *sorted(shape, reverse=True))
    if shape[0] < shape[1]:
        M = M.T
    k = _k_for(method, 4)
    res = _run(method, backend.asarray(M, dtype), k)
    U, S, Vh = res
    assert U.shape == (shape[0], k) and S.shape == (k,) and Vh.shape == (k, shape[1])
    for x in (U, S, Vh):
        assert_backend_array(backend, x, dtype)
    U, S, Vh = to_numpy(U), to_numpy(S), to_numpy(Vh)
    tol = 2e-3 if dtype == "float32" else 1e-7
    assert np.all(np.diff(S) <= tol)
    np.testing.assert_allclose(S, s[:k], rtol=tol)
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=tol)
    np.testing.assert_allclose(Vh @ Vh.T, np.eye(k), atol=tol)
    Ur, _, Vhr = np.linalg.svd(M)
    np.testing.assert_allclose(np.abs(np.sum(U * Ur[:, :k], axis=0)), 1.0, atol=tol * 10)
    np.testing.assert_allclose(np.abs(np.sum(Vh * Vhr[:k], axis=1)), 1.0, atol=tol * 10)
    best = np.linalg.norm(M - (Ur[:, :k] * s[:k]) @ Vhr[:k])
    assert np.linalg.norm(M - (U * S) @ Vh) <= best + tol * np.linalg.norm(M)


@pytest.mark.parametrize("method", METHODS)
def test_common_scipy_linear_operator(rng, method):
    M, s = _test_matrix(rng)
    k = _k_for(method, 3)
    _, S, _ = _run(method, sla.aslinearoperator(M), k)
    np.testing.assert_allclose(S, s[:k], rtol=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_common_rearranged_kronsum(rng, method):
    terms = [(rng.standard_normal((4, 3)), rng.standard_normal((3, 5))) for _ in range(3)]
    R = KronSum(terms).rearranged
    k = _k_for(method, 3)
    _, S, _ = _run(method, R, k)
    ref = np.linalg.svd(R.to_dense(), compute_uv=False)
    np.testing.assert_allclose(S, ref[:k], rtol=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_common_deterministic_signs(rng, method):
    M, _ = _test_matrix(rng)
    k = _k_for(method, 3)
    U1, _, _ = _run(method, M, k)
    U2, _, _ = _run(method, M.copy(), k)
    np.testing.assert_allclose(U1, U2, atol=1e-10)
    assert np.all(U1[np.argmax(np.abs(U1), axis=0), np.arange(k)] > 0)
