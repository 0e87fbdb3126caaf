// Internal to the plugin: what selective_scan.cpp (arguments, build selection, autograd, reference)
// shares with the two launch paths of the fused kernel, scan_channels.cpp (the channel-per-task
// portable and AVX2+FMA builds) and scan_avx512_launch.cpp (the tensor side of the AVX-512 build,
// scan_kernels.h). The launch files run at::parallel_for and are compiled with -fopenmp
// (CMakeLists.txt).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "selective_scan.h"

namespace mhd::mamba::detail {

// Below this many (t, n) updates per task, threads cost more than they save.
constexpr std::int64_t kMinUpdatesPerTask = 1 << 15;

// Gradients in ScanArgs order.
struct FusedGrads {
  at::Tensor u, delta, A, B, C, D, delta_bias, h0;
};

// What Auto or a request resolves to: the widest build the CPU has.
ScanIsa resolved_isa();

// The channel-per-task kernels (float32 and float64): their AVX2+FMA build runs under Avx2, and
// under Avx512 for float64 (the AVX-512 build is float32 / bfloat16 only).
bool use_avx2();

// Records how many parallel tasks a fused forward ran (last_scan_forward_tasks()).
void record_forward_tasks(std::int64_t tasks);

// How many slices each batch's channels are cut into for the backward (see selective_scan.cpp).
std::int64_t chunks_per_batch(std::int64_t batch, std::int64_t dim);

// g in like's dtype (a no-op when they match).
at::Tensor as_dtype_of(const at::Tensor& g, const at::Tensor& like);

// The channel-per-task builds, float32 or float64 (scan_channels.cpp). y: [B, L, D] (a transposed
// view of the kernel's [B, D, L] buffer), h_L: [B, D, N].
ScanResult fused_forward(const ScanArgs& a);
FusedGrads fused_backward(const ScanArgs& a, const at::Tensor& gy, const at::Tensor& ghL);

// The AVX-512 build (scan_avx512_launch.cpp): whether it runs these arguments, and its launches.
// The forward keeps its checkpoints (scan_kernels.h) in *checkpoints when that is given; the
// backward takes them, or recomputes them when undefined.
bool avx512_handles(const ScanArgs& a);
ScanResult avx512_forward(const ScanArgs& a, at::Tensor* checkpoints = nullptr);
FusedGrads avx512_backward(const ScanArgs& a, const at::Tensor& gy, const at::Tensor& ghL,
                           const at::Tensor& checkpoints);

}  // namespace mhd::mamba::detail
