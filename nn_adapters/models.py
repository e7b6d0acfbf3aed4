"""The three small networks of the approximation-quality report.

Each mirrors one experiment of the papers at a size where the exact Fisher block of the studied layers is cheap:

- :func:`uci_mlp` — one hidden layer of 50 ReLU units (K-FOC §4.1, after Hernández-Lobato & Adams);
- :func:`digits_lenet` — a LeNet-style CNN for 8 × 8 digits (K-FOC §4.2 uses LeNet-5 on MNIST);
- :func:`digits_autoencoder` — the deep autoencoder of Hinton & Salakhutdinov scaled to 64 pixels
  (Koroko et al. §4.1 / App. D: ReLU hidden layers, sigmoid output; TKFAC §6).

Layers carry names (``fc1``, ``conv1``, ``enc4``, ...) so that Fisher blocks are keyed readably.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

__all__ = ["AUTOENCODER_SIZES", "count_parameters", "digits_autoencoder", "digits_lenet", "uci_mlp"]

#: Layer widths of :func:`digits_autoencoder` (Koroko App. D problem 1, 784-1000-500-250-30-..., scaled to 64).
AUTOENCODER_SIZES: tuple[int, ...] = (64, 128, 64, 32, 8, 32, 64, 128, 64)


def uci_mlp(in_features: int = 10, hidden: int = 50, out_features: int = 1) -> nn.Sequential:
    """Regression MLP with one hidden ReLU layer of 50 units (K-FOC's UCI setting).

    Parameters
    ----------
    in_features : int, default 10
        Input dimension (10 for the diabetes set).
    hidden : int, default 50
        Hidden units.
    out_features : int, default 1
        Output dimension.

    Returns
    -------
    torch.nn.Sequential
        Layers ``fc1`` (Linear), ``act1`` (ReLU), ``fc2`` (Linear); output of shape (n, out_features).

    Examples
    --------
    >>> import torch
    >>> uci_mlp()(torch.zeros(3, 10)).shape
    torch.Size([3, 1])
    """
    return nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(in_features, hidden),
            act1=nn.ReLU(),
            fc2=nn.Linear(hidden, out_features),
        )
    )


def digits_lenet(num_classes: int = 10) -> nn.Sequential:
    """LeNet-style CNN for 1 × 8 × 8 images (K-FOC's MNIST setting, shrunk to the digits).

    ``conv1`` 1→6 channels, 5 × 5, padding 2 (8 × 8 → 8 × 8), ReLU, 2 × 2 max-pool; ``conv2`` 6→16, 3 × 3,
    padding 1 (4 × 4), ReLU, 2 × 2 max-pool; then ``fc1`` 64→32, ReLU, ``fc2`` 32→classes (logits).

    Parameters
    ----------
    num_classes : int, default 10
        Number of output logits.

    Returns
    -------
    torch.nn.Sequential
        The network; input of shape (n, 1, 8, 8), output of shape (n, num_classes).

    Examples
    --------
    >>> import torch
    >>> digits_lenet()(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, kernel_size=5, padding=2),
            act1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, kernel_size=3, padding=1),
            act2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16 * 2 * 2, 32),
            act3=nn.ReLU(),
            fc2=nn.Linear(32, num_classes),
        )
    )


def digits_autoencoder(sizes: Sequence[int] = AUTOENCODER_SIZES) -> nn.Sequential:
    """Deep autoencoder with ReLU hidden layers and a sigmoid output (Koroko's / TKFAC's setting).

    With the default widths 64-128-64-32-8-32-64-128-64 the layers are ``enc1``–``enc4`` (64→128→64→32→8) and
    ``dec1``–``dec4`` (8→32→64→128→64); ``dec1`` is the fifth layer, the one of Koroko et al.'s Fig. 1.

    Parameters
    ----------
    sizes : sequence of int
        Widths from input to output, symmetric, of odd length ≥ 3.

    Returns
    -------
    torch.nn.Sequential
        The network; input and output of shape (n, sizes[0]), output in (0, 1).

    Examples
    --------
    >>> import torch
    >>> digits_autoencoder()(torch.zeros(2, 64)).shape
    torch.Size([2, 64])
    """
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 3 or len(sizes) % 2 == 0:
        raise ValueError(f"`sizes` must have odd length >= 3, got {len(sizes)}")
    n_layers = len(sizes) - 1
    half = n_layers // 2
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(n_layers):
        name = f"enc{i + 1}" if i < half else f"dec{i - half + 1}"
        layers[name] = nn.Linear(sizes[i], sizes[i + 1])
        layers[f"{name}_act"] = nn.ReLU() if i < n_layers - 1 else nn.Sigmoid()
    return nn.Sequential(layers)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters.

    Parameters
    ----------
    model : torch.nn.Module
        The model.

    Returns
    -------
    int
        Σ numel over parameters with ``requires_grad``.

    Examples
    --------
    >>> count_parameters(uci_mlp())
    601
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
