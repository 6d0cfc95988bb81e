import pytest
import torch
import torchvision

from models.networks.rganet import RGANet
from rga_ops.nn import RGAModule
from rga_ops.testing import randomise_batch_norms
from tests.conftest import fast_backends
from tests.models.common import (
    assert_steps_match,
    imagenet_resnet50_file,  # noqa: F401 (fixture)
    model_step,
)

# A small configuration for whole-model comparisons (the RGA modules at the real stage shapes
# are compared in tests/nn): 64x32 input, stage sizes 16x8, 8x4, 4x2, 4x2; scale 4 and
# d_scale 2 keep the attention heads' hidden width >= 1 at 4x2 = 8 positions.
SMALL = dict(height=64, width=32, scale=4, d_scale=2)
SMALL_INPUT = (3, 64, 32)
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix, width):
    return [(f"{prefix}.{s}", (width,) if s != "num_batches_tracked" else ()) for s in BN_SUFFIXES]


def _rga_keys(prefix, c, n, spatial, channel, ratio=8, down=8):
    """The original RGA_Module's state_dict (docs/compatibility.md): names in registration order, shapes."""
    ci, ni = c // ratio, n // ratio

    def embedding(name, inp, out):
        return [(f"{prefix}.{name}.0.weight", (out, inp, 1, 1)), *_bn(f"{prefix}.{name}.1", out)]

    def head(name, inp):
        hidden = inp // down
        return [(f"{prefix}.{name}.0.weight", (hidden, inp, 1, 1)), *_bn(f"{prefix}.{name}.1", hidden),
                (f"{prefix}.{name}.3.weight", (1, hidden, 1, 1)), *_bn(f"{prefix}.{name}.4", 1)]

    return [*(embedding("gx_spatial", c, ci) if spatial else []), *(embedding("gx_channel", n, ni) if channel else []),
            *(embedding("gg_spatial", 2 * n, ni) if spatial else []),
            *(embedding("gg_channel", 2 * c, ci) if channel else []),
            *(head("W_spatial", 1 + ni) if spatial else []), *(head("W_channel", 1 + ci) if channel else []),
            *(embedding("theta_spatial", c, ci) + embedding("phi_spatial", c, ci) if spatial else []),
            *(embedding("theta_channel", n, ni) + embedding("phi_channel", n, ni) if channel else [])]


