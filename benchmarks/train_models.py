"""Problems of the training benchmark (``python -m benchmarks.train``): data, networks, losses.

Both problems use scikit-learn's bundled 8 × 8 handwritten digits (1797 images, nothing downloaded), with the
pixels divided by 16 so that they lie in [0, 1]:

- ``autoencoder``: the deep autoencoder of Hinton & Salakhutdinov (2006), the benchmark of Martens & Grosse §13,
  scaled from 784-1000-500-250-30-… to 64-128-64-32-8-32-64-128-64.  As in Hinton & Salakhutdinov (and so in
  Martens & Grosse), every encoder and decoder layer is logistic-sigmoid, the 8-unit code layer is linear, and the
  64 outputs are logits of Bernoulli pixels: the loss is the binary cross-entropy on the logits, *summed over the
  64 pixels and averaged over the batch* (``F.binary_cross_entropy_with_logits``).  Koroko et al. App. D use ReLU
  hidden units instead; ``autoencoder_relu`` is that variant (not run by default).
- ``cnn``: a small classifier, Conv2d(1, 8, 3, padding 1)–ReLU–Conv2d(8, 16, 3, padding 1)–ReLU–MaxPool(2)–
  Flatten–Linear(256, 64)–ReLU–Linear(64, 10), softmax cross-entropy averaged over the batch.

Every loss is a mean over the batch of per-sample losses, which is what ``KroneckerPreconditioner(...,
loss_reduction="mean")`` assumes when it rescales the gradients of the training backward pass.  Parameters start
from PyTorch's default initialization under ``torch.manual_seed(seed)`` (the papers' sparse initialization is not
reproduced), and there is no weight decay.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AUTOENCODER_SIZES",
    "PROBLEMS",
    "BernoulliAsCategorical",
    "bernoulli_as_categorical_loss",
    "Problem",
    "autoencoder",
    "bce_sum_mean",
    "digits",
    "digits_cnn",
    "sparse_init_",
]

#: Widths of the digits autoencoder (Hinton & Salakhutdinov's 784-1000-500-250-30 encoder scaled to 64 pixels).
AUTOENCODER_SIZES: tuple[int, ...] = (64, 128, 64, 32, 8, 32, 64, 128, 64)


def digits(*, images: bool, n: int | None = None, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The scikit-learn digits, pixels in [0, 1].

    Parameters
    ----------
    images : bool
        ``True``: inputs of shape (n, 1, 8, 8) and int64 labels of shape (n,); ``False``: inputs of shape (n, 64)
        that are also the targets (autoencoder).
    n : int, optional
        Keep the first ``n`` samples (default: all 1797).
    dtype : torch.dtype, default torch.float32
        Floating dtype of the pixels.

    Returns
    -------
    inputs : Tensor
        Pixels divided by 16.
    targets : Tensor
        Labels (``images=True``) or a copy of the inputs.

    Examples
    --------
    >>> x, y = digits(images=True, n=10)
    >>> tuple(x.shape), tuple(y.shape), float(x.max()) <= 1.0
    ((10, 1, 8, 8), (10,), True)
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    if n is not None:
        x, y = x[:n], y[:n]
    pixels = torch.as_tensor(np.asarray(x, dtype=np.float64) / 16.0, dtype=dtype)
    if images:
        return pixels.reshape(-1, 1, 8, 8), torch.as_tensor(np.asarray(y, dtype=np.int64))
    return pixels, pixels.clone()


def sparse_init_(model: nn.Module, *, nonzeros: int = 15) -> nn.Module:
    """Martens' sparse initialization: each unit gets ``nonzeros`` incoming weights drawn from N(0, 1), biases 0.

    Used by Martens (2010), Sutskever et al. (2013) and Martens & Grosse (2015, §13) for the deep autoencoders.

    Parameters
    ----------
    model : torch.nn.Module
        Every ``torch.nn.Linear`` inside is re-initialized in place, from torch's global generator.
    nonzeros : int, default 15
        Non-zero incoming weights per unit (all of them when the layer has fewer inputs).

    Returns
    -------
    torch.nn.Module
        ``model``.

    Examples
    --------
    >>> lin = sparse_init_(nn.Linear(64, 3))
    >>> (lin.weight != 0).sum(dim=1).tolist(), int(lin.bias.count_nonzero())
    ([15, 15, 15], 0)
    """
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Linear):
                out_f, in_f = mod.weight.shape
                k = min(nonzeros, in_f)
                idx = torch.rand(out_f, in_f).argsort(dim=1)[:, :k]
                w = torch.zeros(out_f, in_f)
                w.scatter_(1, idx, torch.randn(out_f, k))
                mod.weight.copy_(w)
                if mod.bias is not None:
                    mod.bias.zero_()
    return model


def autoencoder(
    sizes: tuple[int, ...] = AUTOENCODER_SIZES, *, activation: str = "sigmoid", init: str = "sparse"
) -> nn.Sequential:
    """Deep autoencoder with a linear code layer and logit outputs.

    Parameters
    ----------
    sizes : tuple of int
        Widths from input to output, odd length ≥ 3; the middle one is the code layer.
    activation : {"sigmoid", "relu"}
        Hidden-unit nonlinearity (Hinton & Salakhutdinov / Martens & Grosse: logistic sigmoid; Koroko et al.: ReLU).
    init : {"sparse", "default"}
        :func:`sparse_init_` (Martens & Grosse's choice) or PyTorch's default initialization.

    Returns
    -------
    torch.nn.Sequential
        Layers ``enc1``… then ``dec1``…; no nonlinearity after the code layer (the last encoder layer) nor after
        the output layer, whose values are logits.

    Examples
    --------
    >>> autoencoder()(torch.zeros(2, 64)).shape
    torch.Size([2, 64])
    """
    if len(sizes) < 3 or len(sizes) % 2 == 0:
        raise ValueError(f"`sizes` must have odd length >= 3, got {len(sizes)}")
    acts: dict[str, Callable[[], nn.Module]] = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}
    if activation not in acts:
        raise ValueError(f"`activation` must be one of {tuple(acts)}, got {activation!r}")
    n_layers = len(sizes) - 1
    half = n_layers // 2
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i in range(n_layers):
        name = f"enc{i + 1}" if i < half else f"dec{i - half + 1}"
        layers[name] = nn.Linear(sizes[i], sizes[i + 1])
        if i not in (half - 1, n_layers - 1):  # the code layer and the output stay linear
            layers[f"{name}_act"] = acts[activation]()
    if init not in ("sparse", "default"):
        raise ValueError(f"`init` must be 'sparse' or 'default', got {init!r}")
    net = nn.Sequential(layers)
    return sparse_init_(net) if init == "sparse" else net


def digits_cnn(num_classes: int = 10) -> nn.Sequential:
    """Small CNN classifier for 1 × 8 × 8 digits.

    Parameters
    ----------
    num_classes : int, default 10
        Number of output logits.

    Returns
    -------
    torch.nn.Sequential
        ``conv1`` 1→8, ``conv2`` 8→16 (3 × 3, padding 1, ReLU), 2 × 2 max-pool, ``fc1`` 256→64 (ReLU), ``fc2``.

    Examples
    --------
    >>> digits_cnn()(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, kernel_size=3, padding=1),
            act1=nn.ReLU(),
            conv2=nn.Conv2d(8, 16, kernel_size=3, padding=1),
            act2=nn.ReLU(),
            pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16 * 4 * 4, 64),
            act3=nn.ReLU(),
            fc2=nn.Linear(64, num_classes),
        )
    )


