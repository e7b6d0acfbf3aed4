"""power_svd against np.linalg.svd on every backend and dtype."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla

from kronalg import SampleKronSum
from kronalg.power import power_svd
from kronalg.results import ConvergenceWarning, SVDResult
from tests.backends import assert_backend_array, to_numpy


def _matrix(rng, m, n, s):
    U, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    V, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return (U * np.asarray(s)) @ V.T


def _spectrum(r):
    return np.concatenate([[4.0], 2.0 * 0.8 ** np.arange(r - 1)])


@pytest.mark.parametrize("shape", [(30, 20), (15, 25)])
def test_power_matches_dense_svd(backend, dtype, rng, shape):
    m, n = shape
    M = _matrix(rng, m, n, _spectrum(min(m, n)))
    U_ref, S_ref, Vh_ref = np.linalg.svd(M)
    res = power_svd(backend.asarray(M, dtype), seed=0)
    U, S, Vh = res
    for x in (U, S, Vh):
        assert_backend_array(backend, x, dtype)
    assert U.shape == (m, 1) and S.shape == (1,) and Vh.shape == (1, n)
    info = res.info
    assert info.converged and info.matvecs == 2 * info.iterations
    assert info.residuals[0] <= info.tol == (1e-10 if dtype == "float64" else 1e-5)
    rtol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(to_numpy(S), S_ref[:1], rtol=rtol)
    u, v = to_numpy(U)[:, 0], to_numpy(Vh)[0]
    vec_tol = 1e-9 if dtype == "float64" else 1e-4
    assert abs(abs(u @ U_ref[:, 0]) - 1) < vec_tol and abs(abs(v @ Vh_ref[0]) - 1) < vec_tol
    assert np.abs(u).argmax() == np.argmax(u)  # svd_flip: the largest entry of u is positive
    np.testing.assert_allclose(np.linalg.norm(M @ v - S_ref[0] * u), 0, atol=vec_tol * 10 * S_ref[0])


def test_power_warm_start_converges_faster(rng):
    M = _matrix(rng, 60, 40, 0.9 ** np.arange(40))
    cold = power_svd(M, seed=0)
    M2 = M + 1e-6 * rng.standard_normal(M.shape)
    warm = power_svd(M2, x0=cold)  # a previous answer, as inside an optimizer
    cold2 = power_svd(M2, seed=0)
    assert warm.info.converged and cold2.info.converged
    assert warm.info.iterations < cold2.info.iterations / 2
    np.testing.assert_allclose(warm.S, np.linalg.svd(M2, compute_uv=False)[:1], rtol=1e-12)
    vec = power_svd(M2, x0=cold.Vh[0])  # a plain start vector
    assert vec.info.iterations == warm.info.iterations


def test_power_on_linear_operator(rng):
    M = _matrix(rng, 20, 12, _spectrum(12))
    op = spla.aslinearoperator(M)
    res = power_svd(op, seed=1)
    assert isinstance(res.U, np.ndarray)
    np.testing.assert_allclose(res.S, np.linalg.svd(M, compute_uv=False)[:1], rtol=1e-12)


def test_power_on_rearranged_sample_kron_sum(backend, dtype, rng):
    G, A = rng.standard_normal((50, 4)), rng.standard_normal((50, 3))
    F = SampleKronSum.from_factors(backend.asarray(G, dtype), backend.asarray(A, dtype), weights=1 / 50)
    R = F.rearranged
    dense = to_numpy(R.to_dense())
    res = power_svd(R, seed=0)
    assert_backend_array(backend, res.U, dtype)
    U_ref, S_ref, Vh_ref = np.linalg.svd(dense)
    rtol = 1e-10 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(to_numpy(res.S), S_ref[:1], rtol=rtol)
    np.testing.assert_allclose(
        to_numpy(res.U * res.S[None, :] @ res.Vh),
        S_ref[0] * np.outer(U_ref[:, 0], Vh_ref[0]),
        atol=10 * rtol * S_ref[0],
    )


def test_power_zero_operator():
    res = power_svd(np.zeros((4, 3)), seed=0)
    assert res.info.converged and float(res.S[0]) == 0.0 and np.linalg.norm(res.U) == 1.0


def test_power_warns_when_not_converged(rng):
    M = _matrix(rng, 30, 20, np.linspace(1.0, 0.5, 20))
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = power_svd(M, maxiter=2, seed=0)
    assert not res.info.converged and res.info.iterations == 2 and res.info.residuals[0] > res.info.tol


# --- validation: one rule per test -------------------------------------------------------------------
def test_power_rejects_x0_of_wrong_shape():
    with pytest.raises(ValueError, match=r"`x0` must have shape \(3,\)"):
        power_svd(np.ones((4, 3)), x0=np.ones(4))


def test_power_rejects_zero_x0():
    with pytest.raises(ValueError, match="`x0` must be a nonzero vector"):
        power_svd(np.ones((4, 3)), x0=np.zeros(3))


def test_power_rejects_svdresult_x0_of_wrong_shape():
    x0 = SVDResult(np.ones((4, 1)), np.ones(1), np.ones((1, 5)))
    with pytest.raises(ValueError, match=r"`x0.Vh.T` must have 3 rows"):
        power_svd(np.ones((4, 3)), x0=x0)


@pytest.mark.parametrize("tol", [0.0, -1e-3, 1.0, float("nan")])
def test_power_rejects_bad_tol(tol):
    with pytest.raises(ValueError, match="`tol` must satisfy 0 < tol < 1"):
        power_svd(np.ones((4, 3)), tol=tol)


def test_power_rejects_non_float_tol():
    with pytest.raises(TypeError, match="`tol` must be a float"):
        power_svd(np.ones((4, 3)), tol="small")


@pytest.mark.parametrize("maxiter", [0, -2])
def test_power_rejects_bad_maxiter(maxiter):
    with pytest.raises(ValueError, match="`maxiter` must be >= 1"):
        power_svd(np.ones((4, 3)), maxiter=maxiter)


def test_power_rejects_non_int_maxiter():
    with pytest.raises(TypeError, match="`maxiter` must be an int"):
        power_svd(np.ones((4, 3)), maxiter=2.5)


def test_power_rejects_mixed_backends():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="`x0` must come from the operator's array library"):
        power_svd(np.ones((4, 3)), x0=torch.ones(3, dtype=torch.float64))


def test_power_rejects_integer_matrix():
    with pytest.raises(TypeError, match="`op` must have a real floating dtype"):
        power_svd(np.ones((4, 3), dtype=np.int64))


def test_power_rejects_bad_seed():
    with pytest.raises(TypeError, match=r"`seed` must be None, an int or a numpy\.random\.Generator"):
        power_svd(np.ones((4, 3)), seed="x")


def test_power_rejects_non_finite_matrix():
    M = np.ones((4, 3))
    M[0, 0] = np.nan
    with pytest.raises(ValueError, match="`op` must be finite"):
        power_svd(M)
