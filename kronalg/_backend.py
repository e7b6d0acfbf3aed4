"""The one place that resolves the array namespace and device of the inputs.

Every public function calls :func:`namespace_and_device` once on its array
arguments and passes the resulting ``xp`` down.  There is no global backend
switch: the inputs decide.  This module also supplies what the array API
standard lacks (triangular solves, a symmetric-definite generalized
eigenproblem) by dispatching to the library that owns the arrays, so no code
path ever copies data between host and device.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "namespace_and_device",
    "device_of",
    "is_array",
    "is_real_floating",
    "eps",
    "solve_triangular",
    "cholesky",
    "eigh",
    "generalized_eigh",
    "all_finite",
    "asarray_on",
    "to_scalar",
]


def namespace_and_device(*arrays: Any) -> tuple[Any, Any]:
    """Namespace and device shared by all array arguments.

    Parameters
    ----------
    *arrays : arrays or None
        The array arguments of one call; ``None`` and Python scalars are skipped.

    Returns
    -------
    xp : module
        The array-API compatible namespace (``array_api_compat`` wrapper for
        NumPy, CuPy and torch).
    device : object
        The common device of the arrays.

    Raises
    ------
    TypeError
        If no argument is an array, if the arrays come from different
        libraries, or if they live on different devices.
    """
    present = [a for a in arrays if a is not None and not isinstance(a, (int, float, bool, complex))]
    if not present:
        raise TypeError("expected at least one array argument, got none")
    for a in present:
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(f"expected an array (NumPy, CuPy, torch or array-API), got {type(a).__name__}")
    try:
        xp = array_api_compat.array_namespace(*present)
    except TypeError as exc:
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in present})
        raise TypeError(f"all arrays in one call must come from one library, got {kinds}") from exc
    devices = [array_api_compat.device(a) for a in present]
    first = devices[0]
    for d in devices[1:]:
        if d != first:
            raise TypeError(f"all arrays in one call must be on one device, got {first} and {d}")
    return xp, first


def is_array(x: Any) -> bool:
    """Whether ``x`` is an array of a supported library (NumPy, CuPy, torch, array-API)."""
    return bool(array_api_compat.is_array_api_obj(x))


def device_of(x: Any) -> Any:
    """Device of one array."""
    return array_api_compat.device(x)


def is_real_floating(xp: Any, x: Any) -> bool:
    """Whether ``x`` has a real floating-point dtype."""
    return bool(xp.isdtype(x.dtype, "real floating"))


def eps(xp: Any, dtype: Any) -> float:
    """Machine epsilon of a real floating dtype of ``xp``."""
    return float(xp.finfo(dtype).eps)


def all_finite(xp: Any, x: Any) -> bool:
    """Whether every entry of ``x`` is finite (one host sync, a single boolean)."""
    return bool(xp.all(xp.isfinite(x)))


def to_scalar(x: Any) -> float:
    """Return a 0-d array as a Python float (one device sync)."""
    return float(x)


def asarray_on(xp: Any, data: np.ndarray, *, dtype: Any, device: Any) -> Any:
    """Put host data (drawn with NumPy) on ``device`` as ``dtype``.

    Used for seeded random starts, so that every backend starts from the same
    numbers.  This is the only host-to-device transfer in the library and it
    only ever moves freshly generated data.
    """
    if array_api_compat.is_torch_namespace(xp):
        import torch

        return torch.as_tensor(np.ascontiguousarray(data), dtype=dtype, device=device)
    if array_api_compat.is_cupy_namespace(xp):
        import cupy

        with cupy.cuda.Device(device):
            return cupy.asarray(data, dtype=dtype)
    return xp.asarray(data, dtype=dtype, device=device)


def _library(xp: Any) -> str:
    if array_api_compat.is_numpy_namespace(xp):
        return "numpy"
    if array_api_compat.is_torch_namespace(xp):
        return "torch"
    if array_api_compat.is_cupy_namespace(xp):
        return "cupy"
    return "other"


def solve_triangular(xp: Any, L: Any, B: Any, *, lower: bool = True, transpose: bool = False) -> Any:
    """Solve ``L X = B`` (or ``Lᵀ X = B``) for triangular ``L``.

    Parameters
    ----------
    xp : module
        Namespace of the arrays.
    L : array of shape (n, n)
        Triangular matrix.
    B : array of shape (n, m)
        Right-hand sides.
    lower : bool
        Whether ``L`` is lower (else upper) triangular.
    transpose : bool
        Solve with ``Lᵀ`` instead of ``L``.

    Returns
    -------
    X : array of shape (n, m)
    """
    lib = _library(xp)
    if lib == "numpy":
        import scipy.linalg

        return scipy.linalg.solve_triangular(L, B, lower=lower, trans=1 if transpose else 0, check_finite=False)
    if lib == "torch":
        import torch

        if transpose:
            return torch.linalg.solve_triangular(L.mT, B, upper=lower)
        return torch.linalg.solve_triangular(L, B, upper=not lower)
    if lib == "cupy":
        import cupyx.scipy.linalg

        return cupyx.scipy.linalg.solve_triangular(L, B, lower=lower, trans=1 if transpose else 0)
    # array-API fallback (e.g. array_api_strict): a general solve is exact, just slower.
    return xp.linalg.solve(xp.matrix_transpose(L) if transpose else L, B)


def cholesky(xp: Any, A: Any, *, name: str) -> Any:
    """Lower Cholesky factor of a symmetric positive definite matrix.

    Raises
    ------
    ValueError
        Naming ``name`` when ``A`` is not (numerically) positive definite.
    """
    try:
        L = xp.linalg.cholesky(A)
    except Exception as exc:  # numpy LinAlgError, torch LinAlgError, ...
        raise ValueError(f"`{name}` must be symmetric positive definite; its Cholesky factorization failed") from exc
    if not all_finite(xp, L):  # CuPy may return NaN instead of raising
        raise ValueError(f"`{name}` must be symmetric positive definite; its Cholesky factorization failed")
    return L


def eigh(xp: Any, A: Any) -> tuple[Any, Any]:
    """Symmetric eigendecomposition ``A = Q diag(w) Qᵀ``, eigenvalues ascending.

    torch's float32 CPU ``syevd`` fails on some matrices with many repeated eigenvalues (exact zero rows, e.g. the
    input factor of always-zero pixels): it raises, or returns NaN without raising.  A finite input whose float32
    decomposition fails is decomposed in float64 and cast back.
    """
    try:
        w, Q = xp.linalg.eigh(A)
        failed = _library(xp) == "torch" and A.dtype != xp.float64 and not (all_finite(xp, w) and all_finite(xp, Q))
    except Exception:
        if _library(xp) != "torch" or A.dtype == xp.float64:
            raise
        failed = True
    if failed and all_finite(xp, A):
        w, Q = xp.linalg.eigh(xp.astype(A, xp.float64))
        w, Q = xp.astype(w, A.dtype), xp.astype(Q, A.dtype)
    return w, Q


def generalized_eigh(xp: Any, C: Any, A: Any, *, name_c: str = "C", name_a: str = "A") -> tuple[Any, Any]:
    """Symmetric-definite generalized eigenproblem ``C K = A K diag(s)``.

    With the Cholesky factor ``A = L Lᵀ``, the problem becomes the standard
    ``(L⁻¹ C L⁻ᵀ) W = W diag(s)`` and ``K = L⁻ᵀ W``, so that ``Kᵀ A K = I`` and
    ``Kᵀ C K = diag(s)`` (LAPACK ``sygv``, type 1).

    Parameters
    ----------
    xp : module
        Namespace of the arrays.
    C : array of shape (n, n)
        Symmetric matrix.
    A : array of shape (n, n)
        Symmetric positive definite matrix.

    Returns
    -------
    s : array of shape (n,)
        Generalized eigenvalues, ascending.
    K : array of shape (n, n)
        A-orthonormal eigenvectors.
    """
    if _library(xp) == "numpy":  # LAPACK sygvd does the same reduction in place, ~2x faster than the steps below
        import numpy.linalg
        import scipy.linalg

        try:
            s, K = scipy.linalg.eigh(C, A, driver="gvd", check_finite=False)
            return s, np.ascontiguousarray(K)  # LAPACK returns Fortran order; thin GEMMs on it are ~10x slower
        except (numpy.linalg.LinAlgError, ValueError) as exc:
            raise ValueError(
                f"`{name_a}` must be symmetric positive definite; its Cholesky factorization failed"
            ) from exc
    L = cholesky(xp, A, name=name_a)
    Y = solve_triangular(xp, L, C, lower=True)  # L⁻¹ C
    Ct = solve_triangular(xp, L, xp.matrix_transpose(Y), lower=True)  # L⁻¹ C L⁻ᵀ (C symmetric)
    Ct = 0.5 * (Ct + xp.matrix_transpose(Ct))
    s, W = eigh(xp, Ct)
    K = solve_triangular(xp, L, W, lower=True, transpose=True)
    return s, K
