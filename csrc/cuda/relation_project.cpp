// relation_project on CUDA: the re-associated 1x1 conv of the stacked relation
// (docs/algebra.md §1) as the same ATen GEMMs the CPU kernel runs
// (csrc/relation_gemms.h), here cuBLAS calls on the current stream. At RGA-Net's
// shapes they are a few small GEMMs per call; which of them are worth fusing is a
// question for measurements on a GPU (benchmarks/run.py). Host code only.
#include <torch/library.h>

#include "../relation_gemms.h"
#include "device_guard.h"

namespace rga_ops::cuda {
namespace {

std::tuple<at::Tensor, at::Tensor> relation_project_cuda(const at::Tensor& theta, const at::Tensor& phi,
                                                         const at::Tensor& weight) {
  const auto guard = device_guard(theta);
  return relation_gemms::relation_project(theta, phi, weight);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> relation_project_backward_cuda(
    const at::Tensor& grad, const at::Tensor& theta, const at::Tensor& phi, const at::Tensor& weight,
    const at::Tensor& coefficients) {
  const auto guard = device_guard(theta);
  return relation_gemms::relation_project_backward(grad, theta, phi, weight, coefficients);
}

}  // namespace

TORCH_LIBRARY_IMPL(rga_ops, CUDA, m) {
  m.impl("_relation_project", &relation_project_cuda);
  m.impl("relation_project_backward", &relation_project_backward_cuda);
}

}  // namespace rga_ops::cuda
