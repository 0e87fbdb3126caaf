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

// The same estimate as a training term: power iteration finds the singular vectors u, v without a
// graph, then sigma = u^T J_f(z) v is formed with the graph kept (one create_graph VJP), so its
// gradient reaches f's parameters (that of sigma_max at fixed u, v). z: [B, D] -> [B].
at::Tensor jacobian_spectral_norm_trainable(const TensorMap& f, const at::Tensor& z, std::int64_t iterations = 20);

// Hutchinson estimate of ||J_f(z)||_F^2 per sample with one Gaussian probe v:
// ||v^T J||^2 has expectation ||J||_F^2. Keeps the graph (create_graph) so it can be a training
// term that reaches f's parameters. z: [B, D] -> [B].
at::Tensor hutchinson_jacobian_frobenius(const TensorMap& f, const at::Tensor& z);

// J_f(z)^T v for v: [B, D]. The graph of f(z) is rebuilt each call.
at::Tensor vector_jacobian_product(const TensorMap& f, const at::Tensor& z, const at::Tensor& v);

}  // namespace mhd
