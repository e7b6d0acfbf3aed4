"""StreamingKronecker: K-FOC's running and approx aggregation over batches."""

from __future__ import annotations

import numpy as np
import pytest

from kronalg import KronSum, SampleKronSum, StreamingKronecker, nearest_kronecker
from tests.backends import assert_backend_array, to_numpy


def _batches(rng, sizes=(5, 9, 7), p=4, r=3):
    out = []
    for n in sizes:
        G, A = rng.standard_normal((n, p)), rng.standard_normal((n, r)) + 0.5
        out.append((G, A))
    return out


@pytest.mark.parametrize("strategy", ["running", "approx"])
def test_identical_batches_are_recovered(backend, dtype, rng, strategy):
    G, A = rng.standard_normal((6, 3)), rng.standard_normal((6, 4))
    stream = StreamingKronecker(strategy)
    for _ in range(3):
        stream.update(SampleKronSum.from_factors(backend.asarray(G, dtype), backend.asarray(A, dtype), weights=1 / 6))
    est = stream.estimate()
    assert_backend_array(backend, est.factors[0][0], dtype)
    ref = nearest_kronecker(SampleKronSum.from_factors(G, A, weights=1 / 6), rank=1, method="svd")
    rtol = 1e-4 if dtype == "float32" else 1e-9
    np.testing.assert_allclose(to_numpy(est.to_dense()), ref.to_dense(), atol=rtol * np.abs(ref.to_dense()).max())


def test_running_is_at_least_as_good_as_approx(rng):
    batches = _batches(rng)
    sizes = [G.shape[0] for G, _ in batches]
    exact = sum(SampleKronSum.from_factors(G, A, weights=1.0).to_dense() for G, A in batches) / sum(sizes)
    errors = {}
    for strategy in ("running", "approx"):
        stream = StreamingKronecker(strategy)
        for G, A in batches:
            stream.update(SampleKronSum.from_factors(G, A, weights=1 / G.shape[0]), weight=G.shape[0])
        errors[strategy] = np.linalg.norm(exact - stream.estimate().to_dense()) / np.linalg.norm(exact)
        assert stream.n_batches == 3 and stream.total_weight == sum(sizes)
    best = nearest_kronecker(exact, (4, 4), (3, 3)).info.relative_residual
    assert best <= errors["running"] + 1e-12
    assert errors["running"] <= errors["approx"] + 1e-12


def test_running_two_batches_is_exact_rank1_of_their_mean(rng):
    (G1, A1), (G2, A2) = _batches(rng, sizes=(4, 4))
    F1, F2 = (SampleKronSum.from_factors(G, A, weights=0.25) for G, A in ((G1, A1), (G2, A2)))
    stream = StreamingKronecker("running")
    L1 = stream.update(F1)
    L2 = stream.update(F2)
    target = 0.5 * (L1.to_dense() + L2.to_dense())
    ref = nearest_kronecker(target, (4, 4), (3, 3))
    np.testing.assert_allclose(stream.estimate().to_dense(), ref.to_dense(), atol=1e-10)


def test_update_returns_normalized_batch_factors(rng):
    ((G, A),) = _batches(rng, sizes=(6,))
    L, _ = StreamingKronecker().update(SampleKronSum.from_factors(G, A)).factors[0]
    assert np.linalg.norm(L) == pytest.approx(1.0)


def test_rejects_bad_arguments(rng):
    with pytest.raises(ValueError, match="`strategy` must be"):
        StreamingKronecker("mean")
    stream = StreamingKronecker()
    with pytest.raises(ValueError, match="no batch seen yet"):
        stream.estimate()
    with pytest.raises(TypeError, match="`batch` must be a KronSum or SampleKronSum"):
        stream.update(np.eye(4))
    F = SampleKronSum.from_factors(np.ones((2, 2)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="`weight` must be a positive number"):
        stream.update(F, weight=0)
    stream.update(F)
    with pytest.raises(ValueError, match="earlier batches had"):
        stream.update(KronSum([(np.eye(3), np.eye(3))]))
