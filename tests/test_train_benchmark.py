"""The training benchmark (``python -m benchmarks.train``): time to target, and an end-to-end ``--quick`` run."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from benchmarks import train  # noqa: E402
from benchmarks.train_models import (  # noqa: E402
    PROBLEMS,
    BernoulliAsCategorical,
    autoencoder,
    bce_sum_mean,
    bernoulli_as_categorical_loss,
    digits,
)

# ------------------------------------------------------------------------------------------------ time to target


def test_time_to_target_interpolates_linearly():
    # crosses 1.5 halfway between t=1 (loss 2) and t=3 (loss 1)
    assert train.seconds_to_target([0.0, 1.0, 3.0], [4.0, 2.0, 1.0], 1.5) == pytest.approx(2.0)


def test_time_to_target_hits_an_evaluation_exactly():
    assert train.seconds_to_target([0.0, 1.0, 2.0], [3.0, 2.0, 1.0], 2.0) == pytest.approx(1.0)


def test_time_to_target_first_crossing_wins():
    # non-monotone curve: the first time the loss is <= target counts, not the last
    assert train.seconds_to_target([0.0, 1.0, 2.0, 3.0], [3.0, 1.0, 5.0, 0.5], 1.0) == pytest.approx(1.0)


def test_time_to_target_already_reached_and_never_reached():
    assert train.seconds_to_target([0.5, 1.0], [0.1, 0.05], 1.0) == 0.5
    assert math.isnan(train.seconds_to_target([0.0, 1.0], [3.0, 2.0], 1.0))


def test_time_to_target_validates_shapes():
    with pytest.raises(ValueError, match="equal length"):
        train.seconds_to_target([0.0, 1.0], [1.0], 0.5)


def test_add_targets_uses_adam_final_loss():
    def run(losses):
        return train.RunResult(
            steps=[0, 1, 2], epochs=[0.0, 0.5, 1.0], seconds=[0.0, 1.0, 2.0], losses=losses, status="ok"
        )

    summary = {
        "sgd": train.summarize([run([4.0, 3.0, 2.5])]),
        "adam": train.summarize([run([4.0, 2.0, 1.0]), run([4.0, 2.0, 2.0])]),
        "kfac": train.summarize([run([4.0, 1.0, 0.5])]),
    }
    info = train.add_targets(summary, ["sgd", "adam", "kfac"])
    assert info["reference"] == "adam"
    assert info["target"] == pytest.approx(1.5)
    assert summary["adam"]["seconds_to_target"] == pytest.approx(2.0)  # mean curve 4, 2, 1.5
    assert summary["kfac"]["seconds_to_target"] == pytest.approx(2.5 / 3.0)  # 4 → 1 crosses 1.5 at 5/6
    assert summary["kfac"]["time_ratio"] == pytest.approx(2.5 / 6.0)
    assert math.isnan(summary["sgd"]["seconds_to_target"])
    assert summary["adam"]["final"]["std"] == pytest.approx(math.sqrt(0.5))


def test_grid_settings_is_the_cartesian_product():
    grid = train.GRIDS["precond"]
    hps = train.grid_settings("precond", train.GRIDS)
    assert len(hps) == math.prod(len(values) for values in grid.values())
    assert all(set(hp) == set(grid) for hp in hps)
    assert len({tuple(sorted(hp.items())) for hp in hps}) == len(hps)


# ---------------------------------------------------------------------------------------------- problems


def test_autoencoder_layers_and_sparse_init():
    net = autoencoder()
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [128, 64, 32, 8, 32, 64, 128, 64]
    assert all(int((m.weight != 0).sum(dim=1).max()) <= 15 for m in linears)
    # the code layer (enc4) and the output are linear, every other layer is followed by a sigmoid
    names = [n for n, _ in net.named_children()]
    assert "enc4_act" not in names and "dec4_act" not in names
    assert sum(isinstance(m, torch.nn.Sigmoid) for m in net) == 6


def test_bernoulli_as_categorical_matches_bce():
    torch.manual_seed(0)
    z, t = torch.randn(5, 7), torch.rand(5, 7)
    wrapped = BernoulliAsCategorical(torch.nn.Identity())
    assert torch.allclose(bernoulli_as_categorical_loss(wrapped(z), t), bce_sum_mean(z, t))
    # the categorical NLL of soft targets (1 - t, t), summed over positions, is the same objective
    ce = torch.nn.functional.cross_entropy(wrapped(z), torch.stack((1 - t, t), dim=1), reduction="sum") / 5
    assert torch.allclose(ce, bce_sum_mean(z, t), atol=1e-6)


def test_digits_scaled_to_unit_interval():
    x, y = digits(images=False, n=50)
    assert x.shape == (50, 64) and float(x.min()) >= 0 and float(x.max()) <= 1
    assert torch.equal(x, y)


# -------------------------------------------------------------------------------------------- end to end


def test_quick_run_writes_parseable_outputs(tmp_path, capsys):
    avail = train.method_availability()
    methods = ["sgd", "adam"] + [m for m in ("kfac", "kfac_opt") if avail[m] is None]
    out = tmp_path / "res"
    rc = train.main(["--quick", "--no-progress", "--out", str(out), "--methods", *methods, "--samples", "192"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| method | lr | damping |" in printed
    for key in ("autoencoder", "cnn"):
        png = out / f"{key}.png"
        assert png.stat().st_size > 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table.md").read_text()
    assert table.count("| method | lr | damping |") == 2
    for m in methods:
        assert f"| {m} |" in table
    doc = json.loads((out / "results.json").read_text())
    assert set(doc["problems"]) == {"autoencoder", "cnn"}
    for key, prob in doc["problems"].items():
        assert prob["samples"] == 192
        assert prob["target"]["reference"] == "adam"
        for m in methods:
            (run,) = prob["runs"][m]
            assert run["status"] == "ok", (key, m, run["error"])
            assert run["steps"][0] == 0 and run["losses"][0] > 0
            assert len(run["losses"]) == len(run["seconds"]) >= 2
            s = prob["summary"][m]
            assert s["overhead_median"] > 0 and math.isfinite(s["final"]["mean"])
        # plain SGD against a plain SGD step: the overhead is ~1 by construction
        assert 0.2 < prob["summary"]["sgd"]["overhead_median"] < 5


def test_unknown_method_is_rejected(tmp_path):
    with pytest.raises(SystemExit):
        train.main(["--quick", "--no-progress", "--out", str(tmp_path), "--methods", "nope"])


def test_problems_registry():
    assert {"autoencoder", "cnn"} <= set(PROBLEMS)
    assert all(p.likelihood in ("cross_entropy", "bernoulli") for p in PROBLEMS.values())
