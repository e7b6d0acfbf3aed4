"""Test helpers for users checking their own operators and results.

These helpers copy results to the host, which is what a test wants; nothing
else in the library does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._backend import asarray_on, eps

__all__ = ["assert_close", "dot_test", "to_numpy"]


def to_numpy(x: Any) -> np.ndarray:
    """Copy an array of any supported backend to a NumPy array on the host.

    Parameters
    ----------
    x : array
        NumPy, CuPy, torch or array-API array.

    Returns
    -------
    numpy.ndarray
    """
    mod = type(x).__module__
    if mod.startswith("torch"):
        return x.detach().cpu().numpy()
    if mod.startswith("cupy"):
        return x.get()
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception:  # array_api_strict and other DLPack producers
        return np.from_dlpack(x)


def assert_close(actual: Any, desired: Any, *, rtol: float = 1e-7, atol: float = 0.0, err_msg: str = "") -> None:
    """Assert ``|actual − desired| ≤ atol + rtol·|desired|`` elementwise, across backends.

    Parameters
    ----------
    actual, desired : array
        Arrays of any backend (copied to the host for the comparison).
    rtol, atol : float
        Relative and absolute tolerances.
    err_msg : str
        Extra text for the failure message.

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg.testing import assert_close
    >>> assert_close(np.ones(3), np.ones(3) + 1e-12, rtol=1e-10)
    """
    np.testing.assert_allclose(to_numpy(actual), to_numpy(desired), rtol=rtol, atol=atol, err_msg=err_msg)


def dot_test(op: Any, *, seed: int = 0, rtol: float | None = None) -> float:
    """Adjoint dot test ``⟨op x, y⟩ = ⟨x, opᵀ y⟩`` for random ``x``, ``y``.

    Parameters
    ----------
    op : operator
        Anything with ``shape``, ``dtype``, ``matvec`` and ``rmatvec`` whose
        arrays live in one namespace (a :class:`kronalg.KronOperator`).
    seed : int
        Seed of the random vectors (drawn with NumPy, moved to the operator's device).
    rtol : float, optional
        Tolerance on the relative mismatch; defaults to ``1e-4`` in float32 and
        ``1e-10`` in float64.

    Returns
    -------
    float
        The relative mismatch ``|⟨op x, y⟩ − ⟨x, opᵀ y⟩| / (‖op x‖‖y‖)``.

    Raises
    ------
    AssertionError
        If the mismatch exceeds ``rtol``.

    Examples
    --------
    >>> import numpy as np
    >>> from kronalg import KronSum
    >>> from kronalg.testing import dot_test
    >>> rng = np.random.default_rng(0)
    >>> op = KronSum([(rng.standard_normal((3, 2)), rng.standard_normal((4, 5)))])
    >>> dot_test(op) < 1e-12
    True
    """
    xp, device = getattr(op, "xp", None), getattr(op, "device", None)
    if xp is None:  # e.g. a scipy LinearOperator: NumPy on the host
        import array_api_compat.numpy as xp

        device = "cpu"
    rng = np.random.default_rng(seed)
    m, n = op.shape
    x = asarray_on(xp, rng.standard_normal(n), dtype=op.dtype, device=device)
    y = asarray_on(xp, rng.standard_normal(m), dtype=op.dtype, device=device)
    Ax, ATy = to_numpy(op.matvec(x)).astype(np.float64), to_numpy(op.rmatvec(y)).astype(np.float64)
    xh, yh = to_numpy(x).astype(np.float64), to_numpy(y).astype(np.float64)
    lhs, rhs = float(Ax @ yh), float(xh @ ATy)
    scale = max(np.linalg.norm(Ax) * np.linalg.norm(yh), np.linalg.norm(xh) * np.linalg.norm(ATy), 1e-300)
    mismatch = abs(lhs - rhs) / scale
    if rtol is None:
        rtol = 1e-4 if eps(xp, op.dtype) > 1e-10 else 1e-10
    if mismatch > rtol:
        raise AssertionError(f"dot test failed: ⟨op x, y⟩ = {lhs}, ⟨x, opᵀ y⟩ = {rhs}, mismatch {mismatch:.3e}")
    return float(mismatch)
