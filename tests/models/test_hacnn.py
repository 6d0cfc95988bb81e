import warnings

import pytest
import torch

from models.networks.hacnn import HACNN
from models.networks.reference_hacnn import ReferenceHACNN
from rga_ops.testing import randomise_batch_norms
from tests.conftest import fast_backends, needs_gpu
from tests.models.common import assert_steps_match, model_step

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _conv_block(prefix):
    return [f"{prefix}.conv.weight", f"{prefix}.conv.bias", *(f"{prefix}.bn.{s}" for s in BN_SUFFIXES)]


def _inception_a(prefix):
    return [k for s in ("stream1.0", "stream1.1", "stream2.0", "stream2.1", "stream3.0", "stream3.1", "stream4.1")
            for k in _conv_block(f"{prefix}.{s}")]


def _inception_b(prefix):
    return [k for s in ("stream1.0", "stream1.1", "stream2.0", "stream2.1", "stream2.2", "stream3.1")
            for k in _conv_block(f"{prefix}.{s}")]


def _harm_attn(prefix):
    blocks = ("spatial_attn.conv1", "spatial_attn.conv2", "channel_attn.conv1", "channel_attn.conv2", "conv")
    return [k for b in blocks for k in _conv_block(f"{prefix}.soft_attn.{b}")] + \
        [f"{prefix}.hard_attn.fc.weight", f"{prefix}.hard_attn.fc.bias"]


def _embedding(prefix):
    return [f"{prefix}.0.weight", f"{prefix}.0.bias", *(f"{prefix}.1.{s}" for s in BN_SUFFIXES)]


def torchreid_keys(learn_region=True):
    """torchreid's HACNN state_dict keys in order (docs/compatibility.md)."""
    keys = _conv_block("conv")
    for level in (1, 2, 3):
        keys += _inception_a(f"inception{level}.0") + _inception_b(f"inception{level}.1") + _harm_attn(f"ha{level}")
    keys += _embedding("fc_global") + ["classifier_global.weight", "classifier_global.bias"]
    if learn_region:
        keys += _inception_b("local_conv1") + _inception_b("local_conv2") + _inception_b("local_conv3")
        keys += _embedding("fc_local") + ["classifier_local.weight", "classifier_local.bias"]
    return keys


def test_state_dict_is_torchreids():
    model = HACNN(751)
    state = model.state_dict()
    assert list(state) == torchreid_keys() and len(state) == 535
    assert sum(p.numel() for p in model.parameters()) == 2_929_112 + 1026 * 751 == 3_699_638
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert shapes["conv.conv.weight"] == (32, 3, 3, 3)
    assert shapes["inception1.1.stream3.1.conv.weight"] == (64, 128, 1, 1)
    assert shapes["ha3.soft_attn.channel_attn.conv1.conv.weight"] == (24, 384, 1, 1)
    assert shapes["local_conv1.stream2.2.conv.weight"] == (32, 32, 3, 3)
    assert shapes["fc_local.0.weight"] == (512, 1536) and shapes["classifier_local.weight"] == (751, 512)
    assert list(HACNN(10, learn_region=False).state_dict()) == torchreid_keys(learn_region=False)


def test_state_dicts_load_both_ways_strictly_and_the_scales_follow_the_device():
    ours, ref = HACNN(10), randomise_batch_norms(ReferenceHACNN(10))
    ours.load_state_dict(ref.state_dict(), strict=True)
    ReferenceHACNN(10).load_state_dict(ours.state_dict(), strict=True)
    assert "region_scale" not in ours.state_dict()
    assert ours.double().region_scale.dtype == torch.float64
    assert torch.equal(ours.region_scale, torch.tensor([[1.0, 0.0], [0.0, 0.25]]).expand(4, 2, 2).double())


