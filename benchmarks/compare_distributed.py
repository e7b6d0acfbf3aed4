"""Communication and sharding speedup of ``DistributedKroneckerPreconditioner`` (2 gloo ranks on this CPU).

Run from the repository root::

    python -m benchmarks.compare_distributed [--width 256] [--depth 6] [--batch 128] [--steps 8] [--approx kfac ...]

An MLP ``width → width`` (``--depth`` hidden layers, Tanh) plus a 10-way head, float32, cross-entropy, SGD.  The global
batch ``--batch`` is split evenly over the ranks.  Every process uses one thread, so 2 ranks use the 2 cores.

Printed per approximation:

* ``grad MB``: DDP's all-reduce buffer per step (all gradients), the reference volume;
* ``factors MB``: per-sample factors each rank sends to the layers' owners per statistics step (``gather``);
* ``results MB``: the preconditioned gradients broadcast by the owners per step (all buckets; ≈ grad MB);
* ``work 1r``/``work 2r``: ms per step spent in the curvature's ``update + refresh + precondition`` — one process
  (plain :class:`~nn_adapters.KroneckerPreconditioner`, whole batch) vs the busiest of 2 ranks; ``speedup`` their
  ratio (ideal 2, bounded by the owner balance);
* ``step 1r``/``step 2r``: ms per ``pre.step()`` including the communication (2 ranks: the slower rank).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nn_adapters import KroneckerPreconditioner
from nn_adapters.distributed import DistributedKroneckerPreconditioner


def _model(width: int, depth: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def _time_curvature(pre: KroneckerPreconditioner) -> list[float]:
    """Wrap every curvature's update/refresh/precondition with a timer; returns the accumulator."""
    acc = [0.0]
    for curv in pre.layers.values():
        for meth in ("update", "refresh", "precondition"):
            fn = getattr(curv, meth)

            def timed(*a, _fn=fn, **k):
                t0 = time.perf_counter()
                out = _fn(*a, **k)
                acc[0] += time.perf_counter() - t0
                return out

            setattr(curv, meth, timed)
    return acc


def _run(rank: int, world: int, args: argparse.Namespace, approx: str) -> dict:
    torch.set_num_threads(1)
    model = _model(args.width, args.depth)
    opts = {"approx": approx, "damping": 1e-3, "on_unsupported": "raise"}
    if world > 1:
        fwd = nn.parallel.DistributedDataParallel(model)
        pre = DistributedKroneckerPreconditioner(fwd, **opts)
    else:
        fwd, pre = model, KroneckerPreconditioner(model, **opts)
    opt = torch.optim.SGD(fwd.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(1)
    n = args.batch // world
    work, step_time = _time_curvature(pre), 0.0
    for k in range(args.steps + 2):  # two warm-up steps
        x = torch.randn(args.batch, args.width, generator=gen)[rank * n : (rank + 1) * n]
        y = torch.randint(0, 10, (args.batch,), generator=gen)[rank * n : (rank + 1) * n]
        opt.zero_grad()
        nn.functional.cross_entropy(fwd(x), y).backward()
        if world > 1:
            dist.barrier()
        if k == 2:
            work[0], step_time = 0.0, 0.0
        t0 = time.perf_counter()
        pre.step()
        step_time += time.perf_counter() - t0
        opt.step()
    out = {"work": work[0] / args.steps, "step": step_time / args.steps}
    if world > 1:
        out["comm"] = dict(pre.last_comm_bytes)
        out["owned"] = len(pre._owned)
    out["grad_bytes"] = sum(p.numel() * p.element_size() for p in model.parameters())
    return out


def _worker(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timedelta(seconds=60))
    try:
        results = {approx: _run(rank, 2, args, approx) for approx in args.approx}
        gathered = [None, None]
        dist.all_gather_object(gathered, results)
        if rank == 0:
            torch.save(gathered, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--approx", nargs="+", default=["kfac", "kpsvd", "b_kfac"])
    parser.add_argument("--timeout", type=float, default=300.0, help="wall-clock bound of the 2-rank run (s)")
    args = parser.parse_args(argv)

    single = {approx: _run(0, 1, args, approx) for approx in args.approx}
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"compare_distributed_{os.getpid()}.pt")
    ctx = mp.start_processes(_worker, args=(_free_port(), args, out), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + args.timeout
    try:
        while not ctx.join(timeout=0.5):
            if time.monotonic() > deadline:
                sys.exit(f"2-rank run still going after {args.timeout} s; stopped")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
    ranks = torch.load(out, weights_only=False)
    os.remove(out)

    mb = 2.0**20
    print(
        f"MLP {args.depth}×Linear({args.width},{args.width}) + Linear({args.width},10), float32, "
        f"global batch {args.batch} ({args.batch // 2}/rank), {args.steps} steps, 1 thread per process"
    )
    header = (
        f"{'approx':<8} {'grad MB':>8} {'factors MB':>10} {'results MB':>10} {'work 1r':>8} {'work 2r':>8} "
        f"{'speedup':>7} {'step 1r':>8} {'step 2r':>8} {'owned':>6}"
    )
    print(header)
    print("-" * len(header))
    for approx in args.approx:
        one, two = single[approx], [r[approx] for r in ranks]
        work2 = max(r["work"] for r in two)
        step2 = max(r["step"] for r in two)
        comm = two[0]["comm"]
        print(
            f"{approx:<8} {one['grad_bytes'] / mb:>8.2f} {comm['factors'] / mb:>10.2f} {comm['results'] / mb:>10.2f} "
            f"{one['work'] * 1e3:>6.1f}ms {work2 * 1e3:>6.1f}ms {one['work'] / work2:>6.2f}× "
            f"{one['step'] * 1e3:>6.1f}ms {step2 * 1e3:>6.1f}ms {two[0]['owned']:>2}/{two[1]['owned']:<3}"
        )


if __name__ == "__main__":
    main()
