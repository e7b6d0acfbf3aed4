"""Factor statistics recorded from ordinary training steps (hooks for optimizers).

:class:`TrainingStatistics` hooks every supported layer of a model.  While it
is *armed*, a forward pass records each layer's input factors ``ā`` (bias
coordinate appended, convolution patches) and keeps the layer's output; the
output gradients ``g`` then come either

* from the training backward pass itself (``fisher="empirical"``): the hook on
  the layer output sees the gradient of the *batch* loss, which is rescaled to
  the per-sample loss by the Scale rule of the design (× batch size for
  ``loss_reduction="mean"``), or
* from one extra backward pass on targets sampled from the model
  (``fisher="sampled"``, :meth:`TrainingStatistics.record_sampled`), which
  gives the true Fisher's statistics and leaves ``.grad`` untouched.

:meth:`TrainingStatistics.pop` hands over what one step recorded as
:class:`~nn_adapters.capture.LayerCapture` objects (several forward passes in
one step, e.g. gradient accumulation, are concatenated along the batch axis).
Nothing is recorded while disarmed, in ``torch.no_grad()`` or in eval mode
(unless ``record_in_eval=True``), so evaluation passes never pollute the
statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .capture import LayerCapture, check_loss, per_sample_nll, sample_targets
from .layers import LayerAdapter

__all__ = ["FISHER_TYPES", "LOSS_REDUCTIONS", "TrainingStatistics"]

#: Where the output-gradient statistics come from.
FISHER_TYPES = ("empirical", "sampled")

#: Reductions of the training loss over the batch (how hooks rescale the gradients they see).
LOSS_REDUCTIONS = ("mean", "sum")


class TrainingStatistics:
    """Hooks recording per-sample factors ``(G, A)`` of supported layers during training.

    Parameters
    ----------
    layers : dict
        Layer name → ``(module, adapter)``, from :func:`nn_adapters.capture.find_layers`.
    fisher : {"empirical", "sampled"}
        Output gradients from the training backward pass, or from
        :meth:`record_sampled` (targets drawn from the model).
    loss_reduction : {"mean", "sum"}
        How the training loss reduces over the batch: with ``"mean"`` the
        gradients a hook sees are multiplied by the batch size ``n`` (the
        leading dimension of the layer's input) to be per-sample gradients.
    record_in_eval : bool
        Also record when a module is in eval mode.

    Attributes
    ----------
    armed : bool
        Whether forward passes are recorded (set by the owner, e.g. only on
        steps where statistics are due).
    """

    def __init__(
        self,
        layers: dict[str, tuple[nn.Module, LayerAdapter]],
        *,
        fisher: str = "empirical",
        loss_reduction: str = "mean",
        record_in_eval: bool = False,
    ):
        if fisher not in FISHER_TYPES:
            raise ValueError(f"`fisher` must be one of {FISHER_TYPES}, got {fisher!r}")
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"`loss_reduction` must be one of {LOSS_REDUCTIONS}, got {loss_reduction!r}")
        self.layers = layers
        self.fisher = fisher
        self.loss_reduction = loss_reduction
        self.record_in_eval = bool(record_in_eval)
        self.armed = False
        self._A: dict[str, list[Tensor]] = {}
        self._G: dict[str, list[Tensor | None]] = {}
        self._outputs: dict[str, list[Tensor]] = {}
        self._handles = [module.register_forward_hook(self._forward_hook(name)) for name, (module, _) in layers.items()]

    # ------------------------------------------------------------------ hooks
    def _forward_hook(self, name: str) -> Any:
        module, adapter = self.layers[name]

        def hook(mod: nn.Module, args: tuple, output: Tensor) -> None:
            if not self.armed or not torch.is_grad_enabled() or not (mod.training or self.record_in_eval):
                return
            if not isinstance(output, Tensor) or not output.requires_grad:
                return
            self._A.setdefault(name, []).append(adapter.input_factors(module, args[0]))
            slot = len(self._A[name]) - 1
            self._G.setdefault(name, []).append(None)
            self._outputs.setdefault(name, []).append(output)
            if self.fisher == "empirical":
                n = args[0].shape[0]
                scale = float(n) if self.loss_reduction == "mean" else 1.0

                def record(grad: Tensor) -> None:
                    if self._G.get(name) is not None and slot < len(self._G[name]):
                        self._G[name][slot] = adapter.output_factors(module, grad * scale)

                output.register_hook(record)

        return hook

    # ------------------------------------------------------------------ public
    def record_sampled(self, output: Tensor, loss: str = "cross_entropy", seed: Any = None) -> None:
        """Output gradients of the per-sample NLL on targets sampled from the model (one extra backward).

        Call it after the forward pass and before the training ``backward``;
        the graph is retained, and ``.grad`` of the parameters is not touched.

        Parameters
        ----------
        output : Tensor of shape (n, ...)
            The model output of the recorded forward pass (logits for cross-entropy).
        loss : {"cross_entropy", "mse"}
            The likelihood to sample from.
        seed : int, numpy.random.Generator or None
            Source of the draws.

        Raises
        ------
        RuntimeError
            If ``fisher`` is not ``"sampled"``.
        """
        if self.fisher != "sampled":
            raise RuntimeError('`record_sampled` needs fisher="sampled"')
        check_loss(loss)
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        names = [name for name in self._outputs if self._G[name] and self._G[name][-1] is None]
        if not names:
            return
        outputs = [self._outputs[name][-1] for name in names]
        y = sample_targets(output, loss, rng)
        total = per_sample_nll(output, y, loss).sum()
        grads = torch.autograd.grad(total, outputs, retain_graph=True, allow_unused=True)
        for name, out, grad in zip(names, outputs, grads):
            module, adapter = self.layers[name]
            grad = torch.zeros_like(out) if grad is None else grad
            self._G[name][-1] = adapter.output_factors(module, grad)

    def pop(self) -> dict[str, LayerCapture]:
        """What was recorded since the last call, and forget it.

        Returns
        -------
        dict
            Layer name → :class:`LayerCapture` (forward passes concatenated);
            layers whose output gradient never arrived (they did not reach the
            loss, or no backward ran) are left out.
        """
        result = {}
        for name, As in self._A.items():
            pairs = [(G, A) for G, A in zip(self._G[name], As) if G is not None]
            if not pairs:
                continue
            if len({tuple(A.shape[1:]) for _, A in pairs}) > 1:  # conv inputs of different sizes: keep the last
                pairs = pairs[-1:]
            G = torch.cat([G for G, _ in pairs]) if len(pairs) > 1 else pairs[0][0]
            A = torch.cat([A for _, A in pairs]) if len(pairs) > 1 else pairs[0][1]
            result[name] = LayerCapture(G, A)
        self.clear()
        return result

    def clear(self) -> None:
        """Drop recorded factors and retained outputs."""
        self._A, self._G, self._outputs = {}, {}, {}

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()
