"""``nn_adapters.fisher_blocks`` side by side: methods against K-FAC, warm starts, and peers.

Run as ``python -m benchmarks.compare_fisher`` (unset ``OPENBLAS_CORETYPE`` for the numbers).
In one run, for an MLP (64-256-256-10) and a small CNN (conv 3→32, conv 32→64, 3×3 on 16×16
inputs, average pooling, linear head), batch sizes 32 and 128, fixed seeds, float32 and
*empirical* cross-entropy targets (one given label tensor, so every library sees the same
targets):

1. the time of each ``fisher_blocks`` method, end to end (forward and backward included), as a
   multiple of ``kfac`` and of one plain forward+backward of the mean loss;
2. warm starts across two minibatches (``fisher_blocks`` has no ``x0`` option; ``kfoc`` on a
   list of minibatches warm-starts each batch from the previous answer internally, and
   ``nearest_kronecker(..., x0=...)`` does it for ``kpsvd`` at the lower level);
3. our K-FAC factors against curvlinops' ``KFACLinearOperator`` and BackPACK's ``KFLR``, with
   the scale constant ``c`` derived from their source (stated in the table) and
   ``‖G⊗A − c·G'⊗A'‖ / ‖G⊗A‖`` computed from the factors without forming the products.

The peers are optional: they are imported inside ``try`` and reported as "not installed".

Conventions of the peers (read from curvlinops 3.0.1 and BackPACK 1.7.1 sources)
-----------------------------------------------------------------------------
curvlinops, ``loss_func=CrossEntropyLoss(reduction="mean")``, ``separate_weight_and_bias=False``,
``kfac_approx="expand"``: ``_gradient_covariances`` is ``(1/N) Σ_n Σ_t g gᵀ`` of the
per-sample gradients (its hook sees ``g/B`` and multiplies by ``B²/N``), ``_input_covariances``
is ``(1/(N·T)) Σ_n Σ_t ā āᵀ`` with the bias 1 appended; so ``c = 1`` for Linear and Conv2d
(with ``reduction="sum"`` the gradient factor would be ``N`` times ours: the factor issue of
curvlinops#82 is a reduction convention, not a bug).  Their vec is column-stacking with the
factor order ``A ⊗ G``, which is ours (row-major vec, ``G ⊗ A``) after the same permutation on
both sides, so the factors are compared directly.  ``fisher_type="empirical"`` matches our
given targets; ``"type-2"`` is the exact model Fisher (= GGN for cross-entropy).

BackPACK ``KFLR`` is the exact GGN (= model Fisher for cross-entropy), never the empirical
Fisher.  Weight and bias are separate: ``weight.kflr = [G', A']`` (``A'`` without the bias
row/column), so it is compared with our ``G ⊗ A[:-1, :-1]``.  Linear: ``G' = (1/N) Σ_n
√H √Hᵀ`` back-propagated, ``A' = (1/N) Σ x xᵀ``, ``c = 1``.  Conv2d: ``A' = (1/N) Σ_n Σ_t â âᵀ``
(``T`` times ours), and ``G'`` sums the back-propagated square root over locations *before*
the outer product (``Σ_c (Σ_t s_t)(Σ_t s_t)ᵀ``, the KFAC-reduce-like choice flagged in their
TODO) — a different statistic from KFC's ``Σ_t s_t s_tᵀ``, so for Conv2d only ``A`` is
compared (``c = 1/T``).  To get the exact model Fisher from our API (which takes given
targets), every input is repeated ``C`` times with soft targets ``y = p − √(C·p_c)(e_c − p)``,
whose per-sample gradient w.r.t. the logits is ``√(C·p_c)(e_c − p)`` (``Σ_c y_c = 1``), so
``(1/(N·C)) Σ_{n,c} s sᵀ = (1/N) Σ_n (diag p − p pᵀ)`` exactly.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from kronalg import nearest_kronecker
from nn_adapters import METHODS, fisher_blocks, fisher_sample_sums

try:
    from curvlinops import KFACLinearOperator

    CURVLINOPS: str | None = None
except Exception as exc:  # an optional peer: any import failure means "not installed"
    KFACLinearOperator = None
    CURVLINOPS = f"not installed ({type(exc).__name__}: {exc})"

try:
    from backpack import backpack, extend
    from backpack.extensions import KFAC as BPKFAC
    from backpack.extensions import KFLR as BPKFLR

    BACKPACK: str | None = None
except Exception as exc:
    BACKPACK = f"not installed ({type(exc).__name__}: {exc})"

SEED = 0
CLASSES = 10
BUDGET_S = 2.0  # stop repeating a timing once this much time has been spent on it
POWER_MAXITER = 100  # cap for the explicit power-SVD warm-start timings


# -- problems -----------------------------------------------------------------------------


def make_mlp() -> nn.Module:
    """64-256-256-10 ReLU MLP (digits-sized input)."""
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, CLASSES))


def make_cnn() -> nn.Module:
    """Conv 3→32, conv 32→64 (3×3, padding 1) on 16×16 inputs, 2×2 average pools, linear head."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, CLASSES),
    )


