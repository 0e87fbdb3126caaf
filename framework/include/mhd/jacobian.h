// Probes of the dynamics' Jacobian, shared by the contractive optimization, the training
// objective and the convergence experiments.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "mhd/solver.h"

namespace mhd {

// Per-sample spectral norm ||J_f(z)||_2 by power iteration on J^T J, with J v and J^T u computed
// exactly by autograd (double-backward trick for J v). f must act on rows independently.
// z: [B, D] -> [B]. Runs with gradients enabled internally; returns a detached tensor.
at::Tensor jacobian_spectral_norm(const TensorMap& f, const at::Tensor& z, std::int64_t iterations = 20);

// J_f(z)^T v for v: [B, D]. The graph of f(z) is rebuilt each call.
at::Tensor vector_jacobian_product(const TensorMap& f, const at::Tensor& z, const at::Tensor& v);

}  // namespace mhd
