"""Shared helpers of the asv suite: the backend axis and conversions (this module holds no benchmarks).

Every kronalg primitive's benchmark has a ``backend`` parameter with the values of :data:`BACKENDS`.  Inputs are built
with NumPy from a fixed seed and moved to the backend by :func:`to_backend`, which raises ``NotImplementedError`` when
the backend is absent (torch not installed, no CUDA device, CuPy not installed), so asv reports the combination as
skipped (``n/a``).  For GPU backends it also returns a synchronize function that the timed function calls after the
work, as scipy's ``XPBenchmark`` does, so a timing covers the kernels and not only their launch.
"""

import numpy as np

try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None

try:
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # pragma: no cover - only when run outside asv
    SkipNotImplemented = NotImplementedError

SEED = 1234
BACKENDS = ["numpy", "torch", "torch-cuda", "cupy"]
GPU_BACKENDS = ("torch-cuda", "cupy")


def to_backend(arrays, backend):
    """Move NumPy arrays to ``backend``.

    Returns ``(converted, sync)``: the arrays in the backend's library and on its device, and ``None`` (CPU) or a
    function that waits for the device.  Raises ``NotImplementedError`` if the backend is not available here.
    """
    if backend == "numpy":
        return list(arrays), None
    if backend in ("torch", "torch-cuda"):
        if torch is None:
            raise NotImplementedError("torch is not installed")
        if backend == "torch":
            return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays], None
        if not torch.cuda.is_available():
            raise NotImplementedError("CUDA is not available")
        return [torch.from_numpy(np.ascontiguousarray(a)).cuda() for a in arrays], torch.cuda.synchronize
    if backend == "cupy":
        try:
            import cupy
        except ImportError:
            raise NotImplementedError("CuPy is not installed") from None
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise NotImplementedError("no CUDA device for CuPy")
        except cupy.cuda.runtime.CUDARuntimeError:
            raise NotImplementedError("no CUDA device for CuPy") from None
        return [cupy.asarray(a) for a in arrays], cupy.cuda.get_current_stream().synchronize
    raise ValueError(f"unknown backend {backend!r}")


def array_module(backend):
    """The array library of ``backend`` (``numpy``, ``torch`` or ``cupy``); call after :func:`to_backend`."""
    if backend == "numpy":
        return np
    if backend in ("torch", "torch-cuda"):
        return torch
    import cupy

    return cupy


def to_numpy(x):
    """A NumPy copy of a NumPy, torch or CuPy array (or a Python scalar)."""
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if hasattr(x, "get") and type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)


def require_numpy(backend, what):
    """Skip unless ``backend == "numpy"`` (for NumPy/SciPy-only peers); usable in ``setup`` and in the timed function.

    ``SkipNotImplemented`` is asv's "skipped" inside a benchmark function too (a plain ``NotImplementedError`` only
    skips when raised in ``setup``; raised in a ``track_``/``time_`` function asv counts it as a failure).
    """
    if backend != "numpy":
        raise SkipNotImplemented(f"{what} runs on NumPy only")


def skip_peakmem_on_gpu(backend):
    """``peakmem_`` measures host RSS, which says nothing about device memory: skip it on GPU backends."""
    if backend in GPU_BACKENDS:
        raise SkipNotImplemented("peakmem is host memory only")


class Synced:
    """Mixin: ``self._timed()`` runs ``self.func()`` then ``self.sync()`` (a no-op on CPU backends)."""

    sync = None

    def _timed(self):
        out = self.func()
        if self.sync is not None:
            self.sync()
        return out
