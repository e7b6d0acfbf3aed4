"""``DistributedKroneckerPreconditioner``: data-parallel preconditioning with layer-wise work sharding.

Usage (every rank runs the same code; ``torch.distributed`` initialized, the model wrapped in DDP)::

    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    pre = DistributedKroneckerPreconditioner(ddp, approx="kfac", damping=1e-3)
    for x, y in local_loader:  # each rank its own shard of the global batch
        opt.zero_grad()
        loss_fn(ddp(x), y).backward()  # DDP all-reduces .grad
        pre.step()  # same .grad ← F̂⁻¹ .grad on every rank
        opt.step()

The scheme is KAISA's memory-optimized ("gradient broadcast") variant (Pauloski et al. 2021, *KAISA: an adaptive
second-order optimizer framework for deep neural networks*, SC21), made independent of the approximation by moving
*per-sample factors* instead of approximation-specific statistics:

1. every layer has one *owner* rank, chosen once by a deterministic greedy balance of the estimated inverse cost
   (:func:`assign_layers`, :func:`layer_cost`);
2. on statistics steps each rank sends its local per-sample factors ``(G, A)`` of a layer to the layer's owner
   (``torch.distributed.gather``, one bucket per owner, unequal local batch sizes padded); concatenated in rank order
   they are exactly the factors the hooks would record on the global batch;
3. only the owner updates and refreshes the layer's curvature and computes ``P = F̂_damped⁻¹ mat(∇W̄)`` from the
   (already all-reduced) gradient;
4. every owner broadcasts its layers' ``P`` in one bucket; every rank then applies the same KL clipping factor ``ν``
   (computed from the broadcast ``P`` and the identical gradients) and writes ``.grad``.

So every rank ends the step with the same ``.grad`` as a single process preconditioning the concatenated batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .capture import LayerCapture
from .curvature import LOWRANK
from .preconditioner import KroneckerPreconditioner

__all__ = ["DistributedKroneckerPreconditioner", "assign_layers", "layer_cost"]


def layer_cost(approx: str, p: int, r: int, cfg: dict[str, Any]) -> float:
    """Estimated cost of one layer's inverse work: ``p³ + r³``, or ``(p + r)·k²`` for the low-rank family.

    Parameters
    ----------
    approx : str
        The approximation.
    p, r : int
        Output-side and input-side factor sizes.
    cfg : dict
        The preconditioner's options (``truncation_rank`` of the low-rank family).

    Returns
    -------
    float
    """
    if approx in LOWRANK:
        k = cfg["truncation_rank"] if isinstance(cfg["truncation_rank"], int) else max(p, r)
        return float(p * min(p, k) ** 2 + r * min(r, k) ** 2)
    return float(p**3 + r**3)


def assign_layers(costs: dict[str, float], world_size: int) -> dict[str, int]:
    """Owner rank of each layer: longest-processing-time-first greedy balance of the costs.

    Layers are taken by decreasing cost (ties by their order in ``costs``) and each goes to the rank with the least
    load so far (ties to the lowest rank), so every rank computes the same assignment.

    Parameters
    ----------
    costs : dict
        Layer name → estimated cost.
    world_size : int
        Number of ranks.

    Returns
    -------
    dict
        Layer name → owner rank (in the process group).

    Examples
    --------
    >>> assign_layers({"a": 8.0, "b": 1.0, "c": 5.0, "d": 4.0}, 2)
    {'a': 0, 'b': 0, 'c': 1, 'd': 1}
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"`world_size` must be a positive int, got {world_size!r}")
    load = [0.0] * world_size
    owners: dict[str, int] = {}
    order = sorted(enumerate(costs.items()), key=lambda item: (-item[1][1], item[0]))
    for _, (name, cost) in order:
        rank = min(range(world_size), key=lambda q: (load[q], q))
        owners[name] = rank
        load[rank] += cost
    return {name: owners[name] for name in costs}


