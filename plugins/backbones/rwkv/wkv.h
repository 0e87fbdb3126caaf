// The WKV recurrence of RWKV (docs/design.md §4, "Backbones") as a fused CPU kernel with its
// own backward. Per batch b, channel d, with k, v: [B, L, D], the decay rate w: [B, L, D] (w > 0,
// decay factor e^{-w_t}) and the bonus u: [D]:
//
//   a_t = e^{-w_t} a_{t-1} + e^{k_t} v_t          b_t = e^{-w_t} b_{t-1} + e^{k_t}     a_{-1} = b_{-1} = 0
//   y_t = (a_{t-1} + e^{u + k_t} v_t) / (b_{t-1} + e^{u + k_t})
//
// A constant w (RWKV-4) is w broadcast over b and t; a data-dependent one (the RWKV-6 option) varies.
// a and b are kept as (aa, bb, pp) with a = aa e^{pp}, b = bb e^{pp} and pp the running maximum of
// the exponents, so no exponential ever has a positive argument: nothing overflows, whatever k and
// t. The backward carries the adjoints of a and b scaled the same way (wkv.cpp derives it), so it
// cannot overflow either. Sums and states are float32 for float32 / bfloat16 / half inputs (those
// are widened first) and float64 for float64.
//
// The kernel runs channels in blocks of 16 over batch x blocks with at::parallel_for, time as the
// serial loop inside a task: no per-timestep tensor op.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace mhd::rwkv {

// pp of the state before any input: effectively -infinity, but finite so that pp - w stays finite.
constexpr double kEmptyExponent = -1e38;

struct WkvResult {
  at::Tensor y;   // [B, L, D] in the accumulation dtype (float32, or float64 for float64 inputs)
  at::Tensor aa;  // [B, D] the state after the last position, scaled by e^{-pp}
  at::Tensor bb;  // [B, D]
  at::Tensor pp;  // [B, D] the scale's exponent; carries no gradient (see wkv.cpp)
};

// Differentiable with respect to k, v, w and u (first order, by the kernel's own backward) and
// through y, aa and bb. Throws mhd::Error("rwkv: ...") on a bad shape, dtype or device.
WkvResult wkv(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& u);

// How many parallel tasks the most recent forward ran (1 = one thread); for tests and benchmarks.
std::int64_t last_wkv_forward_tasks();

}  // namespace mhd::rwkv
