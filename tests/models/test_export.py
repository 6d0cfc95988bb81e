import pytest
import torch

from models.inference.export import export_for_inference, export_onnx
from models.inference.fold import fold_for_inference
from models.networks.hacnn import HACNN
from models.networks.rganet import RGANet
from tests.conftest import assert_relative, fast_backends
from tests.models.common import flatten

SMALL = dict(height=64, width=32, scale=4, d_scale=2)


def _model(kind, backend="auto"):
    torch.manual_seed(0)
    if kind == "rganet":
        return RGANet(5, backend=backend, **SMALL).eval(), (3, 64, 32)
    return HACNN(5, backend=backend).eval(), (3, 160, 64)


def _expected(model, x):
    with torch.no_grad():
        return flatten(fold_for_inference(model)(x))


def _custom_ops(program):
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function" and "rga_ops" in str(n.target)}


@pytest.mark.parametrize("kind", ["rganet", "hacnn"])
def test_torch_export_with_a_dynamic_batch(kind):
    """With our compiled kernels (the "torch" backend goes through torch.export in the ONNX test)."""
    backend = fast_backends("cpu")[-1]
    model, shape = _model(kind, backend)
    program = export_for_inference(model, torch.randn(2, *shape))
    op = "rga_ops.relation_project.default" if kind == "rganet" else "rga_ops.ha_soft_gate.default"
    assert _custom_ops(program) == ({op} if backend != "torch" else set())
    for batch in (1, 5):
        x = torch.randn(batch, *shape)
        for got, expected in zip(flatten(program.module()(x)), _expected(model, x), strict=True):
            assert_relative(got, expected, 1e-6, f"exported output, batch {batch}")


def test_torch_export_of_a_folded_model_and_with_a_fixed_batch():
    model, shape = _model("rganet")
    folded = fold_for_inference(model)
    program = export_for_inference(folded, torch.randn(2, *shape), dynamic_batch=False)
    x = torch.randn(2, *shape)
    for got, expected in zip(flatten(program.module()(x)), _expected(model, x), strict=True):
        assert_relative(got, expected, 1e-6, "exported output")
    with pytest.raises(AssertionError, match=r"^Guard failed: x\.size\(\)\[0\] == 2$"):
        program.module()(torch.randn(3, *shape))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rganet", "hacnn"])
def test_onnx_export_runs_in_onnxruntime(kind, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model, shape = _model(kind)
    path = tmp_path / f"{kind}.onnx"
    export_onnx(model, torch.randn(2, *shape), path)
    assert model.backend == "auto", "export_onnx changed the model's backend"
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["images"]
    names = [o.name for o in session.get_outputs()]
    assert names == (["feat_", "feat"] if kind == "rganet" else ["features"])
    x = torch.randn(3, *shape)
    got = session.run(None, {"images": x.numpy()})
    for g, expected in zip(got, _expected(model, x), strict=True):
        assert_relative(torch.from_numpy(g), expected, 1e-5, "onnxruntime output")
