"""Small datasets that ship with scikit-learn, as torch tensors, for the approximation-quality report.

Nothing is downloaded: scikit-learn bundles the diabetes regression set (442 × 10) and the 8 × 8 handwritten
digits (1797 images).  Every loader returns a :class:`Dataset` of ``(inputs, targets)`` tensors on the requested
``device`` and ``dtype``; inputs are standardized as stated per loader.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["Dataset", "load_diabetes", "load_digits_flat", "load_digits_images"]


class Dataset(NamedTuple):
    """Inputs and targets of one dataset.

    Attributes
    ----------
    inputs : torch.Tensor
        The model inputs, first axis indexes samples.
    targets : torch.Tensor
        Regression targets (floating, shape (n, k)) or class labels (int64, shape (n,)).
    name : str
        A short human-readable name.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    name: str


def _standardize(x: np.ndarray, axis: int | None = 0) -> np.ndarray:
    """Zero mean, unit standard deviation along ``axis`` (constant columns are only centred).

    Parameters
    ----------
    x : numpy.ndarray
        The data.
    axis : int or None, default 0
        Axis of the statistics; ``None`` uses one global mean and standard deviation.

    Returns
    -------
    numpy.ndarray
        ``(x - mean) / std`` with ``std`` replaced by 1 where it is 0.
    """
    mean = x.mean(axis=axis, keepdims=axis is not None)
    std = x.std(axis=axis, keepdims=axis is not None)
    std = np.where(std > 0, std, 1.0)
    return (x - mean) / std


def _to_torch(x: np.ndarray, *, dtype: torch.dtype | None, device: str | torch.device | None) -> torch.Tensor:
    """Copy a NumPy array into a torch tensor of the given dtype and device.

    Parameters
    ----------
    x : numpy.ndarray
        The data.
    dtype : torch.dtype or None
        Target dtype for floating arrays (``None``: float64); integer arrays stay int64.
    device : str or torch.device or None
        Target device (``None``: CPU).

    Returns
    -------
    torch.Tensor
        The tensor.
    """
    import torch

    if np.issubdtype(x.dtype, np.integer):
        return torch.as_tensor(x.astype(np.int64), device=device)
    return torch.as_tensor(x, dtype=torch.float64 if dtype is None else dtype, device=device)


def load_diabetes(*, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> Dataset:
    """The diabetes regression set, standardized (the report's stand-in for the K-FOC UCI sets).

    Parameters
    ----------
    dtype : torch.dtype, optional
        Floating dtype of the tensors (default float64).
    device : str or torch.device, optional
        Device of the tensors (default CPU).

    Returns
    -------
    Dataset
        ``inputs`` of shape (442, 10) and ``targets`` of shape (442, 1), each column with zero mean and unit
        standard deviation.

    Examples
    --------
    >>> ds = load_diabetes()
    >>> tuple(ds.inputs.shape), tuple(ds.targets.shape)
    ((442, 10), (442, 1))
    """
    from sklearn.datasets import load_diabetes as _load

    x, y = _load(return_X_y=True)
    x = _standardize(np.asarray(x, dtype=np.float64))
    y = _standardize(np.asarray(y, dtype=np.float64).reshape(-1, 1))
    return Dataset(_to_torch(x, dtype=dtype, device=device), _to_torch(y, dtype=dtype, device=device), "diabetes")


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """Raw digits pixels in [0, 16] of shape (1797, 64) and labels of shape (1797,).

    Returns
    -------
    tuple of numpy.ndarray
        Pixels (float64) and labels (int64).
    """
    from sklearn.datasets import load_digits as _load

    x, y = _load(return_X_y=True)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)


def load_digits_images(*, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> Dataset:
    """The 8 × 8 digits as one-channel images with class labels (the K-FOC MNIST stand-in).

    Parameters
    ----------
    dtype : torch.dtype, optional
        Floating dtype of the images (default float64).
    device : str or torch.device, optional
        Device of the tensors (default CPU).

    Returns
    -------
    Dataset
        ``inputs`` of shape (1797, 1, 8, 8), standardized with one global mean and standard deviation, and
        ``targets`` the int64 labels 0–9 of shape (1797,).

    Examples
    --------
    >>> ds = load_digits_images()
    >>> tuple(ds.inputs.shape), tuple(ds.targets.shape), int(ds.targets.max())
    ((1797, 1, 8, 8), (1797,), 9)
    """
    x, y = _digits()
    x = _standardize(x, axis=None).reshape(-1, 1, 8, 8)
    return Dataset(_to_torch(x, dtype=dtype, device=device), _to_torch(y, dtype=dtype, device=device), "digits")


def load_digits_flat(*, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> Dataset:
    """The 8 × 8 digits as flat vectors in [0, 1], their own targets (the autoencoder setting).

    The pixels are divided by 16 rather than standardized, so that a sigmoid output can reconstruct them.

    Parameters
    ----------
    dtype : torch.dtype, optional
        Floating dtype of the tensors (default float64).
    device : str or torch.device, optional
        Device of the tensors (default CPU).

    Returns
    -------
    Dataset
        ``inputs`` and ``targets`` both of shape (1797, 64), the same values in [0, 1].

    Examples
    --------
    >>> ds = load_digits_flat()
    >>> tuple(ds.inputs.shape), float(ds.inputs.max())
    ((1797, 64), 1.0)
    """
    x, _ = _digits()
    t = _to_torch(x / 16.0, dtype=dtype, device=device)
    return Dataset(t, t.clone(), "digits (flat)")
