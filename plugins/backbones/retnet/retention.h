// Retention (docs/design.md §4, "Backbones"), the three forms of one computation. Per head h
// with decay gamma_h (passed as log_gamma [H]), q, k: [B, H, L, dk], v: [B, H, L, dv] and the state
// S0: [B, H, dk, dv] before the first position (zeros for a fresh sequence):
//
//   recurrent   S_n = gamma S_{n-1} + k_n^T v_n,  o_n = q_n S_n                              (S_{-1} = S0)
//   parallel    O = (Q K^T . D) V + (Q S0) . xi,  D_nm = gamma^(n - m) (n >= m, else 0), xi_n = gamma^(n + 1)
//   chunkwise   the parallel form on chunks of C positions, the state carried between chunks:
//               S' = gamma^C S + K_c^T (V_c . zeta), zeta_j = gamma^(C - 1 - j)
//
// All return (O: [B, H, L, dv], S_{L-1}: [B, H, dk, dv]) and are differentiable by autograd. The
// parallel form costs O(L^2) time and memory, the chunkwise O(L C), the recurrent O(L) in L small
// ops (the reference the other two are tested against).
#pragma once

#include <cstdint>
#include <utility>

#include <ATen/core/Tensor.h>

namespace mhd::retnet {

using Retained = std::pair<at::Tensor, at::Tensor>;  // (O, S_last)

Retained retention_parallel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& log_gamma, const at::Tensor& s0);
Retained retention_chunkwise(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& log_gamma, const at::Tensor& s0, std::int64_t chunk);
Retained retention_recurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& log_gamma, const at::Tensor& s0);

// gamma_h = 1 - 2^(-5 - h), h = 0 .. H - 1, as log gamma: [H] float64.
at::Tensor retention_log_gamma(std::int64_t heads);

}  // namespace mhd::retnet