def original_state_layout(branch, num_classes, height=256, width=128):
    """Keys and shapes of the authors' ResNet50_RGA_Model, from the spec: torchvision's
    ResNet-50 trunk under `backbone.`, rga_att1..4, feat_bn, cls."""
    trunk = [(f"backbone.{k}", tuple(v.shape)) for k, v in torchvision.models.resnet50().state_dict().items()
             if not k.startswith("fc.")]
    branches = {"rgasc": (True, True), "rgas": (True, False), "rgac": (False, True)}
    rga = []
    if branch in branches:
        for k, (c, down) in enumerate(((256, 4), (512, 8), (1024, 16), (2048, 16)), 1):
            rga += _rga_keys(f"backbone.rga_att{k}", c, (height // down) * (width // down), *branches[branch])
    return trunk + rga + _bn("feat_bn", 2048) + [("cls.weight", (num_classes, 2048))]


@pytest.mark.parametrize("branch,count", [("rgasc", 612), ("rgas", 468), ("rgac", 468), ("baseline", 324)])
def test_state_dict_keys_and_shapes_are_the_original_models(branch, count):
    state = RGANet(751, branch).state_dict()
    layout = original_state_layout(branch, 751)
    assert len(state) == len(layout) == count
    assert [(k, tuple(v.shape)) for k, v in state.items()] == layout


def test_original_checkpoints_load_strictly_both_ways():
    torch.manual_seed(0)
    checkpoint = {k: torch.randn(shape) if shape else torch.tensor(3) for k, shape in original_state_layout("rgasc", 10)}
    model = RGANet(10, backend="torch")
    model.load_state_dict(checkpoint, strict=True)
    assert all(torch.equal(v, checkpoint[k].to(v.dtype)) for k, v in model.state_dict().items())
    RGANet(10, backend="reference").load_state_dict(model.state_dict(), strict=True)


def test_sizes_and_initialisation_of_the_head():
    model = RGANet(751)
    trunk = sum(p.numel() for n, p in model.backbone.named_parameters() if not n.startswith("rga_att"))
    rga = sum(p.numel() for n, p in model.backbone.named_parameters() if n.startswith("rga_att"))
    assert round(trunk / 1e6, 1) == 23.5 and round(rga / 1e6, 1) == 6.3
    assert torch.equal(model.feat_bn.weight, torch.ones(2048)) and torch.equal(model.feat_bn.bias, torch.zeros(2048))
    assert not model.feat_bn.bias.requires_grad and model.feat_bn.weight.requires_grad
    assert model.cls.bias is None and 0.00095 < model.cls.weight.std().item() < 0.00105
    assert not hasattr(model, "drop") and RGANet(10, dropout=0.3).drop.p == 0.3
    assert model.backbone.layer4[0].conv2.stride == (1, 1)


def test_one_backend_reaches_every_rga_module():
    model = RGANet(10, backend="torch", **SMALL)
    modules = [m for m in model.modules() if isinstance(m, RGAModule)]
    assert len(modules) == 4 and {m.backend for m in modules} == {"torch"}
    model.backend = "reference"
    assert model.backend == "reference" and {m.backend for m in modules} == {"reference"}
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        model.backend = "fast"
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        RGANet(10, backend="fast")


def test_rga_modules_are_sized_for_the_input():
    model = RGANet(10, "rgas", height=384, width=128)
    sizes = [getattr(model.backbone, f"rga_att{k}").in_spatial for k in range(1, 5)]
    assert sizes == [96 * 32, 48 * 16, 24 * 8, 24 * 8]


def test_forward_outputs_in_training_and_eval_mode():
    torch.manual_seed(0)
    model = RGANet(7, **SMALL)
    x = torch.randn(2, *SMALL_INPUT)
    feat_, feat, logits = model(x)
    assert feat_.shape == feat.shape == (2, 2048) and logits.shape == (2, 7)
    model.eval()
    with torch.no_grad():
        outputs = model(x)
    assert len(outputs) == 2 and outputs[0].shape == outputs[1].shape == (2, 2048)
    assert torch.equal(outputs[1], model.feat_bn(outputs[0]))


def test_inputs_of_another_size_raise_a_clear_error():
    model = RGANet(10)
    with pytest.raises(ValueError, match=r"RGANet \(rgasc\) was built for inputs \[B, 3, 256, 128\].*got shape "
                                         r"\(2, 3, 128, 64\); build RGANet\(\.\.\., height=128, width=64\)"):
        model(torch.randn(2, 3, 128, 64))
    with pytest.raises(ValueError, match=r"got shape \(2, 1, 256, 128\)"):
        model(torch.randn(2, 1, 256, 128))
    with pytest.raises(TypeError, match="takes a tensor"):
        model([torch.randn(2, 3, 256, 128)])
    baseline = RGANet(10, "baseline").eval()
    with torch.no_grad():
        assert baseline(torch.randn(1, 3, 96, 64))[0].shape == (1, 2048)


@pytest.mark.parametrize("kwargs,match", [
    (dict(branch_name="rga"), "unknown branch_name 'rga'"),
    (dict(num_classes=0), "num_classes must be a positive int"),
    (dict(height=250), "height and width must be positive multiples of 16"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(height=128, width=64), r"no RGA module for layer3 \(1024 channels at 8x4\) at input 128x64 with scale=8, "
                                 r"d_scale=8: .*down_ratio must be >= 1"),
])
def test_constructor_rejects_what_cannot_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RGANet(**{"num_classes": 10, **kwargs})


def test_pretrained_trunk_from_a_local_file(imagenet_resnet50_file):
    imagenet, path = imagenet_resnet50_file
    torch.manual_seed(0)
    model = RGANet(10, pretrained=path)
    assert torch.equal(model.backbone.layer3[2].conv2.weight, imagenet.layer3[2].conv2.weight)
    torch.manual_seed(0)
    assert torch.equal(model.backbone.rga_att1.gg_spatial[0].weight,
                       RGANet(10).backbone.rga_att1.gg_spatial[0].weight)


def _reference_and_fast(branch, backend, dtype):
    torch.manual_seed(0)
    reference = randomise_batch_norms(RGANet(5, branch, backend="reference", **SMALL)).to(dtype)
    fast = RGANet(5, branch, backend=backend, **SMALL).to(dtype)
    fast.load_state_dict(reference.state_dict())
    return reference, fast, torch.randn(2, *SMALL_INPUT, dtype=dtype)


@pytest.mark.slow
@pytest.mark.parametrize("backend", fast_backends("cpu"))
def test_fast_backends_match_the_reference_float64_outputs_gradients_statistics(backend):
    """The whole RGA-SC network: training step (outputs, every gradient, running statistics),
    then evaluation, against backend="reference" in the same state."""
    reference, fast, x = _reference_and_fast("rgasc", backend, torch.float64)
    assert_steps_match(model_step(fast, x), model_step(reference, x), 1e-9, 1e-7, f"{backend} train")
    assert_steps_match(model_step(fast.eval(), x), model_step(reference.eval(), x), 1e-9, 1e-7, f"{backend} eval")


@pytest.mark.parametrize("branch", ["rgas", "rgac"])
def test_single_branch_networks_match_the_reference_float64_forward(branch):
    """Outputs and running statistics of a training-mode forward, then evaluation."""
    backend = fast_backends("cpu")[-1]
    reference, fast, x = _reference_and_fast(branch, backend, torch.float64)
    assert_steps_match(model_step(fast, x, backward=False), model_step(reference, x, backward=False), 1e-9, 0,
                       f"{backend} {branch} train")
    assert_steps_match(model_step(fast.eval(), x), model_step(reference.eval(), x), 1e-9, 0, f"{backend} {branch} eval")


@pytest.mark.parametrize("backend", fast_backends("cpu"))
def test_evaluation_under_inference_mode(backend):
    torch.manual_seed(0)
    model = RGANet(5, backend=backend, **SMALL).eval()
    x = torch.randn(2, *SMALL_INPUT)
    with torch.no_grad():
        expected = model(x)
    with torch.inference_mode():
        got = model(x)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
