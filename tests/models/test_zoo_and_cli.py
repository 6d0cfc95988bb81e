"""Model factory (names, sizes, the identity start) and the command line's parsing and help."""

import pytest
import torch

from models.cli import _config_from, build_parser
from models.engine.config import RECIPES, TrainConfig
from models.engine.zoo import OPEN_GATE_BIAS, build_model, default_size


def test_names_and_sizes():
    assert default_size("hacnn") == (160, 64) and default_size("rganet") == (256, 128)
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build_model("resnet", 10)
    with pytest.raises(ValueError, match="divisible by 16"):
        build_model("rganet-s", 10, 72, 32)
    with pytest.raises(ValueError, match="hacnn takes 160x64 inputs only"):
        build_model("hacnn", 10, 128, 64)


def test_identity_start_zeroes_residual_branches_and_opens_the_gates():
    torch.manual_seed(0)
    plain = build_model("rganet", 10, 64, 32, d_scale=2).model
    torch.manual_seed(0)
    started = build_model("rganet", 10, 64, 32, d_scale=2, identity_start=True).model
    plain_state, started_state = plain.state_dict(), started.state_dict()
    changed = sorted(k for k in plain_state if not torch.equal(plain_state[k], started_state[k]))
    # 16 bottlenecks' bn3.weight, 4 modules x 2 heads' last BatchNorm bias; nothing else.
    assert len(changed) == 24
    assert all(k.endswith(".bn3.weight") or k.endswith(".4.bias") for k in changed)
    for k in changed:
        expected = 0.0 if k.endswith("bn3.weight") else OPEN_GATE_BIAS
        assert torch.all(started_state[k] == expected), k
    started.eval()
    x = torch.randn(2, 3, 64, 32)
    feat_, feat = started(x)
    assert feat_.shape == feat.shape == (2, 2048) and torch.isfinite(feat).all()


def test_train_defaults_come_from_the_synthetic_recipe():
    args = build_parser().parse_args(["train"])
    config = _config_from(args).resolved()
    recipe = RECIPES["synthetic"]
    assert (config.dataset, config.model, config.recipe) == ("synthetic", recipe["model"], "synthetic")
    assert (config.height, config.width, config.scale, config.d_scale) == (
        recipe["height"], recipe["width"], recipe["scale"], recipe["d_scale"])
    assert config.identity_start is True and config.epochs == recipe["epochs"]
    assert (config.num_identities, config.num_instances) == (recipe["num_identities"], recipe["num_instances"])
    assert config.flip_eval is True
    unflipped = _config_from(build_parser().parse_args(["train", "--no-flip-eval"])).resolved()
    assert unflipped.flip_eval is False
    real = _config_from(build_parser().parse_args(["train", "--dataset", "market1501", "--recipe", "rga",
                                                   "--lr", "3e-4", "--no-identity-start"])).resolved()
    assert (real.model, real.height, real.width, real.d_scale) == ("rganet", 256, 128, 8)
    assert (real.lr, real.epochs) == (3e-4, 600)
    assert real.identity_start is False and real.flip_eval is False
    flipped = _config_from(build_parser().parse_args(["train", "--recipe", "rga", "--flip-eval"])).resolved()
    assert flipped.flip_eval is True
    hacnn = _config_from(build_parser().parse_args(["train", "--model", "hacnn"])).resolved()
    assert (hacnn.height, hacnn.width) == (160, 64)


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["synthetic"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m models" in capsys.readouterr().out


def test_config_round_trip_and_unknown_keys():
    config = TrainConfig(lr=1e-3).resolved()
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown configuration keys \['colour'\]"):
        TrainConfig.from_dict({**config.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        TrainConfig(recipe="fast").resolved()

