"""Backends for the tests: one array library on one device, and host conversions."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest


@dataclasses.dataclass(frozen=True)
class Backend:
    """One array library on one device, with host conversions for tests."""

    name: str
    xp: Any
    device: Any

    def asarray(self, a: Any, dtype: str = "float64") -> Any:
        """Host data as an array of this backend, of dtype ``"float32"``/``"float64"``."""
        a = np.asarray(a, dtype=np.dtype(dtype))
        if self.name.startswith("torch"):
            import torch

            return torch.as_tensor(a.copy(), device=self.device)
        if self.name == "cupy":
            import cupy

            return cupy.asarray(a)
        return self.xp.asarray(a, dtype=getattr(self.xp, dtype), device=self.device)

    def dtype(self, dtype: str) -> Any:
        """The backend's dtype object for ``"float32"``/``"float64"``."""
        if self.name.startswith("torch"):
            import torch

            return getattr(torch, dtype)
        return getattr(self.xp, dtype)


def to_numpy(x: Any) -> np.ndarray:
    """Any backend's array as a NumPy float64 array (test side only)."""
    mod = type(x).__module__
    if mod.startswith("torch"):
        return x.detach().cpu().numpy().astype(np.float64)
    if mod.startswith("cupy"):
        return x.get().astype(np.float64)
    if mod.startswith("array_api_strict"):
        import array_api_strict

        return np.asarray(array_api_strict.asarray(x, copy=True)._array, dtype=np.float64)
    return np.asarray(x, dtype=np.float64)


def make_backend(name: str) -> Backend:
    if name == "numpy":
        import array_api_compat.numpy as xp

        return Backend(name, xp, "cpu")
    if name == "array_api_strict":
        xp = pytest.importorskip("array_api_strict")
        return Backend(name, xp, xp.Device("CPU_DEVICE"))
    if name == "torch":
        pytest.importorskip("torch")
        import array_api_compat.torch as xp
        import torch

        return Backend(name, xp, torch.device("cpu"))
    if name == "torch-cuda":
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():
            pytest.skip("torch CUDA is not available")
        import array_api_compat.torch as xp

        return Backend(name, xp, torch.device("cuda"))
    if name == "cupy":
        cupy = pytest.importorskip("cupy")
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                pytest.skip("no CUDA device for CuPy")
        except Exception:
            pytest.skip("no CUDA device for CuPy")
        import array_api_compat.cupy as xp

        return Backend(name, xp, cupy.cuda.Device(0))
    raise ValueError(name)


def assert_backend_array(b: Backend, x: Any, dtype: str) -> None:
    """The result lives in the backend's namespace and device, with the dtype asked for."""
    import array_api_compat

    assert array_api_compat.array_namespace(x) == array_api_compat.array_namespace(b.asarray([0.0]))
    assert str(array_api_compat.device(x)) == str(b.device)
    assert x.dtype == b.dtype(dtype)


TOLERANCES = {"float32": {"rtol": 2e-4, "atol": 1e-5}, "float64": {"rtol": 1e-10, "atol": 1e-12}}
