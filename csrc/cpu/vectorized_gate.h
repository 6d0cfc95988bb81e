// Building blocks of ha_soft_gate's float32 rows, written so that the compiler
// vectorises the loops that use them: a branch-free gate,
// sigmoid(relu(z)) = 1 / (1 + exp(-max(z, 0))), and a polynomial exp (Cephes' expf,
// within 2 ulp) instead of a library call. RGA_OPS_MULTIVERSION compiles a function
// twice on x86-64 (AVX2+FMA and baseline) and the loader picks the one the CPU
// supports, so the extension still runs on any x86-64 machine.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RGA_OPS_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define RGA_OPS_MULTIVERSION
#endif

namespace rga_ops::cpu {

// exp(x) for x <= 0 (x below -87.3 gives exp(-87.3), ~1e-38: sigmoid is 1 there anyway).
inline float exp_nonpositive(float x) {
  x = x < -87.3f ? -87.3f : x;
  const float t = x * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest, without a library call
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// sigmoid(relu(z)).
inline float soft_gate(float z) {
  const float positive = z > 0.0f ? z : 0.0f;
  return 1.0f / (1.0f + exp_nonpositive(-positive));
}

// Eight float32 / int32 lanes in GCC/Clang vector types: AVX2 in the x86-64-v3 clone of
// RGA_OPS_MULTIVERSION, two SSE registers in the baseline one.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // 32-byte vectors in always-inlined helpers only
#endif
typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

__attribute__((always_inline)) inline f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

}  // namespace rga_ops::cpu
