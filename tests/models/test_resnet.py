import pytest
import torch
import torchvision

from models.networks.resnet import NarrowMapConv2d, ResNet50, _narrow_map_conv, load_imagenet_weights
from tests.models.common import imagenet_resnet50_file  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def imagenet_resnet50(imagenet_resnet50_file):
    return imagenet_resnet50_file[0]


@pytest.fixture(scope="module")
def imagenet_file(imagenet_resnet50_file):
    return imagenet_resnet50_file[1]


def test_parameter_names_and_shapes_are_torchvisions_without_the_classifier():
    expected = {k: v.shape for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    got = ResNet50().state_dict()
    assert list(got) == list(expected)
    assert {k: v.shape for k, v in got.items()} == expected


@pytest.mark.parametrize("last_stride,size", [(2, (8, 4)), (1, (16, 8))])
def test_last_stride(last_stride, size):
    trunk = ResNet50(last_stride=last_stride)
    first = trunk.layer4[0]
    assert first.conv2.stride == first.downsample[0].stride == (last_stride, last_stride)
    assert trunk.layer3[0].conv2.stride == (2, 2)
    with torch.no_grad():
        assert trunk.eval()(torch.randn(1, 3, 256, 128)).shape == (1, 2048, *size)
    with pytest.raises(ValueError, match="last_stride must be 1 or 2, got 3"):
        ResNet50(last_stride=3)


def test_loaded_weights_give_torchvisions_features(imagenet_resnet50, imagenet_file):
    trunk = ResNet50().eval()
    report = trunk.load_imagenet(imagenet_file)
    assert report.ok and report.ignored == ("fc.weight", "fc.bias") and len(report.loaded) == len(trunk.state_dict())
    reference = torch.nn.Sequential(*list(imagenet_resnet50.children())[:-2])  # everything up to layer4
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        assert torch.equal(trunk(x), reference(x))


def test_files_without_num_batches_tracked_load(imagenet_resnet50, tmp_path):
    """Files saved by PyTorch < 0.4.1 (like the classic resnet50-19c8e357.pth) lack these counters."""
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in imagenet_resnet50.state_dict().items() if "num_batches_tracked" not in k}, path)
    trunk = ResNet50()
    report = load_imagenet_weights(trunk, path)
    assert report.ok and len(report.counters_reset) == 53
    assert torch.equal(trunk.layer1[0].bn1.running_var, imagenet_resnet50.layer1[0].bn1.running_var)


def test_missing_unexpected_and_mismatched_keys_are_reported(imagenet_resnet50, tmp_path):
    state = dict(imagenet_resnet50.state_dict())
    del state["layer2.0.conv1.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    state["layer1.0.bn1.weight"] = torch.ones(3)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    trunk = ResNet50()
    before = trunk.conv1.weight.clone()
    with pytest.raises(ValueError) as info:
        trunk.load_imagenet(path)
    message = str(info.value)
    assert "1 missing from the file: layer2.0.conv1.weight" in message
    assert "1 unexpected in the file: layer5.0.conv1.weight" in message
    assert "1 with another shape: layer1.0.bn1.weight (file [3], model [64])" in message
    assert "nothing was loaded" in message and torch.equal(trunk.conv1.weight, before)
    with pytest.warns(UserWarning, match="missing from the file"):
        report = trunk.load_imagenet(path, strict=False)
    assert not report.ok and torch.equal(trunk.conv1.weight, imagenet_resnet50.conv1.weight)


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file at .*never downloaded"):
        ResNet50().load_imagenet(tmp_path / "absent.pth")
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(TypeError, match="does not hold a state_dict"):
        ResNet50().load_imagenet(path)


def test_trunk_keys_exclude_what_subclasses_add():
    trunk = ResNet50()
    trunk.extra = torch.nn.Linear(2, 2)
    assert "extra.weight" in trunk.state_dict() and "extra.weight" not in trunk.trunk_state_keys()
    assert len(trunk.trunk_state_keys()) == 318


@pytest.mark.parametrize(
    "kernel,padding,dilation,stride,size",
    [
        (3, 1, 1, 1, (2, 1)),  # RGA-Net's layer3/layer4 at 32x16
        (3, 1, 1, 1, (1, 5)),
        (3, 1, 1, 1, (1, 1)),
        (3, 1, 1, 2, (5, 1)),
        (5, 4, 2, 1, (3, 1)),  # dilation 2, padding 2 * (5 // 2)
        ((3, 5), (1, 2), 1, 1, (1, 1)),
        (3, 1, 1, 1, (4, 3)),  # not narrow: the plain convolution
        ((3, 1), (1, 0), 1, 1, (3, 1)),  # a kernel one column wide: nothing to skip
        (3, 0, 1, 1, (3, 3)),  # no padding: every tap reads the input
    ],
)
@pytest.mark.parametrize("bias,groups", [(False, 1), (True, 2)])
def test_narrow_map_conv_equals_conv2d_forward_and_backward(kernel, padding, dilation, stride, size, bias, groups):
    torch.manual_seed(0)
    plain = torch.nn.Conv2d(4, 6, kernel, stride, padding, dilation, groups, bias).double()
    narrow = _narrow_map_conv(plain)
    assert type(narrow) is NarrowMapConv2d and narrow.weight is plain.weight
    x = torch.randn(3, 4, *size, dtype=torch.float64, requires_grad=True)
    outputs = [conv(x) for conv in (plain, narrow)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(outputs[0])
    grads = [torch.autograd.grad((out * probe).sum(), [x, *plain.parameters()]) for out in outputs]
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_trunk_uses_narrow_map_convs_and_folds_keep_them():
    from models.inference.fold import fold_for_inference

    trunk = ResNet50(last_stride=1).eval()
    blocks = [block for layer in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4) for block in layer]
    assert all(type(block.conv2) is NarrowMapConv2d for block in blocks)
    assert type(trunk.conv1) is torch.nn.Conv2d
    folded = fold_for_inference(trunk)
    assert type(folded.layer4[0].conv2) is NarrowMapConv2d
    x = torch.randn(2, 3, 32, 16)  # layer3 and layer4: 2x1 maps
    with torch.no_grad():
        torch.testing.assert_close(folded(x), trunk(x), rtol=1e-4, atol=1e-4)
