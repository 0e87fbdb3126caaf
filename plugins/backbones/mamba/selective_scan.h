// The selective scan of Mamba (S6) on the CPU: a fused kernel with its own backward, and a naive
// per-timestep reference in LibTorch ops that autograd differentiates.
//
// Per batch b, channel d and state n (delta is the *effective* step, see ScanArgs):
//   h_t[n] = exp(delta_t A[d, n]) h_{t-1}[n] + delta_t B_t[n] u_t        h_{-1} = h0[b, d] (or 0)
//   y_t    = sum_n h_t[n] C_t[n] + D[d] u_t
// returning y and the final state h_{L-1} (written h_L in the docs: the state after L positions).
//
// The fused kernel never materialises a [B, d_inner, L, N] tensor: each (b, d) channel is scanned
// over time with its N states in cache, vectorised over n, in parallel over b x d (at::parallel_for).
// Its backward recomputes the channel's states into a per-thread scratch of L * N values, then runs
// the adjoint recurrence backwards in time; reductions across channels (dB, dC) and across the batch
// (dA, dD, d delta_bias) go to per-chunk partial buffers summed at the end, so it is race-free and
// deterministic for a given thread count. exp() is fast_exp.h's (about 1 ulp; arguments below -86 in
// float32 / -700 in float64 give exp of that bound, i.e. < 5e-38 / < 1e-304, instead of a smaller
// number). u and delta are read channel-major ([B, D, L]); a [B, L, D] view of such a buffer (the
// block's conv output) costs no copy, other layouts one transposed copy.
#pragma once

#include <cstdint>
#include <string>

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
  at::Tensor y;           // [B, L, D] (the fused scan returns a transposed view of a [B, D, L] buffer)
  at::Tensor last_state;  // [B, D, N]  h after the last position
};

// Fused CPU scan, float32 or float64 (all tensors of one dtype, on the CPU). Differentiable with
// respect to every tensor in ScanArgs (first order by its own backward; under create_graph=true the
// backward recomputes through selective_scan_reference so higher derivatives are exact as well).
// Throws mhd::Error on a bad shape, dtype or device.
ScanResult selective_scan(const ScanArgs& args);

// The naive reference: a loop over t of LibTorch ops on [B, D, N] tensors, any dtype and device.
// Slow (O(L) small ops), differentiable by autograd; the fused scan is tested against it.
ScanResult selective_scan_reference(const ScanArgs& args);

// Validates shapes, dtypes and devices; throws mhd::Error("<who>: ...") naming the first problem.
void check_scan_args(const ScanArgs& args, const char* who);

// Which compiled variant of the fused kernel runs. Auto picks AVX2+FMA when the CPU has it.
// Generic is the portable build of the same code (tests use it to cover that path too).
enum class ScanIsa { Auto, Generic, Avx2 };
void set_scan_isa(ScanIsa isa);  // process-wide; Avx2 on a CPU without it throws mhd::Error
std::string active_scan_isa();   // "avx2+fma" or "generic": what Auto resolves to now

}  // namespace mhd::mamba
