// The selective scan of Mamba (S6) on the CPU: a fused kernel with its own backward, and a naive
// per-timestep reference in LibTorch ops that autograd differentiates.
//
// Per batch b, channel d and state n (delta is the *effective* step, see ScanArgs):
//   h_t[n] = exp(delta_t A[d, n]) h_{t-1}[n] + delta_t B_t[n] u_t        h_{-1} = h0[b, d] (or 0)
//   y_t    = sum_n h_t[n] C_t[n] + D[d] u_t
// returning y and the final state h_{L-1} (written h_L in the docs: the state after L positions).
//
// The fused kernel never materialises a [B, d_inner, L, N] tensor and comes in three builds chosen
// at run time (ScanIsa below). The AVX-512 build scans 16 channels at once with their N states in
// registers (scan_kernels.h): u, delta and dLoss/dy are read through their strides, [B, L, D] or a
// [B, L, D] view of a channel-major [B, D, L] buffer (the block's conv output) alike, without a copy.
// The AVX2+FMA and portable builds scan one (b, d) channel per task, vectorised over n, after copying
// u and delta to channel-major [B, D, L]. All run in parallel over batch x channels
// (at::parallel_for; this file is compiled with -fopenmp so that ATen's OpenMP parallel_for is not
// the serial fallback). Backwards recompute the states into a per-thread scratch, then run the
// adjoint recurrence backwards in time; reductions across channels (dB, dC) and across the batch
// (dA, dD, d delta_bias) go to per-chunk partial buffers summed at the end, so they are race-free and
// deterministic for a given thread count.
//
// exp(): the AVX-512 build evaluates exp(delta A) as 2^(delta (A log2 e)) (relative error below
// 2e-7 + 9e-8 |delta A|, i.e. the float32 rounding of the product; results below 2^-126 are
// clamped there); the other builds use fast_exp.h's (about 1 ulp; arguments below -86 in float32 /
// -700 in float64 give exp of that bound). Neither produces subnormals.
//
// bfloat16: u, delta, A, B, C, D, delta_bias, h0 all bfloat16; the state and every sum are float32,
// y and h_L are rounded to bfloat16 at the end (the mixed-precision path). Gradients likewise.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace mhd::mamba {

// Shapes use B = batch, L = length, D = channels (d_inner), N = d_state.
struct ScanArgs {
  at::Tensor u;           // [B, L, D]  input
  at::Tensor delta;       // [B, L, D]  step before bias/softplus
  at::Tensor A;           // [D, N]     state matrix (diagonal per channel; negative for stability)
  at::Tensor B;           // [B, L, N]  input matrix (input-dependent, shared by the channels)
  at::Tensor C;           // [B, L, N]  output matrix
  at::Tensor D;           // [D]        skip; undefined = no skip
  at::Tensor delta_bias;  // [D]        added to delta; undefined = none
  at::Tensor h0;          // [B, D, N]  initial state; undefined = zeros
  // Effective step: delta' = softplus(delta + delta_bias) when true, delta + delta_bias otherwise
  // (softplus uses PyTorch's threshold 20: x > 20 -> x).
  bool delta_softplus = false;
};

struct ScanResult {
  at::Tensor y;           // [B, L, D] (contiguous from the AVX-512 build; a transposed view of a
                          // [B, D, L] buffer from the others)
  at::Tensor last_state;  // [B, D, N]  h after the last position
};

// Fused CPU scan, float32, float64 or bfloat16 (all tensors of one dtype, on the CPU). Differentiable with
// respect to every tensor in ScanArgs (first order by its own backward; under create_graph=true the
// backward recomputes through selective_scan_reference so higher derivatives are exact as well).
// Throws mhd::Error on a bad shape, dtype or device.
ScanResult selective_scan(const ScanArgs& args);

// The naive reference: a loop over t of LibTorch ops on [B, D, N] tensors, any dtype and device.
// Slow (O(L) small ops), differentiable by autograd; the fused scan is tested against it.
ScanResult selective_scan_reference(const ScanArgs& args);

// Validates shapes, dtypes and devices; throws mhd::Error("<who>: ...") naming the first problem.
void check_scan_args(const ScanArgs& args, const char* who);

// Which compiled build of the fused kernel runs; Auto picks the widest the CPU has.
//   Avx512   16 channels per vector, states in registers, no layout copies, delta_bias and softplus
//            inside the kernel (scan_kernels.h); float32 and bfloat16 (float64 runs the AVX2 build).
//   Avx2     one channel per task, vectorised over the N states (AVX2+FMA); u and delta copied to
//            channel-major [B, D, L] first. Kept selectable as the baseline docs/benchmarks.md
//            compares against.
//   Generic  the portable build of the Avx2 code.
enum class ScanIsa { Auto, Generic, Avx2, Avx512 };
void set_scan_isa(ScanIsa isa);  // process-wide; a build the CPU lacks throws mhd::Error
std::string scan_isa_name(ScanIsa isa);  // "avx512", "avx2+fma", "generic", "auto"
std::string active_scan_isa();   // the build float32 scans run now: what Auto (or the request) resolves to
std::vector<ScanIsa> available_scan_isas();  // the builds this CPU can run, Generic first

// How many parallel tasks (at::parallel_for bodies) the most recent fused forward ran; 1 means it
// ran on one thread. A diagnostic for tests and benchmarks.
std::int64_t last_scan_forward_tasks();

}  // namespace mhd::mamba
