"""The op table (rga_ops/_registry.py) against what is registered: the compiled library's
operators (csrc/rga_ops.cpp declares their schemas) and the Triton backend's, which take theirs
from the table."""

import pytest
import torch

import rga_ops
from rga_ops._registry import OPS

NAMES = sorted({name for spec in OPS.values() for name in (spec.name, spec.backward)})


def _schema(namespace: str, name: str, spec_schema: str) -> str:
    return str(torch._C.parse_schema(f"{namespace}::{name}{spec_schema}"))


def _table_schemas(namespace: str) -> dict[str, str]:
    return {name: _schema(namespace, name, schema) for spec in OPS.values()
            for name, schema in ((spec.name, spec.schema), (spec.backward, spec.backward_schema))}


def test_the_compiled_library_declares_the_tables_schemas():
    declared = {name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                if name.startswith("rga_ops::")}
    # relation_project is _relation_project's first output, composed in C++ (no autograd of its own).
    assert declared == {*NAMES, "relation_project"}
    for name, schema in _table_schemas("rga_ops").items():
        assert str(getattr(torch.ops.rga_ops, name).default._schema) == schema, name


@pytest.mark.skipif(not rga_ops.triton.STATUS.usable, reason=f"the triton backend: {rga_ops.triton.STATUS.reason}")
def test_the_triton_operators_have_the_compiled_librarys_schemas():
    """Every Triton operator has the schema of the compiled operator of the same name; the one
    op without a Triton kernel (batch_norm_relu_conv1x1) is absent."""
    namespace = rga_ops.triton.OPS_NAMESPACE
    compiled = {name: str(getattr(torch.ops.rga_ops, name).default._schema) for name in NAMES}
    for name in NAMES:
        ops = getattr(torch.ops, namespace)
        if name.startswith("batch_norm_relu_conv1x1"):
            assert not hasattr(ops, name)
            continue
        assert str(getattr(ops, name).default._schema) == compiled[name].replace("rga_ops::", f"{namespace}::", 1)


def test_every_op_has_a_wrapper_with_a_backend_argument_and_a_reference():
    for name in OPS:
        function = getattr(rga_ops, name)
        assert "backend" in function.__kwdefaults__, name
        assert callable(getattr(rga_ops.reference, name)), name
