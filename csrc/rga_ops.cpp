// The one place where the rga_ops operator schemas are declared. Kernels are
// registered per dispatch key in csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; the
// fake (meta) kernels and autograd live in rga_ops/ops/<op>.py.
#include <Python.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

TORCH_LIBRARY(rga_ops, m) {
  // J[b, :N, p] = G[b, p, :], J[b, N:, p] = G[b, :, p] with G = theta^T phi.
  m.def("relation_stack(Tensor theta, Tensor phi) -> Tensor");
  m.def("relation_stack_backward(Tensor grad, Tensor theta, Tensor phi) -> (Tensor, Tensor)");
  // The 1x1 conv (weight [K, 2N]) of relation_stack(theta, phi), without any N x N tensor.
  // It is _relation_project's first output; the second, the coefficients [A_b | B_b]^T
  // ([B, 2C', K]), is what the backward needs besides the inputs (as native_batch_norm
  // returns its statistics for batch_norm's backward).
  m.def("relation_project(Tensor theta, Tensor phi, Tensor weight) -> Tensor");
  m.def("_relation_project(Tensor theta, Tensor phi, Tensor weight) -> (Tensor, Tensor)");
  m.def(
      "relation_project_backward(Tensor grad, Tensor theta, Tensor phi, Tensor weight, Tensor coefficients)"
      " -> (Tensor, Tensor, Tensor)");
  // conv_weight [H, K] @ relu(batch_norm(x)) per item, keeping only x for backward (mean and
  // var: x's batch statistics when training, with the gradient through them; else running ones).
  m.def(
      "batch_norm_relu_conv1x1(Tensor x, Tensor mean, Tensor var, Tensor? bn_weight, Tensor? bn_bias,"
      " Tensor conv_weight, bool training, float eps) -> Tensor");
  m.def(
      "batch_norm_relu_conv1x1_backward(Tensor grad, Tensor x, Tensor mean, Tensor var, Tensor? bn_weight,"
      " Tensor? bn_bias, Tensor conv_weight, bool training, float eps) -> (Tensor, Tensor, Tensor, Tensor)");
  // x * sigmoid(relu(alpha[b, c] * s[b, p] + beta[c])): HA's soft-attention gate in closed form.
  m.def("ha_soft_gate(Tensor x, Tensor s, Tensor alpha, Tensor beta) -> Tensor");
  m.def(
      "ha_soft_gate_backward(Tensor grad, Tensor x, Tensor s, Tensor alpha, Tensor beta)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rga_ops, CompositeImplicitAutograd, m) {
  m.impl("relation_project", [](const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& weight) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("rga_ops::_relation_project", "")
                               .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                         const at::Tensor&)>();
    return std::get<0>(op.call(theta, phi, weight));
  });
}

// `import rga_ops._C` loads this shared library, which runs the registrations
// above; the Python module itself is empty (the ops live in torch.ops.rga_ops).
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