class DistributedKroneckerPreconditioner(KroneckerPreconditioner):
    """:class:`~nn_adapters.KroneckerPreconditioner` for data-parallel training, each layer's work on one rank.

    Parameters
    ----------
    model : torch.nn.Module
        The network or its ``DistributedDataParallel`` wrapper (unwrapped, so layer names match a single process).
    process_group : torch.distributed.ProcessGroup, optional
        The data-parallel group (default: the world).
    **kwargs
        Everything :class:`~nn_adapters.KroneckerPreconditioner` takes, with the same meaning.

    Attributes
    ----------
    rank, world_size : int
        This process in ``process_group``.
    owners : dict
        Layer name → owner rank (identical on every rank).
    last_comm_bytes : dict
        Bytes this rank put into collectives during the last :meth:`step`: ``"meta"`` (the shapes, all-gathered),
        ``"factors"`` (this rank's per-sample factors sent to owners), ``"results"`` (the preconditioned-gradient
        buckets broadcast, whole bucket counted once per broadcast), ``"other"`` (TKFAC's scalar).
    total_comm_bytes : int
        The sum of ``last_comm_bytes`` over all steps.

    Notes
    -----
    Requirements: every rank constructs the preconditioner with the same arguments and calls :meth:`step` the same
    number of times (the collectives are matched by order); ``.grad`` must already be identical on every rank (DDP,
    or an explicit all-reduce).  Local batch sizes may differ: the factors are padded to the largest one for the
    gather; but then DDP's average of local means is not the mean over the global batch, which the curvature
    statistics are — equal local batch sizes give exactly the single-process step.

    :meth:`state_dict` holds only the layers this rank owns (save one file per rank);
    :meth:`consolidated_state_dict` collects a full, single-process-format state on one rank.
    """

    def __init__(self, model: nn.Module, *, process_group: Any = None, **kwargs: Any):
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("DistributedKroneckerPreconditioner needs an initialized torch.distributed")
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        super().__init__(model, **kwargs)
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        costs = {name: layer_cost(self.approx, c.p, c.r, self.cfg) for name, c in self.layers.items()}
        self.owners = assign_layers(costs, self.world_size)
        self._owned = [name for name in self.layers if self.owners[name] == self.rank]
        params = [p for module, _ in self._modules.values() for p in module.parameters()]
        self._comm_dtype = params[0].dtype if params else torch.get_default_dtype()
        self._device = params[0].device if params else torch.device("cpu")
        self.last_comm_bytes = {"meta": 0, "factors": 0, "results": 0, "other": 0}
        self.total_comm_bytes = 0

    # ------------------------------------------------------------------ communication helpers
    def _global(self, group_rank: int) -> int:
        if self.process_group is None:
            return group_rank
        return dist.get_global_rank(self.process_group, group_rank)

    def _count(self, key: str, t: Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        self.last_comm_bytes[key] += nbytes
        self.total_comm_bytes += nbytes

    def record_sampled(self, output: Tensor, loss: str = "cross_entropy") -> None:
        """As :meth:`KroneckerPreconditioner.record_sampled`, with an independent target stream on each rank.

        Parameters
        ----------
        output : Tensor
            The model output.
        loss : {"cross_entropy", "mse"}
            The likelihood to sample from.
        """
        if self._stats.armed:
            self._stats.record_sampled(output, loss, seed=[self.seed + 7 * self.steps, self.rank])

    # ------------------------------------------------------------------ the distribution hooks
    def step(self) -> None:
        """Precondition every supported layer's ``.grad`` as one process would on the global batch (collective)."""
        self.last_comm_bytes = dict.fromkeys(self.last_comm_bytes, 0)
        super().step()

    def _local_layers(self) -> list[str]:
        return list(self._owned)

    def _share_captures(self, captures: dict[str, LayerCapture]) -> dict[str, LayerCapture]:
        if not self._stats.armed:  # the same on every rank: steps are counted alike
            return {}
        names = list(self.layers)
        meta = torch.zeros(len(names), 6, dtype=torch.int64, device=self._device)
        for i, name in enumerate(names):
            cap = captures.get(name)
            if cap is not None:
                if cap.G.ndim not in (2, 3) or cap.A.ndim != cap.G.ndim or cap.A.shape[0] != cap.G.shape[0]:
                    raise ValueError(f"layer {name!r}: unexpected factor shapes {tuple(cap.G.shape)}, {cap.A.shape}")
                gt, at = list(cap.G.shape[1:]), list(cap.A.shape[1:])
                meta[i] = torch.tensor([cap.G.shape[0], cap.G.ndim, *[*gt, 0][:2], *[*at, 0][:2]])
        metas = [torch.empty_like(meta) for _ in range(self.world_size)]
        dist.all_gather(metas, meta, group=self.process_group)
        self._count("meta", meta)
        table = torch.stack(metas).cpu()  # (world, layers, 6), identical on every rank

        plan: dict[str, tuple[list[int], tuple[int, ...], tuple[int, ...]]] = {}
        for i, name in enumerate(names):
            rows = table[:, i]
            present = rows[:, 0] > 0
            if not bool(present.any()):
                continue
            shapes = {tuple(row[1:].tolist()) for row in rows[present]}
            if len(shapes) > 1:  # every rank sees the same table, so every rank raises here
                raise ValueError(f"layer {name!r}: per-sample factor shapes differ across ranks: {sorted(shapes)}")
            ndim, *trail = next(iter(shapes))
            gtrail = tuple(trail[: ndim - 1])
            atrail = tuple(trail[2 : 2 + ndim - 1])
            plan[name] = (rows[:, 0].tolist(), gtrail, atrail)

        result: dict[str, LayerCapture] = {}
        for owner in range(self.world_size):
            mine = [name for name in names if name in plan and self.owners[name] == owner]
            if not mine:
                continue
            chunks = []
            for name in mine:
                counts, gtrail, atrail = plan[name]
                n_max = max(counts)
                cap = captures.get(name)
                for trail, factor in (
                    (gtrail, None if cap is None else cap.G),
                    (atrail, None if cap is None else cap.A),
                ):
                    block = torch.zeros((n_max, *trail), dtype=self._comm_dtype, device=self._device)
                    if factor is not None:
                        block[: factor.shape[0]] = factor
                    chunks.append(block.reshape(-1))
            bucket = torch.cat(chunks)
            gathered = [torch.empty_like(bucket) for _ in range(self.world_size)] if owner == self.rank else None
            dist.gather(bucket, gathered, dst=self._global(owner), group=self.process_group)
            self._count("factors", bucket)
            if gathered is None:
                continue
            offset = 0
            for name in mine:
                counts, gtrail, atrail = plan[name]
                n_max = max(counts)
                size_g, size_a = n_max * math.prod(gtrail), n_max * math.prod(atrail)
                Gs, As = [], []
                for src, n in enumerate(counts):
                    Gs.append(gathered[src][offset : offset + size_g].reshape(n_max, *gtrail)[:n])
                    As.append(gathered[src][offset + size_g : offset + size_g + size_a].reshape(n_max, *atrail)[:n])
                offset += size_g + size_a
                result[name] = LayerCapture(torch.cat(Gs), torch.cat(As))
        return result

    def _share_results(self, results: dict[str, Tensor | None]) -> dict[str, Tensor]:
        shared: dict[str, Tensor] = {}
        for owner in range(self.world_size):
            mine = [name for name in self.layers if self.owners[name] == owner]
            if not mine:
                continue
            sizes = [self.layers[name].p * self.layers[name].r for name in mine]
            bucket = torch.zeros(sum(sizes) + len(mine), dtype=self._comm_dtype, device=self._device)
            flags = bucket[sum(sizes) :]
            if owner == self.rank:
                offset = 0
                for k, (name, size) in enumerate(zip(mine, sizes)):
                    P = results.get(name)
                    if P is not None:
                        bucket[offset : offset + size] = P.reshape(-1)
                        flags[k] = 1
                    offset += size
            dist.broadcast(bucket, src=self._global(owner), group=self.process_group)
            self._count("results", bucket)
            offset = 0
            for k, (name, size) in enumerate(zip(mine, sizes)):
                if bool(flags[k] > 0):
                    P = results.get(name) if owner == self.rank else None
                    if P is None:
                        P = bucket[offset : offset + size].reshape(self.layers[name].p, self.layers[name].r)
                    shared[name] = P
                offset += size
        return shared

    def _reduce_tkfac_context(self, context: dict[str, float]) -> dict[str, float]:
        if not context:
            return context
        beta = torch.tensor([context["tkfac_beta"]], dtype=torch.float64, device=self._device)
        dist.all_reduce(beta, op=dist.ReduceOp.MAX, group=self.process_group)
        self._count("other", beta)
        return {**context, "tkfac_beta": float(beta)}

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """State of the layers this rank owns only (save one file per rank, or use :meth:`consolidated_state_dict`).

        Returns
        -------
        dict
        """
        state = super().state_dict()
        state["layers"] = {name: state["layers"][name] for name in self._owned}
        state["rank"], state["world_size"] = self.rank, self.world_size
        return state

    def consolidated_state_dict(self, dst: int = 0) -> dict[str, Any] | None:
        """The full state (every layer, :class:`KroneckerPreconditioner` format) on rank ``dst`` (collective).

        Parameters
        ----------
        dst : int
            The group rank receiving the state.

        Returns
        -------
        dict or None
            The state on ``dst``, ``None`` on the other ranks.
        """
        state = self.state_dict()
        parts: list[Any] | None = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(state["layers"], parts, dst=self._global(dst), group=self.process_group)
        if parts is None:
            return None
        full = {key: value for key, value in state.items() if key not in ("rank", "world_size")}
        merged = {name: layer for part in parts for name, layer in part.items()}
        full["layers"] = {name: merged[name] for name in self.layers}
        return full

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a per-rank :meth:`state_dict` of this rank, or a full state (single-process or consolidated).

        Parameters
        ----------
        state : dict

        Raises
        ------
        ValueError
            If ``state`` is for another approximation, or holds neither every layer nor exactly this rank's layers.
        """
        if set(state.get("layers", ())) not in (set(self.layers), set(self._owned)):
            raise ValueError(
                f"`state` has layers {sorted(state.get('layers', ()))}, expected all of {sorted(self.layers)} "
                f"or this rank's {sorted(self._owned)}"
            )
        owned = set(self._owned)  # the other layers stay blank: this rank never uses them
        layers = {
            name: state["layers"][name] if name in owned else self.layers[name].state_dict() for name in self.layers
        }
        super().load_state_dict({**state, "layers": layers})
