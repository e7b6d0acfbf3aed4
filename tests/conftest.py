"""Backend and dtype fixtures shared by every test.

``backend`` runs a test on NumPy, torch (CPU), array_api_strict, and — when a
GPU is present — CuPy and torch CUDA, skipping cleanly otherwise.  ``dtype``
crosses it with float32 and float64; ``tol`` gives the per-dtype tolerances.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from tests.backends import TOLERANCES, Backend, make_backend

settings.register_profile(
    "ci", derandomize=True, max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")

try:  # the tests use tiny matrices: OpenMP thread hand-offs would dominate, and CI has 2 cores
    import torch

    torch.set_num_threads(1)
except ImportError:
    pass

BACKENDS = ["numpy", "torch", "array_api_strict", "cupy", "torch-cuda"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every backend, skipping those this machine lacks."""
    return make_backend(request.param)


@pytest.fixture(params=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> str:
    """Both floating dtypes."""
    return request.param


@pytest.fixture
def tol(dtype: str) -> dict[str, float]:
    """Per-dtype tolerances for comparisons with a float64 NumPy reference."""
    return TOLERANCES[dtype]


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded NumPy generator for test data."""
    return np.random.default_rng(1234)
