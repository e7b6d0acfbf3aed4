"""nn_adapters: torch layers mapped onto kronalg primitives.

A layer's Fisher block is ``F = E[vec(DW̄) vec(DW̄)ᵀ]`` with ``W̄ = [W | b]`` (bias
as last column; Conv2d weights as ``(c_out, c_in·kh·kw)`` via ``unfold``),
row-major vec, and the expectation the mean over samples of the per-sample
negative log-likelihood's gradient (targets sampled from the model, or given).
Approximations are :class:`kronalg.KronSum` objects with factors in the order
(output side, input side).

* :func:`fisher_blocks` — K-FAC, TKFAC, KPSVD, deflation, Lanczos, KFAC-corrected, K-FOC, and the low-rank
  K-FAC family RS-KFAC, B-KFAC, B-R-KFAC, B-KFAC-C.
* :func:`fisher_sample_sums` — the exact block as an implicit :class:`kronalg.SampleKronSum`.
* :func:`exact_fisher_blocks` — dense exact blocks from ``torch.func`` per-sample gradients.
* :func:`register_adapter` — add a layer type.
* :class:`KroneckerPreconditioner` — natural-gradient preconditioning of ``.grad`` for any torch optimizer,
  with every approximation above.
* :class:`DistributedKroneckerPreconditioner` — the same under ``DistributedDataParallel``: per-sample factors
  gathered to each layer's owner rank, which does that layer's curvature work and broadcasts the result (KAISA-style).
* :class:`KFAC` — Martens & Grosse's complete K-FAC optimizer (block-diagonal or block-tridiagonal inverse,
  exact-Fisher re-scaling, momentum from the quadratic model, adaptive λ and γ; ``step(closure)``).
"""

from .capture import FisherBlocks, UnsupportedLayerWarning, sample_targets
from .distributed import DistributedKroneckerPreconditioner
from .exact import exact_fisher_blocks
from .fisher import METHODS, OPTIONS, fisher_blocks, fisher_sample_sums
from .kfac import KFAC
from .layers import LayerAdapter
from .preconditioner import APPROXIMATIONS, KroneckerPreconditioner
from .registry import get_adapter, register_adapter

__all__ = [
    "APPROXIMATIONS",
    "METHODS",
    "DistributedKroneckerPreconditioner",
    "OPTIONS",
    "FisherBlocks",
    "KFAC",
    "KroneckerPreconditioner",
    "LayerAdapter",
    "UnsupportedLayerWarning",
    "exact_fisher_blocks",
    "fisher_blocks",
    "fisher_sample_sums",
    "get_adapter",
    "register_adapter",
    "sample_targets",
]