def _pair(backend, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    reference = randomise_batch_norms(ReferenceHACNN(7, **kwargs)).to(dtype)
    with torch.no_grad():  # torchreid starts the translations' weights at 0: move them so that they matter
        for level in (reference.ha1, reference.ha2, reference.ha3):
            level.hard_attn.fc.weight.normal_(0, 0.05)
    ours = HACNN(7, backend=backend, **kwargs).to(dtype)
    ours.load_state_dict(reference.state_dict())
    return reference, ours, torch.randn(2, 3, 160, 64, dtype=dtype)


@pytest.mark.slow
@pytest.mark.parametrize("backend", [*fast_backends("cpu"), "reference"])
def test_matches_torchreid_float64_outputs_gradients_statistics(backend):
    """Training step (both logits, every gradient, running statistics including the local
    convs' per-region updates), then evaluation (the normalised 1024-d feature)."""
    reference, ours, x = _pair(backend)
    assert_steps_match(model_step(ours, x), model_step(reference, x), 1e-9, 1e-7, f"{backend} train")
    assert all(torch.equal(a, b) for a, b in zip(ours.buffers(), reference.buffers()) if a.dtype == torch.int64)
    assert_steps_match(model_step(ours.eval(), x), model_step(reference.eval(), x), 1e-9, 0, f"{backend} eval")


@pytest.mark.parametrize("learn_region", [True, False])
def test_triplet_outputs_and_global_only_network(learn_region):
    reference, ours, x = _pair(fast_backends("cpu")[-1], loss="triplet", learn_region=learn_region)
    got, expected = ours(x), reference(x)
    if learn_region:
        (logits_global, logits_local), (x_global, x_local) = got
        assert logits_global.shape == logits_local.shape == (2, 7) and x_global.shape == x_local.shape == (2, 512)
    else:
        logits_global, x_global = got
        assert logits_global.shape == (2, 7) and x_global.shape == (2, 512)
    assert_steps_match(model_step(ours, x, backward=False), model_step(reference, x, backward=False), 1e-9, 0,
                       "train")
    eval_out = ours.eval()(x)
    assert eval_out.shape == (2, 1024 if learn_region else 512)
    assert_steps_match(model_step(ours, x), model_step(reference.eval(), x), 1e-9, 0, "eval")


def test_regions_share_one_call_of_each_local_conv():
    reference, ours, x = _pair(fast_backends("cpu")[-1], torch.float32)
    calls = {"ours": [], "reference": []}
    for name, model in (("ours", ours), ("reference", reference)):
        model.local_conv2.stream1[0].conv.register_forward_hook(lambda m, i, o, c=calls[name]: c.append(i[0].shape))
        model(x)
    assert calls["ours"] == [(8, 128, 12, 14)] and calls["reference"] == [(2, 128, 12, 14)] * 4
    assert ours.local_conv2.stream1[0].bn.num_batches_tracked.item() == 4


def test_cumulative_average_statistics_of_the_local_convs():
    """momentum=None: each region's call counts, as in torchreid's loop."""
    reference, ours, x = _pair(fast_backends("cpu")[-1])
    for model in (reference, ours):
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        with torch.no_grad():
            model(x)
            model(x * 0.5 + 0.1)
    assert_steps_match(model_step(ours.eval(), x), model_step(reference.eval(), x), 1e-9, 0, "cumulative")


def test_no_deprecated_calls_or_warnings():
    _, ours, x = _pair(fast_backends("cpu")[-1], torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(x)
        ours.eval()(x)


def test_inputs_of_another_size_and_bad_arguments_raise_clear_errors():
    model = HACNN(10)
    with pytest.raises(ValueError, match=r"HACNN takes inputs \[B, 3, 160, 64\].*got shape \(2, 3, 256, 128\)"):
        model(torch.randn(2, 3, 256, 128))
    with pytest.raises(ValueError, match=r"nchannels must be 3 positive multiples of 16.*got \(128, 256, 380\)"):
        HACNN(10, nchannels=(128, 256, 380))
    with pytest.raises(ValueError, match="unsupported loss 'xent'"):
        HACNN(10, loss="xent")
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        HACNN(10, backend="gpu")


def test_one_backend_reaches_every_soft_attention():
    model = HACNN(10, backend="torch")
    assert {ha.soft_attn.backend for ha in (model.ha1, model.ha2, model.ha3)} == {"torch"}
    model.backend = "reference"
    assert {ha.soft_attn.backend for ha in (model.ha1, model.ha2, model.ha3)} == {"reference"}


@needs_gpu()
def test_on_the_last_gpu_as_on_the_cpu():
    """No .cuda(): the model runs on whichever GPU holds it, the current device being another one
    where there are several."""
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    reference, ours, x = _pair("reference")
    on_gpu = HACNN(7, backend="auto").double().to(device)
    on_gpu.load_state_dict(reference.state_dict())
    with torch.cuda.device(0):
        assert_steps_match(model_step(on_gpu, x.to(device)), model_step(reference, x), 1e-9, 1e-6, "train")
        assert_steps_match(model_step(on_gpu.eval(), x.to(device)), model_step(reference.eval(), x), 1e-9, 0, "eval")
