"""The dense exact Fisher blocks (nn_adapters.exact_fisher_blocks) against a per-sample autograd loop."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from nn_adapters import exact_fisher_blocks, fisher_sample_sums, sample_targets  # noqa: E402
from nn_adapters.capture import make_rng  # noqa: E402


def _model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1),
        nn.Tanh(),
        nn.Conv2d(3, 2, 2, dilation=2, bias=False),
        nn.Flatten(),
        nn.Linear(8, 4),
        nn.Tanh(),
        nn.Linear(4, 3, bias=False),
    )
    return model.double().eval(), torch.randn(7, 2, 8, 8, dtype=torch.float64)


def _loop_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> dict[str, torch.Tensor]:
    """``(1/N) Σ_n vec(DW̄_n) vec(DW̄_n)ᵀ`` with one autograd call per sample."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)}
    blocks = {n: 0.0 for n in layers}
    for i in range(x.shape[0]):
        out = model(x[i : i + 1])
        if loss == "cross_entropy":
            nll = F.cross_entropy(out, y[i : i + 1], reduction="sum")
        else:
            nll = 0.5 * ((out - y[i : i + 1]) ** 2).sum()
        for name, m in layers.items():
            params = [m.weight] if m.bias is None else [m.weight, m.bias]
            grads = torch.autograd.grad(nll, params, retain_graph=True)
            W = grads[0].reshape(grads[0].shape[0], -1)  # (c_out, c_in·kh·kw): unfold's order
            if m.bias is not None:
                W = torch.cat([W, grads[1][:, None]], dim=1)  # bias as the last column
            v = W.reshape(-1)  # row-major vec
            blocks[name] = blocks[name] + torch.outer(v, v)
    return {n: b / x.shape[0] for n, b in blocks.items()}


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_exact_equals_per_sample_loop(loss: str) -> None:
    model, x = _model()
    with torch.no_grad():
        y = sample_targets(model(x), loss, make_rng(4))
    loop = _loop_fisher(model, x, y, loss)
    sampled = exact_fisher_blocks(model, x, loss=loss, seed=4)
    given = exact_fisher_blocks(model, x, targets=y, loss=loss)
    assert set(sampled) == set(loop) == {"0", "2", "4", "6"}
    for name, block in loop.items():
        torch.testing.assert_close(sampled[name], block, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(given[name], block, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(block, block.T)


def test_shapes_bias_last() -> None:
    model, x = _model()
    blocks = exact_fisher_blocks(model, x, seed=0)
    assert blocks["0"].shape == (3 * 19, 3 * 19)
    assert blocks["2"].shape == (2 * 12, 2 * 12)
    assert blocks["4"].shape == (4 * 9, 4 * 9)
    assert blocks["6"].shape == (3 * 4, 3 * 4)
    assert blocks.n_samples == 7 and blocks.unsupported == ()


def test_same_seed_same_targets_as_fisher_blocks() -> None:
    model, x = _model()
    exact = exact_fisher_blocks(model, x, seed=11)
    again = exact_fisher_blocks(model, list(x.split(3)), seed=11)
    sums = fisher_sample_sums(model, list(x.split(2)), seed=11)
    other = exact_fisher_blocks(model, x, seed=12)
    for name, block in exact.items():
        torch.testing.assert_close(again[name], block)
        torch.testing.assert_close(sums[name].to_dense(), block, rtol=1e-10, atol=1e-13)
        assert not torch.allclose(other[name], block)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_sampling_is_split_invariant_and_seeded(loss: str) -> None:
    torch.manual_seed(0)
    out = torch.randn(10, 3, dtype=torch.float64)
    whole = sample_targets(out, loss, make_rng(5))
    rng = make_rng(5)
    parts = torch.cat([sample_targets(out[:4], loss, rng), sample_targets(out[4:], loss, rng)])
    torch.testing.assert_close(parts, whole)
    low = sample_targets(out.float(), loss, make_rng(5)).to(whole.dtype)  # float32 draws the same numbers
    torch.testing.assert_close(low, whole, rtol=1e-6, atol=1e-6)
    if loss == "cross_entropy":
        assert whole.dtype == torch.int64 and int(whole.min()) >= 0 and int(whole.max()) <= 2


def test_sampled_class_frequencies() -> None:
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]], dtype=torch.float64)).expand(20000, 3)
    y = sample_targets(logits, "cross_entropy", make_rng(0))
    freq = np.bincount(y.numpy(), minlength=3) / y.shape[0]
    np.testing.assert_allclose(freq, [0.2, 0.5, 0.3], atol=0.015)


def test_max_entries_refused() -> None:
    model, x = _model()
    with pytest.raises(ValueError, match=r"layer '0' has \(57·57\) = 3249 entries.*max_entries=3249"):
        exact_fisher_blocks(model, x, seed=0, max_entries=3000)
    assert set(exact_fisher_blocks(model, x, seed=0, max_entries=3249)) == {"0", "2", "4", "6"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss": "hinge"}, ValueError, "`loss` must be one of"),
        ({"max_entries": 0}, ValueError, "`max_entries`"),
        ({"targets": "model"}, ValueError, "`targets` must be one of"),
        ({"seed": 1.5}, TypeError, "`seed`"),
        ({"on_unsupported": "quiet"}, ValueError, "`on_unsupported`"),
    ],
)
def test_argument_errors(kwargs: dict, error: type, match: str) -> None:
    model, x = _model()
    with pytest.raises(error, match=match):
        exact_fisher_blocks(model, x, **kwargs)


def test_mse_target_shape_checked() -> None:
    model, x = _model()
    with pytest.raises(ValueError, match="mse targets"):
        exact_fisher_blocks(model, x, targets=torch.zeros(7, 2, dtype=torch.float64), loss="mse")
