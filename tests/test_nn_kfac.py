"""KFAC (Martens & Grosse's optimizer) against dense references on tiny networks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call, jacrev  # noqa: E402

from nn_adapters.capture import make_rng, per_sample_nll, sample_targets  # noqa: E402
from nn_adapters.kfac import KFAC, minimize_quadratic_model  # noqa: E402

DTYPE = torch.float64


class Scale(nn.Module):
    """A layer without an adapter: ``x ⊙ s``."""

    def __init__(self, k: int):
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 1.5, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


def _mlp(sizes: tuple[int, ...] = (3, 5, 4, 2), seed: int = 0, scale: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        mods.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            mods.append(nn.Tanh())
    if scale:
        mods.append(Scale(sizes[-1]))
    return nn.Sequential(*mods).to(DTYPE)


def _data(n: int = 32, d: int = 3, classes: int = 2, seed: int = 1, dtype: torch.dtype = DTYPE):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def _closure(opt: KFAC, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "cross_entropy"):
    def closure() -> torch.Tensor:
        opt.zero_grad()
        out = model(x)
        value = F.cross_entropy(out, y) if loss == "cross_entropy" else 0.5 * ((out - y) ** 2).sum(1).mean()
        value.backward()
        return value

    return closure


def _plain(**kwargs):
    """Options for a bare damped step ``δ = −F̂⁻¹ ∇h`` (no re-scaling, no adaptation)."""
    base = dict(momentum=False, rescale=False, adapt_damping=False, adapt_gamma=False, seed=3)
    base.update(kwargs)
    return base


def _matrix(module: nn.Linear, w: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.cat([w, b[:, None]], dim=1).detach().numpy()


def _pi(G: np.ndarray, A: np.ndarray) -> float:
    return math.sqrt((np.trace(A) / A.shape[0]) / (np.trace(G) / G.shape[0]))


def _one_plain_step(structure: str, scale: bool = False):
    model = _mlp(scale=scale)
    x, y = _data()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = KFAC(model, **_plain(structure=structure, damping=0.3, weight_decay=1e-2))
    opt.step(_closure(opt, model, x, y))
    eta = 1e-2
    grads = {n: p.grad + eta * theta0[n] for n, p in model.named_parameters()}
    steps = {n: p.detach() - theta0[n] for n, p in model.named_parameters()}
    return model, opt, grads, steps, (x, y)


# --------------------------------------------------------------------------- statistics
def test_factors_are_sampled_target_kfac_statistics():
    model = _mlp()
    x, y = _data()
    opt = KFAC(model, **_plain(structure="block_tridiagonal", seed=5))
    opt.step(_closure(opt, model, x, y))
    # independent recomputation at θ0 (a fresh copy): same targets (same seed, same draws), hooks on the outputs
    acts, outs = {}, {}
    model0 = _mlp()
    layers0 = {n: m for n, m in model0.named_modules() if isinstance(m, nn.Linear)}

    def record(name):
        def hook(mod, args, output):
            acts[name], outs[name] = args[0], output

        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in layers0.items()]
    out = model0(x)
    for h in handles:
        h.remove()
    targets = sample_targets(out, "cross_entropy", make_rng(5))
    total = per_sample_nll(out, targets, "cross_entropy").sum()
    gs = torch.autograd.grad(total, [outs[n] for n in layers0])
    g = dict(zip(layers0, gs))
    a = {n: torch.cat([acts[n], torch.ones(x.shape[0], 1, dtype=DTYPE)], 1).detach() for n in layers0}
    n = x.shape[0]
    for name, (G, A) in opt.factors.items():
        torch.testing.assert_close(G, g[name].T @ g[name] / n)
        torch.testing.assert_close(A, a[name].T @ a[name] / n)
    assert opt.chains == [["0", "2", "4"]]
    for (i, j), (G, A) in opt.cross_factors.items():
        torch.testing.assert_close(G, g[i].T @ g[j] / n)
        torch.testing.assert_close(A, a[i].T @ a[j] / n)


def test_factor_ema_uses_min_one_minus_one_over_k():
    model = _mlp()
    x, y = _data()
    opt = KFAC(model, **_plain(factor_decay=0.6, seed=0))
    closure = _closure(opt, model, x, y)
    previous = None
    for k in range(1, 5):
        with torch.no_grad():  # the input of layer "2" at the current θ, bias column appended
            a = torch.cat([torch.tanh(model[0](x)), torch.ones(x.shape[0], 1, dtype=DTYPE)], 1)
        batch = a.T @ a / x.shape[0]
        opt.step(closure)
        eps = min(1 - 1 / k, 0.6)
        expected = batch if previous is None else eps * previous + (1 - eps) * batch
        torch.testing.assert_close(opt.factors["2"][1], expected, rtol=1e-12, atol=1e-14)
        previous = opt.factors["2"][1]


# --------------------------------------------------------------------------- (1) block-tridiagonal
def test_block_tridiagonal_equals_dense_definition():
    model, opt, grads, steps, _ = _one_plain_step("block_tridiagonal")
    names = ["0", "2", "4"]
    mods = [model[int(n)] for n in names]
    gamma = opt.gamma
    G = [opt.factors[n][0].numpy() for n in names]
    A = [opt.factors[n][1].numpy() for n in names]
    cross = [tuple(t.numpy() for t in opt.cross_factors[(a, b)]) for a, b in itertools.pairwise(names)]
    pis = [_pi(g, a) for g, a in zip(G, A)]
    D = [
        np.kron(g + gamma / pi * np.eye(g.shape[0]), a + gamma * pi * np.eye(a.shape[0])) for g, a, pi in zip(G, A, pis)
    ]
    Off = [np.kron(gc, ac) for gc, ac in cross]  # F̃_{i,i+1} = G_{i,i+1} ⊗ A_{i,i+1} (row-major vec)
    sizes = [d.shape[0] for d in D]
    off = np.concatenate([[0], np.cumsum(sizes)])
    total = off[-1]
    Psi = [Off[i] @ np.linalg.inv(D[i + 1]) for i in range(2)]
    Sig = [D[i] - Psi[i] @ D[i + 1] @ Psi[i].T for i in range(2)] + [D[2]]
    Xi = np.eye(total)
    Lam = np.zeros((total, total))
    for i in range(3):
        Lam[off[i] : off[i + 1], off[i] : off[i + 1]] = np.linalg.inv(Sig[i])
        if i < 2:
            Xi[off[i] : off[i + 1], off[i + 1] : off[i + 2]] = -Psi[i]
    Finv = Xi.T @ Lam @ Xi
    g = np.concatenate([_matrix(m, grads[f"{n}.weight"], grads[f"{n}.bias"]).reshape(-1) for n, m in zip(names, mods)])
    expected = -Finv @ g
    got = np.concatenate(
        [_matrix(m, steps[f"{n}.weight"], steps[f"{n}.bias"]).reshape(-1) for n, m in zip(names, mods)]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    # the definition of F̂: it agrees with the damped F̃ on the tridiagonal blocks (and F̂⁻¹ is tridiagonal)
    Fhat = np.linalg.inv(Finv)
    for i in range(3):
        np.testing.assert_allclose(Fhat[off[i] : off[i + 1], off[i] : off[i + 1]], D[i], rtol=1e-8, atol=1e-10)
        if i < 2:
            np.testing.assert_allclose(
                Fhat[off[i] : off[i + 1], off[i + 1] : off[i + 2]], Off[i], rtol=1e-8, atol=1e-10
            )
    # and differs from the block-diagonal inverse
    block = -np.concatenate(
        [
            np.linalg.solve(D[i], _matrix(m, grads[f"{n}.weight"], grads[f"{n}.bias"]).reshape(-1))
            for i, (n, m) in enumerate(zip(names, mods))
        ]
    )
    assert np.linalg.norm(block - expected) > 1e-3 * np.linalg.norm(expected)
    assert opt.info["tridiagonal_fallbacks"] == 0


def test_block_tridiagonal_falls_back_when_not_positive_definite(monkeypatch):
    import nn_adapters.kfac as kfac_module

    class Refuse:
        def __init__(self, *args, **kwargs):
            raise ValueError("not positive definite")

    monkeypatch.setattr(kfac_module, "KronSumSolver", Refuse)
    _, opt, _, steps, _ = _one_plain_step("block_tridiagonal")
    assert opt.info["tridiagonal_fallbacks"] >= 1
    _, _, _, ref_steps, _ = _one_plain_step("block_diagonal")
    for n in steps:
        torch.testing.assert_close(steps[n], ref_steps[n], rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- (2) block-diagonal
def test_block_diagonal_step_equals_dense_kronecker_inverse():
    model, opt, grads, steps, _ = _one_plain_step("block_diagonal", scale=True)
    gamma = opt.gamma
    assert gamma == pytest.approx(math.sqrt(0.3 + 1e-2))
    for n in ["0", "2", "4"]:
        m = model[int(n)]
        G, A = (t.numpy() for t in opt.factors[n])
        pi = _pi(G, A)
        inv = np.kron(
            np.linalg.inv(G + gamma / pi * np.eye(G.shape[0])), np.linalg.inv(A + gamma * pi * np.eye(A.shape[0]))
        )
        expected = -inv @ _matrix(m, grads[f"{n}.weight"], grads[f"{n}.bias"]).reshape(-1)
        got = _matrix(m, steps[f"{n}.weight"], steps[f"{n}.bias"]).reshape(-1)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13)
    # the layer without an adapter: −∇h/γ²
    torch.testing.assert_close(steps["5.s"], -grads["5.s"] / gamma**2)
    assert "'5'" in repr(opt) and "unsupported" in repr(opt)


def test_conv_layers_use_block_diagonal_and_linear_chain_is_tridiagonal():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(32, 6), nn.Tanh(), nn.Linear(6, 3)
    ).to(DTYPE)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 4, 4, generator=g, dtype=DTYPE), torch.randint(0, 3, (16,), generator=g)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = KFAC(model, **_plain(structure="block_tridiagonal", damping=0.3, weight_decay=0.0))
    opt.step(_closure(opt, model, x, y))
    assert opt.chains == [["3", "5"]]
    G, A = (t.numpy() for t in opt.factors["0"])
    assert (G.shape, A.shape) == ((2, 2), (10, 10))
    gamma, pi = opt.gamma, _pi(G, A)
    conv = model[0]
    grad = torch.cat([conv.weight.grad.reshape(2, -1), conv.bias.grad[:, None]], 1).numpy()
    step = torch.cat([(conv.weight - theta0["0.weight"]).reshape(2, -1), (conv.bias - theta0["0.bias"])[:, None]], 1)
    expected = -np.linalg.solve(G + gamma / pi * np.eye(2), grad) @ np.linalg.inv(A + gamma * pi * np.eye(10))
    np.testing.assert_allclose(step.detach().numpy(), expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("structure", ["block_diagonal", "block_tridiagonal"])
def test_conv_then_chain_with_rescaling_and_momentum(structure):
    """The full update (JVPs of preconditioned directions) on a conv model whose tridiagonal chain is not first."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(32, 6), nn.Tanh(), nn.Linear(6, 3)
    ).to(DTYPE)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 4, 4, generator=g, dtype=DTYPE), torch.randint(0, 3, (16,), generator=g)
    opt = KFAC(model, structure=structure, damping=0.3)
    closure = _closure(opt, model, x, y)
    losses = [float(opt.step(closure).detach()) for _ in range(6)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_two_forward_passes_in_one_closure_equal_one_full_batch():
    """Gradient accumulation: the statistics and JVPs cover every forward pass of the closure."""
    x, y = _data(n=32)
    steps = []
    for halves in (False, True):
        model = _mlp()
        opt = KFAC(model, structure="block_tridiagonal", damping=0.5, T1=1, seed=4)

        def closure(model=model, opt=opt, halves=halves):
            opt.zero_grad()
            if halves:
                loss = sum(F.cross_entropy(model(x[i : i + 16]), y[i : i + 16]) for i in (0, 16)) / 2
            else:
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)
        steps.append(([p.detach().clone() for p in model.parameters()], dict(opt.info)))
    for p, q in zip(steps[0][0], steps[1][0]):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    assert steps[0][1]["rho"] == pytest.approx(steps[1][1]["rho"], rel=1e-8)