MODELS = {"mlp": (make_mlp, (64,)), "cnn": (make_cnn, (3, 16, 16))}


def problem(kind: str, batch: int, offset: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """Model (fixed seed, eval mode) and one minibatch ``(x, y)``; ``offset`` picks another batch."""
    make, shape = MODELS[kind]
    torch.manual_seed(SEED)
    model = make().eval()
    gen = torch.Generator().manual_seed(SEED + 1 + offset)
    x = torch.randn(batch, *shape, generator=gen)
    y = torch.randint(0, CLASSES, (batch,), generator=gen)
    return model, x, y


def conv_locations(model: nn.Module, x: Tensor) -> dict[str, int]:
    """Number of output locations ``T`` of each Conv2d (1 for Linear)."""
    out: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o[0, 0].numel()))
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    return out


# -- timing and comparison helpers ----------------------------------------------------------


def best_time(f: Callable[[], object], repeat: int) -> float:
    """Best wall time of up to ``repeat`` calls (fewer once ``BUDGET_S`` is spent)."""
    times: list[float] = []
    spent = 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
        if spent > BUDGET_S:
            break
    return min(times)


def forward_backward(model: nn.Module, x: Tensor, y: Tensor) -> None:
    """One plain forward + backward of the mean cross-entropy (the unit of the table)."""
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()


def kron_rel_diff(G: Tensor, A: Tensor, G2: Tensor, A2: Tensor, c: float) -> float:
    """``‖G⊗A − c·G2⊗A2‖_F / ‖G⊗A‖_F`` from Frobenius inner products (nothing formed)."""
    G, A, G2, A2 = (t.detach().double() for t in (G, A, G2, A2))
    nGA = (G * G).sum() * (A * A).sum()
    cross = (G * G2).sum() * (A * A2).sum()
    n2 = (G2 * G2).sum() * (A2 * A2).sum()
    return float(torch.sqrt(torch.clamp(nGA - 2 * c * cross + c * c * n2, min=0.0) / nGA))


def rel_diff(X: Tensor, Y: Tensor, c: float) -> float:
    """``‖X − c·Y‖_F / ‖X‖_F``."""
    X, Y = X.detach().double(), Y.detach().double()
    return float(torch.linalg.norm(X - c * Y) / torch.linalg.norm(X))


