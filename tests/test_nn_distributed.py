"""DistributedKroneckerPreconditioner: 2 gloo ranks under DDP against one process on the concatenated batches.

Every spawned run has a wall-clock bound (:func:`_spawn`) and the process group a 30 s collective timeout, so a rank
that fails or stalls ends the test with an error instead of a hang.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from datetime import timedelta

import pytest
import torch
from torch import nn

dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)
mp = pytest.importorskip("torch.multiprocessing")

from nn_adapters import KroneckerPreconditioner  # noqa: E402
from nn_adapters.capture import LayerCapture  # noqa: E402
from nn_adapters.distributed import DistributedKroneckerPreconditioner, assign_layers, layer_cost  # noqa: E402

WORLD = 2
N_LOCAL = 4  # samples per rank and step (equal local batches: DDP's average is then the global mean)
STEPS = 4
#: float64 throughout; the only differences from one process are the summation orders of the gradient all-reduce
#: and of the factor statistics, amplified a little by the iterative solvers' warm starts.
RTOL, ATOL = 1e-9, 1e-11
CONFIGS = {
    "kfac": {"approx": "kfac"},
    "kpsvd": {"approx": "kpsvd", "tol": 1e-10},
    "lanczos": {"approx": "lanczos", "tol": 1e-10},
    "b_kfac": {"approx": "b_kfac", "truncation_rank": 4},
    "tkfac_new": {"approx": "tkfac", "tkfac_damping": "new", "inverse_every": 2},
}
COMMON = {"damping": 1e-2, "kl_clip": 1e-3, "lr": 0.1, "on_unsupported": "raise"}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(48, 10), nn.Tanh(), nn.Linear(10, 3)
    ).double()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(WORLD * N_LOCAL, 2, 6, 6, generator=gen, dtype=torch.float64),
            torch.randint(0, 3, (WORLD * N_LOCAL,), generator=gen),
        )
        for _ in range(STEPS)
    ]


def _train(model: nn.Module, pre: KroneckerPreconditioner, batches: list, rank: int | None) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=COMMON["lr"], momentum=0.9)
    for x, y in batches:
        if rank is not None:
            x, y = x[rank * N_LOCAL : (rank + 1) * N_LOCAL], y[rank * N_LOCAL : (rank + 1) * N_LOCAL]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        pre.step()
        opt.step()


# ---------------------------------------------------------------------------------------------------- child side
def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def _init(rank: int, port: int) -> None:
    warnings.simplefilter("error")  # as strict as the pytest configuration of the parent
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=30))


def _equivalence_worker(rank: int, port: int, out: str) -> None:
    _init(rank, port)
    try:
        results = {}
        for key, cfg in CONFIGS.items():
            ddp = nn.parallel.DistributedDataParallel(_model())
            pre = DistributedKroneckerPreconditioner(ddp, **COMMON, **cfg)
            _train(ddp, pre, _batches(), rank)
            state = pre.consolidated_state_dict()
            if key == "kfac":  # per-rank state round trip, and a state of other layers is refused
                again = DistributedKroneckerPreconditioner(_model(), **COMMON, **cfg)
                again.load_state_dict(pre.state_dict())
                results["roundtrip"] = _same(again.state_dict(), pre.state_dict())
                try:
                    again.load_state_dict({**pre.state_dict(), "layers": {}})
                    results["refused"] = ""
                except ValueError as exc:
                    results["refused"] = str(exc)
            results[key] = {
                "params": {k: v.detach().clone() for k, v in ddp.module.state_dict().items()},
                "owners": pre.owners,
                "comm": dict(pre.last_comm_bytes),
                "kl_scale": pre.last_kl_scale,
                "state": state,
            }
        # unequal local batch sizes: the owner receives the concatenation in rank order
        pre = DistributedKroneckerPreconditioner(_model(), approx="kfac", on_unsupported="raise")
        gen = torch.Generator().manual_seed(5)
        full = {
            name: LayerCapture(
                torch.randn(8, *((16,) if name == "0" else ()), curv.p, generator=gen, dtype=torch.float64),
                torch.randn(8, *((16,) if name == "0" else ()), curv.r, generator=gen, dtype=torch.float64),
            )
            for name, curv in pre.layers.items()
        }
        cut = 5 if rank == 0 else 3
        lo, hi = (0, cut) if rank == 0 else (5, 8)
        local = {name: LayerCapture(c.G[lo:hi], c.A[lo:hi]) for name, c in full.items() if name != "5" or rank == 0}
        shared = pre._share_captures(local)
        errors = {}
        for name, cap in shared.items():
            n = 8 if name != "5" else 5  # layer "5" was recorded on rank 0 only
            same = cap.G.shape == full[name].G[:n].shape and cap.A.shape == full[name].A[:n].shape
            errors[name] = (
                max(float((cap.G - full[name].G[:n]).abs().max()), float((cap.A - full[name].A[:n]).abs().max()))
                if same
                else float("inf")
            )
        results["unequal_errors"] = errors
        gathered = [None] * WORLD
        dist.all_gather_object(gathered, results)
        if rank == 0:
            torch.save(gathered, out)
    finally:
        dist.destroy_process_group()


def _failing_worker(rank: int, port: int, out: str) -> None:
    _init(rank, port)
    try:
        ddp = nn.parallel.DistributedDataParallel(_model())
        pre = DistributedKroneckerPreconditioner(ddp, approx="kfac", on_unsupported="raise")
        if rank == 1:
            curv = pre.layers[pre._owned[0]]
            update = curv.update

            def broken(cap: LayerCapture, decay: float) -> None:
                if curv.n_updates >= 1:
                    raise RuntimeError("injected failure on rank 1")
                update(cap, decay)

            curv.update = broken
        _train(ddp, pre, _batches(), rank)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------------- parent side
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, out: str, timeout: float = 45.0) -> None:
    """Run ``fn(rank, port, out)`` on ``WORLD`` processes; raise what a rank raised, or on the wall-clock bound."""
    ctx = mp.start_processes(fn, args=(_free_port(), out), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=0.5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"spawned ranks still running after {timeout} s")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
            proc.join(5)


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory) -> list:
    out = str(tmp_path_factory.mktemp("dist") / "results.pt")
    _spawn(_equivalence_worker, out)
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("key", list(CONFIGS))
def test_matches_single_process(distributed_results, key):
    model = _model()
    pre = KroneckerPreconditioner(model, **COMMON, **CONFIGS[key])
    _train(model, pre, _batches(), None)
    expected = model.state_dict()
    for rank_results in distributed_results:
        got = rank_results[key]
        assert set(got["owners"].values()) == {0, 1}  # the work really is split
        for name, value in expected.items():
            torch.testing.assert_close(got["params"][name], value, rtol=RTOL, atol=ATOL, msg=f"{key}: {name}")
        assert got["kl_scale"] == pytest.approx(pre.last_kl_scale, rel=1e-9)
        assert got["comm"]["factors"] > 0 and got["comm"]["results"] > 0
    # the consolidated state is a full single-process state, loadable and close to the single-process one
    state = distributed_results[0][key]["state"]
    assert distributed_results[1][key]["state"] is None
    reference = pre.state_dict()
    assert set(state["layers"]) == set(reference["layers"]) and state["steps"] == reference["steps"]
    fresh = KroneckerPreconditioner(_model(), **COMMON, **CONFIGS[key])
    fresh.load_state_dict(state)
    for name, layer in reference["layers"].items():
        assert state["layers"][name]["n_updates"] == layer["n_updates"]


def test_per_rank_state_round_trip(distributed_results):
    for rank_results in distributed_results:
        assert rank_results["roundtrip"] is True
        assert "expected all of" in rank_results["refused"]


def test_unequal_local_batches_concatenate_in_rank_order(distributed_results):
    errors = [rank_results["unequal_errors"] for rank_results in distributed_results]
    assert set(errors[0]).isdisjoint(errors[1])  # each layer reaches its owner only
    assert set(errors[0]) | set(errors[1]) == {"0", "3", "5"}
    assert all(err == 0.0 for rank_errors in errors for err in rank_errors.values()), errors


def test_rank_failure_surfaces(tmp_path):
    start = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException, match="injected failure on rank 1"):
        _spawn(_failing_worker, str(tmp_path / "unused"))
    assert time.monotonic() - start < 45


def test_assign_layers_greedy_and_deterministic():
    costs = {"a": 1.0, "b": 9.0, "c": 4.0, "d": 4.0, "e": 2.0}
    owners = assign_layers(costs, 2)
    assert owners == assign_layers(dict(costs), 2)
    assert list(owners) == list(costs)
    load = [sum(c for n, c in costs.items() if owners[n] == q) for q in range(2)]
    assert load == [10.0, 10.0]  # b→0, c→1, d→1, e→1, a→0
    assert assign_layers(costs, 1) == dict.fromkeys(costs, 0)
    with pytest.raises(ValueError, match="`world_size`"):
        assign_layers(costs, 0)


def test_layer_cost():
    cfg = {"truncation_rank": 4}
    assert layer_cost("kfac", 3, 5, cfg) == 27 + 125
    assert layer_cost("b_kfac", 3, 5, cfg) == 3 * 9 + 5 * 16


def test_needs_initialized_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is initialized in this process")
    with pytest.raises(RuntimeError, match=r"initialized torch\.distributed"):
        DistributedKroneckerPreconditioner(_model())