def bce_sum_mean(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy on logits, summed over the pixels and averaged over the batch.

    Parameters
    ----------
    logits : Tensor of shape (n, d)
        Network outputs.
    targets : Tensor of shape (n, d)
        Pixel intensities in [0, 1].

    Returns
    -------
    Tensor
        ``(1/n) Σ_i Σ_j bce(logits_ij, targets_ij)``, a scalar.

    Examples
    --------
    >>> round(float(bce_sum_mean(torch.zeros(3, 4), torch.ones(3, 4))), 4)  # 4 log 2
    2.7726
    """
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.shape[0]


class BernoulliAsCategorical(nn.Module):
    """View ``d`` Bernoulli logits ``z`` as ``d`` two-class categorical logits ``(0, z)``.

    ``softmax(0, z) = (1 − σ(z), σ(z))``, so the categorical negative log-likelihood of soft targets ``(1 − t, t)``
    summed over the ``d`` positions is the binary cross-entropy of ``z`` and ``t`` summed over pixels, and its Fisher
    with respect to ``z`` is ``diag(σ(z)(1 − σ(z)))``, the Bernoulli one.  This lets an optimizer that knows only
    ``loss="cross_entropy"`` (per-sample NLL summed over extra positions) train the autoencoder's objective.

    Parameters
    ----------
    net : torch.nn.Module
        A network returning logits of shape (n, d).

    Examples
    --------
    >>> m = BernoulliAsCategorical(nn.Linear(3, 4))
    >>> m(torch.zeros(2, 3)).shape
    torch.Size([2, 2, 4])
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        """Stack a zero logit in front of every output.

        Parameters
        ----------
        x : Tensor
            Network input.

        Returns
        -------
        Tensor of shape (n, 2, d)
            ``(0, z)`` along axis 1.
        """
        z = self.net(x)
        return torch.stack((torch.zeros_like(z), z), dim=1)


def bernoulli_as_categorical_loss(logits2: Tensor, targets: Tensor) -> Tensor:
    """:func:`bce_sum_mean` on the output of :class:`BernoulliAsCategorical`.

    Parameters
    ----------
    logits2 : Tensor of shape (n, 2, d)
        ``(0, z)`` logits.
    targets : Tensor of shape (n, d)
        Pixel intensities in [0, 1].

    Returns
    -------
    Tensor
        The scalar loss, equal to ``bce_sum_mean(z, targets)``.

    Examples
    --------
    >>> z, t = torch.randn(3, 4), torch.rand(3, 4)
    >>> m = BernoulliAsCategorical(nn.Identity())
    >>> bool(torch.isclose(bernoulli_as_categorical_loss(m(z), t), bce_sum_mean(z, t)))
    True
    """
    return bce_sum_mean(logits2[:, 1], targets)


@dataclass(frozen=True)
class Problem:
    """One training problem.

    Attributes
    ----------
    key : str
        Name on the command line and in the outputs.
    title : str
        Human-readable description.
    images : bool
        Data layout passed to :func:`digits`.
    build : callable
        ``build()`` returning a fresh model (parameters from torch's global generator).
    loss : callable
        ``loss(outputs, targets)``, a mean over the batch of per-sample losses.
    loss_text : str
        The loss in words, for the outputs.
    likelihood : {"cross_entropy", "bernoulli"}
        The predictive distribution behind ``loss``, for :class:`nn_adapters.kfac.KFAC` (which samples targets
        from it and needs its Fisher): ``"bernoulli"`` models are wrapped by :class:`BernoulliAsCategorical` and
        handed to K-FAC as ``loss="cross_entropy"``.
    batch_size : int
        Minibatch size.
    epochs : int
        Default number of epochs of the seeded runs.
    """

    key: str
    title: str
    images: bool
    build: Callable[[], nn.Module]
    loss: Callable[[Tensor, Tensor], Tensor]
    loss_text: str
    likelihood: str
    batch_size: int
    epochs: int


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Softmax cross-entropy averaged over the batch.

    Parameters
    ----------
    logits : Tensor of shape (n, c)
        Network outputs.
    labels : Tensor of shape (n,)
        Class indices.

    Returns
    -------
    Tensor
        The scalar loss.
    """
    return F.cross_entropy(logits, labels)


_AE_TEXT = "binary cross-entropy on the logits, summed over the 64 pixels, averaged over the batch"

#: Problem key → :class:`Problem`.  ``autoencoder`` and ``cnn`` run by default.
PROBLEMS: dict[str, Problem] = {
    "autoencoder": Problem(
        key="autoencoder",
        title="digits autoencoder 64-128-64-32-8-32-64-128-64, sigmoid hidden units, linear code",
        images=False,
        build=autoencoder,
        loss=bce_sum_mean,
        loss_text=_AE_TEXT,
        likelihood="bernoulli",
        batch_size=128,
        epochs=10,
    ),
    "cnn": Problem(
        key="cnn",
        title="digits CNN conv(8)-conv(16)-pool-fc(64)-fc(10), ReLU",
        images=True,
        build=digits_cnn,
        loss=_cross_entropy,
        loss_text="softmax cross-entropy averaged over the batch",
        likelihood="cross_entropy",
        batch_size=128,
        epochs=10,
    ),
    "autoencoder_relu": Problem(
        key="autoencoder_relu",
        title="digits autoencoder 64-128-64-32-8-32-64-128-64, ReLU hidden units (Koroko et al.), linear code",
        images=False,
        build=lambda: autoencoder(activation="relu"),
        loss=bce_sum_mean,
        loss_text=_AE_TEXT,
        likelihood="bernoulli",
        batch_size=128,
        epochs=10,
    ),
}

#: Problems run when ``--problems`` is not given.
DEFAULT_PROBLEMS: tuple[str, ...] = ("autoencoder", "cnn")