def true_fisher_replicas(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Inputs repeated ``C`` times with soft targets whose empirical Fisher is the model Fisher."""
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
    C = p.shape[1]
    eye = torch.eye(C, dtype=p.dtype)
    xs, ys = [], []
    for c in range(C):
        s = torch.sqrt(C * p[:, c : c + 1]) * (eye[c] - p)  # gradient of the per-sample loss
        xs.append(x)
        ys.append(p - s)
    return torch.cat(xs), torch.cat(ys)


# -- 1. methods against K-FAC -----------------------------------------------------------------


def method_rows(kind: str, batch: int, methods: list[str], repeat: int, skip: dict[str, str]) -> list[str]:
    model, x, y = problem(kind, batch)
    unit = best_time(lambda: forward_backward(model, x, y), max(repeat, 5))
    times: dict[str, float] = {}
    notes: dict[str, str] = {}
    for method in methods:
        if method in skip:
            notes[method] = skip[method]
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            times[method] = best_time(
                lambda m=method: fisher_blocks(model, x, method=m, targets=y, on_unsupported="ignore"), repeat
            )
        if caught:
            notes[method] = "warned: " + str(caught[0].message)[:50]
    kfac = times["kfac"]
    rows = [f"{kind} B={batch}: forward+backward {unit * 1e3:.1f} ms = 1 unit; kfac {kfac * 1e3:.1f} ms"]
    for method in methods:
        if method not in times:
            rows.append(f"  {method:<15} {'—':>9} {'—':>9} {'—':>9}  {notes.get(method, '')}")
            continue
        t = times[method]
        rows.append(
            f"  {method:<15} {t * 1e3:9.1f} {t / kfac:8.2f}× {t / unit:8.1f}×  {notes.get(method, '')}".rstrip()
        )
    return rows


# -- 2. warm starts ----------------------------------------------------------------------------


def warm_rows(kind: str, batch: int, repeat: int) -> list[str]:
    model, x1, y1 = problem(kind, batch)
    _, x2, y2 = problem(kind, batch, offset=1)
    rows = [f"{kind} B={batch}: two minibatches"]
    one = best_time(lambda: fisher_blocks(model, x2, method="kfoc", targets=y2), repeat)
    two = best_time(lambda: fisher_blocks(model, [(x1, y1), (x2, y2)], method="kfoc", targets="empirical"), repeat)
    rows.append(
        f"  kfoc, batch 2 alone (cold) {one * 1e3:8.1f} ms; both batches streamed {two * 1e3:8.1f} ms "
        f"(batch 2 warm from batch 1 inside StreamingKronecker; ideal cold = {2 * one * 1e3:.1f} ms)"
    )
    K1 = fisher_blocks(model, x1, method="kpsvd", targets=y1)
    S2 = fisher_sample_sums(model, x2, targets=y2)
    t_sums = best_time(lambda: fisher_sample_sums(model, x2, targets=y2), repeat)
    for label, kw in (
        ("kpsvd auto (cold)", {}),
        ("power cold", {"method": "power", "maxiter": POWER_MAXITER}),
        ("power warm (x0 = batch 1)", {"method": "power", "maxiter": POWER_MAXITER, "x0": "K1"}),
    ):
        infos: list = []

        def run(kw: dict = kw, infos: list = infos) -> None:
            infos.clear()
            for name, S in S2.items():
                opts = {k: (K1[name] if v == "K1" else v) for k, v in kw.items()}
                infos.append(nearest_kronecker(S, rank=1, **opts).info)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = best_time(run, repeat)
        its = "/".join(str(i.iterations) for i in infos)
        conv = "all converged" if all(i.converged for i in infos) else "NOT all converged"
        rows.append(
            f"  {label:<26} {(t + t_sums) * 1e3:8.1f} ms (capture {t_sums * 1e3:.1f} + solve {t * 1e3:.1f}; "
            f"iterations per layer {its}, {conv})"
        )
    return rows


# -- 3. peers ---------------------------------------------------------------------------------


def curvlinops_factors(model: nn.Module, x: Tensor, y: Tensor, fisher_type: str) -> Any:
    op = KFACLinearOperator(
        model,
        nn.CrossEntropyLoss(reduction="mean"),
        [p for p in model.parameters() if p.requires_grad],
        [(x, y)],
        fisher_type=fisher_type,
        kfac_approx="expand",
        separate_weight_and_bias=False,
        num_data=x.shape[0],
        num_per_example_loss_terms=1,
        check_deterministic=False,
    )
    op.compute_kronecker_factors()
    return op


def backpack_factors(bp_model: nn.Module, bp_loss: nn.Module, x: Tensor, y: Tensor, ext: Any) -> dict:
    bp_model.zero_grad(set_to_none=True)
    with backpack(ext()):
        bp_loss(bp_model(x), y).backward()
    name = "kflr" if ext is BPKFLR else "kfac"
    return {
        mname: getattr(m.weight, name) for mname, m in bp_model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))
    }


def peer_rows(kind: str, batch: int, repeat: int) -> list[str]:
    model, x, y = problem(kind, batch)
    T = conv_locations(model, x)
    rows = [f"{kind} B={batch}"]
    ours_emp = fisher_blocks(model, x, method="kfac", targets=y)
    t_ours_emp = best_time(lambda: fisher_blocks(model, x, method="kfac", targets=y), repeat)
    t_ours_mc = best_time(lambda: fisher_blocks(model, x, method="kfac", seed=SEED), repeat)
    xr, yr = true_fisher_replicas(model, x)
    ours_true = fisher_blocks(model, xr, method="kfac", targets=yr)

    if CURVLINOPS is not None:
        rows.append(f"  curvlinops: {CURVLINOPS}")
    else:
        for ftype, ours, t_ours, label in (
            ("empirical", ours_emp, t_ours_emp, "kfac empirical"),
            ("type-2", ours_true, None, "kfac, model Fisher*"),
            ("mc", None, t_ours_mc, "kfac sampled"),
        ):
            t_theirs = best_time(lambda f=ftype: curvlinops_factors(model, x, y, f), repeat)
            ratio = f"{t_ours / t_theirs:5.2f}" if t_ours is not None else "  —  "
            diff = "—"
            if ours is not None:
                op = curvlinops_factors(model, x, y, ftype)
                gc, ic = op._gradient_covariances, op._input_covariances
                prod = max(kron_rel_diff(*ours[n].factors[0], gc[n], ic[n], 1.0) for n in ours)
                fac = max(
                    max(rel_diff(ours[n].factors[0][0], gc[n], 1.0), rel_diff(ours[n].factors[0][1], ic[n], 1.0))
                    for n in ours
                )
                diff = f"{prod:.1e} (G⊗A), factors {fac:.1e}"
            ours_ms = f"{t_ours * 1e3:7.1f}" if t_ours is not None else "    —  "
            rows.append(
                f"  curvlinops {ftype:<9} vs {label:<20} ours {ours_ms} ms, theirs {t_theirs * 1e3:7.1f} ms, "
                f"ours/theirs {ratio}; c=1, max rel diff {diff}"
            )
    if BACKPACK is not None:
        rows.append(f"  BackPACK: {BACKPACK}")
    else:
        bp_model = extend(copy.deepcopy(model))
        bp_loss = extend(nn.CrossEntropyLoss(reduction="mean"))
        for ext, label, ours, t_ours in (
            (BPKFLR, "KFLR", ours_true, None),
            (BPKFAC, "KFAC (MC)", None, t_ours_mc),
        ):
            t_theirs = best_time(lambda e=ext: backpack_factors(bp_model, bp_loss, x, y, e), repeat)
            ratio = f"{t_ours / t_theirs:5.2f}" if t_ours is not None else "  —  "
            diff = "—"
            if ours is not None:
                theirs = backpack_factors(bp_model, bp_loss, x, y, ext)
                worst_lin, worst_conv = 0.0, 0.0
                for n, K in ours.items():
                    G, A = K.factors[0]
                    if n in T:  # Conv2d: G' is a different statistic; compare A with c = 1/T
                        worst_conv = max(worst_conv, rel_diff(A[:-1, :-1], theirs[n][1], 1.0 / T[n]))
                    else:
                        worst_lin = max(worst_lin, kron_rel_diff(G, A[:-1, :-1], *theirs[n], 1.0))
                diff = f"{worst_lin:.1e} (Linear G⊗A, c=1)"
                if T:
                    diff += f", {worst_conv:.1e} (Conv2d A only, c=1/T)"
            ours_ms = f"{t_ours * 1e3:7.1f}" if t_ours is not None else "    —  "
            rows.append(
                f"  BackPACK {label:<10} vs {'kfac, model Fisher*' if ours is not None else 'kfac sampled':<20} "
                f"ours {ours_ms} ms, theirs {t_theirs * 1e3:7.1f} ms, ours/theirs {ratio}; max rel diff {diff}"
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 32 only, fewer methods")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many timings (capped at ~2 s each)")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default 32 128)")
    args = parser.parse_args(argv)
    batches = args.batch or ([32] if args.quick else [32, 128])
    methods = ["kfac", "tkfac", "kpsvd", "kfoc"] if args.quick else list(METHODS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, empirical cross-entropy targets")
    print(f"peers: curvlinops {CURVLINOPS or 'ok'}, BackPACK {BACKPACK or 'ok'}")
    print("\n1. fisher_blocks end to end      ms   × kfac   × fwd+bwd")
    for kind in MODELS:
        skip: dict[str, str] = {}
        for batch in batches:
            print("\n".join(method_rows(kind, batch, methods, args.repeat, skip)))
    print("\n2. warm starts: fisher_blocks has no x0-like option (checked nn_adapters/fisher.py);")
    print("   kfoc over a list of minibatches warm-starts internally; kpsvd via nearest_kronecker(x0=...)")
    for kind in MODELS:
        for batch in batches:
            print("\n".join(warm_rows(kind, batch, args.repeat)))
    print("\n3. peers (K-FAC factors; * model Fisher: ours on C-fold replicated inputs with soft targets,")
    print("   accuracy only — its time is not comparable)")
    for kind in MODELS:
        for batch in batches:
            print("\n".join(peer_rows(kind, batch, args.repeat)))


if __name__ == "__main__":
    main()