# --------------------------------------------------------------------------- (3) vᵀFv by JVPs
@pytest.mark.parametrize(("loss", "reduction"), [("cross_entropy", "mean"), ("mse", "mean"), ("cross_entropy", "sum")])
def test_fisher_gram_equals_dense_jacobian_fisher(loss, reduction):
    model = _mlp((3, 4, 3))
    x, labels = _data(n=9, classes=3)
    y = labels if loss == "cross_entropy" else torch.randn(9, 3, dtype=DTYPE)
    opt = KFAC(model, loss=loss, loss_reduction=reduction, **_plain())

    def closure():
        opt.zero_grad()
        out = model(x)
        value = (
            F.cross_entropy(out, y, reduction=reduction) if loss == "cross_entropy" else 0.5 * ((out - y) ** 2).sum()
        )
        value.backward()
        return value

    opt.step(closure)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def unflatten(v):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            out[n] = v[i : i + k].reshape(s)
            i += k
        return out

    J = jacrev(lambda v: functional_call(model, unflatten(v), (x,)))(flat)  # (n, C, P)
    out = model(x).detach()
    if loss == "cross_entropy":
        p = torch.softmax(out, 1)
        FR = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    else:
        FR = torch.eye(3, dtype=DTYPE).expand(9, 3, 3)
    Fd = torch.einsum("ncp,ncd,ndq->pq", J, FR, J) / 9 * (9 if reduction == "sum" else 1)
    g = torch.Generator().manual_seed(2)
    u = torch.randn(flat.shape[0], generator=g, dtype=DTYPE)
    v = torch.randn(flat.shape[0], generator=g, dtype=DTYPE)
    gram = opt.fisher_gram([unflatten(u), unflatten(v)])
    dense = torch.stack([torch.stack([a @ Fd @ b for b in (u, v)]) for a in (u, v)])
    torch.testing.assert_close(gram, dense, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- (4) α, μ
def test_minimize_quadratic_model_matches_dense_solve():
    rng = np.random.default_rng(0)
    for _ in range(5):
        X = rng.standard_normal((2, 2))
        C = X @ X.T + 0.1 * np.eye(2)
        b = rng.standard_normal(2)
        coef, change = minimize_quadratic_model(C, b)
        expected = np.linalg.solve(C, -b)
        np.testing.assert_allclose(coef, expected, rtol=1e-12)
        assert change == pytest.approx(0.5 * b @ expected, rel=1e-12)
        for d in rng.standard_normal((10, 2)) * 1e-3:
            c = np.asarray(coef) + d
            assert 0.5 * c @ C @ c + b @ c >= change
    # a zero direction gets coefficient 0, not NaN
    coef, change = minimize_quadratic_model([[2.0, 0.0], [0.0, 0.0]], [-4.0, 0.0])
    assert coef == [2.0, 0.0] and change == -4.0


def test_step_alpha_mu_minimize_exact_fisher_model():
    model = _mlp()
    x, y = _data()
    eta = 1e-3
    opt = KFAC(model, damping=0.5, weight_decay=eta, adapt_damping=False, adapt_gamma=False, seed=0)
    closure = _closure(opt, model, x, y)
    opt.step(closure)
    opt.step(closure)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    prev = {n: opt.state[p]["prev_update"].clone() for n, p in model.named_parameters()}
    opt.step(closure)
    grad = {n: p.grad + eta * theta[n] for n, p in model.named_parameters()}
    new = {n: opt.state[p]["prev_update"] for n, p in model.named_parameters()}
    alpha, mu = opt.info["alpha"], opt.info["mu"]
    assert alpha != 0 and mu != 0
    delta = {n: (new[n] - mu * prev[n]) / alpha for n in new}
    # Δ is the preconditioned gradient
    pre = opt.precondition(grad)
    for n in delta:
        torch.testing.assert_close(delta[n], -pre[n])
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(theta[n])
    dirs = [delta, prev]
    gram = opt.fisher_gram(dirs).numpy()
    dot = lambda a, b: float(sum((a[k] * b[k]).sum() for k in a))  # noqa: E731
    C = gram + (0.5 + eta) * np.array([[dot(a, b) for b in dirs] for a in dirs])
    b = np.array([dot(grad, d) for d in dirs])
    np.testing.assert_allclose([alpha, mu], np.linalg.solve(C, -b), rtol=1e-8)
    assert opt.info["model_change"] == pytest.approx(0.5 * b @ np.array([alpha, mu]), rel=1e-8)


# --------------------------------------------------------------------------- (5) λ
def test_damping_decreases_when_model_is_exact():
    """Linear model + Gaussian NLL: h is quadratic with Hessian F, so ρ ∈ [1, 2] > 3/4."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).to(DTYPE)
    x, _ = _data(n=20)
    y = torch.randn(20, 2, dtype=DTYPE)
    opt = KFAC(model, loss="mse", damping=2.0, T1=1, adapt_gamma=False, seed=0)
    closure = _closure(opt, model, x, y, loss="mse")
    for k in range(1, 4):
        opt.step(closure)
        assert 1.0 - 1e-9 <= opt.info["rho"] <= 2.0 + 1e-9
        assert opt.damping == pytest.approx(2.0 * opt.omega1**k)


def test_damping_increases_when_model_is_wrong():
    """A stiff penalty the Fisher does not see makes h(θ+δ) > h(θ): ρ < 1/4."""
    model = _mlp()
    x, y = _data()
    theta0 = [p.detach().clone() for p in model.parameters()]
    opt = KFAC(model, damping=0.1, T1=1, adapt_gamma=False, seed=0)

    def closure():
        opt.zero_grad()
        value = F.cross_entropy(model(x), y) + 1e4 * sum(
            ((p - q) ** 2).sum() for p, q in zip(model.parameters(), theta0)
        )
        value.backward()
        return value

    grads_after = None
    opt.step(closure)
    grads_after = [p.grad.clone() for p in model.parameters()]
    assert opt.info["rho"] < 0.25
    assert opt.damping == pytest.approx(0.1 / opt.omega1)
    # .grad is restored to the gradient at the old θ (where the penalty's gradient is zero)
    model0 = _mlp()
    F.cross_entropy(model0(x), y).backward()
    for g, p0 in zip(grads_after, model0.parameters()):
        torch.testing.assert_close(g, p0.grad)


def test_gamma_adaptation_picks_lowest_model_value():
    model = _mlp()
    x, y = _data()
    opt = KFAC(model, damping=1.0, T2=2, T3=2, adapt_damping=False, seed=0)
    closure = _closure(opt, model, x, y)
    opt.step(closure)
    assert opt.info["gamma_candidates"] == [opt.gamma]
    g0 = opt.gamma
    opt.step(closure)
    cands = opt.info["gamma_candidates"]
    assert cands == pytest.approx([g0, opt.omega2 * g0, g0 / opt.omega2])
    assert opt.gamma in cands


# --------------------------------------------------------------------------- (6) training
def _teacher_problem(loss: str):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(256, 6, generator=g, dtype=DTYPE)
    torch.manual_seed(11)
    teacher = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).to(DTYPE)
    with torch.no_grad():
        out = 3 * teacher(x)
    if loss == "cross_entropy":  # labels drawn from the teacher: not separable, the optimum loss is > 0
        return x, torch.multinomial(torch.softmax(out, 1), 1, generator=g)[:, 0]
    return x, out + 0.1 * torch.randn(out.shape, generator=g, dtype=DTYPE)


def _train(make_opt, loss: str, steps: int) -> list[float]:
    x, y = _teacher_problem(loss)
    model = _mlp((6, 16, 3), seed=3)
    opt = make_opt(model)
    losses = []

    def closure():
        opt.zero_grad()
        out = model(x)
        value = F.cross_entropy(out, y) if loss == "cross_entropy" else 0.5 * ((out - y) ** 2).sum(1).mean()
        value.backward()
        return value

    for _ in range(steps):
        losses.append(float(opt.step(closure).detach()))
    losses.append(float(closure().detach()))
    return losses


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("structure", ["block_diagonal", "block_tridiagonal"])
def test_kfac_beats_tuned_sgd(loss, structure):
    """Same number of full-batch steps: K-FAC against SGD + momentum at its best learning rate of a grid."""
    steps = 30
    kfac = _train(
        lambda m: KFAC(m, loss=loss, structure=structure, damping=0.05, T1=2, T2=4, T3=2, seed=0), loss, steps
    )
    assert all(math.isfinite(v) for v in kfac)
    assert kfac[-1] < 0.5 * kfac[0]
    sgd = {
        lr: _train(lambda m, lr=lr: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9), loss, steps)
        for lr in (0.03, 0.1, 0.3, 1.0, 3.0)
    }
    best = min(sgd.values(), key=lambda run: run[-1] if math.isfinite(run[-1]) else math.inf)
    assert kfac[-1] < 0.9 * best[-1]
    assert kfac[steps // 2] < best[steps // 2]


# --------------------------------------------------------------------------- (7) state
@pytest.mark.parametrize("structure", ["block_diagonal", "block_tridiagonal"])
def test_state_dict_round_trip_is_bit_exact(structure, tmp_path):
    x, y = _data(n=48)
    opts = dict(structure=structure, damping=1.0, T1=2, T2=3, T3=2)
    model = _mlp()
    opt = KFAC(model, seed=0, **opts)
    closure = _closure(opt, model, x, y)
    for _ in range(5):
        opt.step(closure)
    path = tmp_path / "kfac.pt"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    model2 = _mlp(seed=99)
    model2.load_state_dict(saved["model"])
    opt2 = KFAC(model2, seed=12345, **opts)
    opt2.load_state_dict(saved["opt"])
    assert (opt2.damping, opt2.gamma) == (opt.damping, opt.gamma)
    closure2 = _closure(opt2, model2, x, y)
    for _ in range(7):
        opt.step(closure)
        opt2.step(closure2)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert (opt2.damping, opt2.gamma, opt2.info["step"]) == (opt.damping, opt.gamma, 12)


def test_load_state_dict_rejects_other_structure():
    model = _mlp()
    opt = KFAC(model, structure="block_tridiagonal", seed=0)
    other = KFAC(_mlp(), seed=0)
    with pytest.raises(ValueError, match="structure"):
        other.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="kfac"):
        other.load_state_dict({"state": {}, "param_groups": []})


# --------------------------------------------------------------------------- (8) errors
def test_step_requires_closure():
    model = _mlp()
    opt = KFAC(model, seed=0)
    with pytest.raises(TypeError, match="closure"):
        opt.step()
    with pytest.raises(TypeError, match="closure"):
        opt.step(3)
    with pytest.raises(RuntimeError, match="forward"):
        opt.step(lambda: torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="step"):
        opt.precondition({})


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"damping": 0.0}, ValueError, "`damping`"),
        ({"damping": "1"}, TypeError, "`damping`"),
        ({"loss": "nll"}, ValueError, "`loss`"),
        ({"loss_reduction": "none"}, ValueError, "`loss_reduction`"),
        ({"structure": "full"}, ValueError, "`structure`"),
        ({"factor_decay": 1.0}, ValueError, "`factor_decay`"),
        ({"T1": 0}, ValueError, "`T1`"),
        ({"T2": 2.0}, TypeError, "`T2`"),
        ({"T3": True}, TypeError, "`T3`"),
        ({"momentum": 1}, TypeError, "`momentum`"),
        ({"rescale": False}, ValueError, "`momentum=True` needs `rescale=True`"),
        ({"weight_decay": -1.0}, ValueError, "`weight_decay`"),
        ({"max_update_norm": 0.0}, ValueError, "`max_update_norm`"),
        ({"gamma_bounds": (1.0, 0.5)}, ValueError, "`gamma_bounds`"),
        ({"seed": "a"}, TypeError, "`seed`"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        KFAC(_mlp(), **kwargs)


def test_bad_model():
    with pytest.raises(TypeError, match="`model`"):
        KFAC(object())
    frozen = _mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        KFAC(frozen)
    with pytest.raises(ValueError, match="param groups"):
        KFAC(_mlp()).add_param_group({"params": [torch.zeros(2, requires_grad=True)]})


# --------------------------------------------------------------------------- (9) dtypes, devices
@pytest.mark.parametrize("structure", ["block_diagonal", "block_tridiagonal"])
def test_float32_model_trains_like_float64(structure):
    runs = {}
    for dtype in (torch.float32, torch.float64):
        x, y = _teacher_problem("cross_entropy")
        model = _mlp((6, 16, 16, 3), seed=3).to(dtype)
        x = x.to(dtype)
        opt = KFAC(model, structure=structure, damping=0.05, T1=2, T2=4, T3=2, seed=0)
        closure = _closure(opt, model, x, y)
        runs[dtype] = [float(opt.step(closure).detach()) for _ in range(15)]
        assert all(f[0].dtype == dtype for f in opt.factors.values())
        assert opt.info["tridiagonal_fallbacks"] == 0
    losses = runs[torch.float32]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]
    np.testing.assert_allclose(losses, runs[torch.float64], rtol=1e-3)


def test_max_update_norm_bounds_the_step():
    model = _mlp()
    x, y = _data()
    opt = KFAC(model, damping=0.01, max_update_norm=1e-3, seed=0)
    closure = _closure(opt, model, x, y)
    for _ in range(3):
        before = [p.detach().clone() for p in model.parameters()]
        opt.step(closure)
        norm = math.sqrt(sum(float(((p.detach() - q) ** 2).sum()) for p, q in zip(model.parameters(), before)))
        assert norm <= 1e-3 * (1 + 1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("structure", ["block_diagonal", "block_tridiagonal"])
def test_cuda(structure):
    x, y = _teacher_problem("cross_entropy")
    model = _mlp((6, 16, 16, 3), seed=3).cuda()
    x, y = x.cuda(), y.cuda()
    opt = KFAC(model, structure=structure, damping=1.0, T1=2, T2=4, T3=2, seed=0)
    closure = _closure(opt, model, x, y)
    losses = [float(opt.step(closure).detach()) for _ in range(10)]
    assert losses[-1] < losses[0]
    assert all(f[0].is_cuda for f in opt.factors.values())
