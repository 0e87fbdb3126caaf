// Test problems shared by the solver suites: solver-specific extras, matrices of a given spectral norm
// and affine maps with their exact fixed point.
#pragma once

#include <cmath>
#include <map>
#include <string>

#include <ATen/ATen.h>

#include <memory>
#include <utility>

#include "core/implicit.h"
#include "mhd/params.h"
#include "mhd/solver.h"
#include "plugin_host/registry.h"

namespace solver_test {

// The value of a SolverInfo::extra entry, NaN when the solver did not log it.
inline double extra(const mhd::SolverInfo& info, const std::string& key) {
  for (const auto& [k, v] : info.extra)
    if (k == key) return v;
  return std::nan("");
}

using Overrides = std::map<std::string, mhd::ParamValue>;

// A solver plugin the registry has loaded, at its default parameters but for `overrides`.
inline std::shared_ptr<mhd::Solver> make_solver_from(mhd::PluginRegistry& registry, const std::string& name,
                                                     const Overrides& overrides = {}) {
  mhd::Params params = mhd::Params::defaults(registry.require(mhd::PluginKind::Solver, name).manifest->params);
  for (const auto& [key, value] : overrides) params.set(key, value);
  return registry.make<mhd::Solver>(name, params);
}

// A [d, d] matrix with spectral norm exactly `norm`.
inline at::Tensor matrix_with_norm(std::int64_t d, double norm, at::ScalarType dtype) {
  const at::Tensor a = at::randn({d, d}, at::TensorOptions().dtype(dtype));
  return a * (norm / at::linalg_svdvals(a).max().item<double>());
}

// z -> z W^T + b row by row (each row z_b -> W z_b + b_b), with the known fixed point (I - W)^{-1} b.
struct AffineMap {
  at::Tensor w;  // [D, D]
  at::Tensor b;  // [B, D]

  mhd::TensorMap f() const {
    return [w = w, b = b](const at::Tensor& z) { return at::addmm(b, z, w.t()); };
  }
  at::Tensor fixed_point() const {  // (I - W) Z^T = B^T
    const at::Tensor eye = at::eye(w.size(0), w.options());
    return at::linalg_solve(eye - w, b.t()).t();
  }
};

// Row b: z -> s_b W z + c_b with ||W|| = 0.9 and s = (0.1, 0.3, 0.6, 1.0): contractions 0.09 to 0.9,
// so the rows converge at very different speeds (what per-row exits act on). Returns the map and its
// exact fixed point; B = 4.
inline std::pair<mhd::TensorMap, at::Tensor> mixed_speed_map(std::int64_t dim, std::uint64_t seed = 11) {
  at::manual_seed(seed);
  const at::Tensor w = matrix_with_norm(dim, 0.9, at::kDouble);
  const at::Tensor s = at::tensor({0.1, 0.3, 0.6, 1.0}, at::kDouble);
  const at::Tensor c = at::randn({4, dim}, at::kDouble);
  const mhd::TensorMap f = [w, s, c](const at::Tensor& z) { return s.unsqueeze(1) * z.matmul(w.t()) + c; };
  at::Tensor exact = at::empty({4, dim}, at::kDouble);
  for (std::int64_t i = 0; i < 4; ++i)
    exact[i] = at::linalg_solve(at::eye(dim, at::kDouble) - s[i].item<double>() * w, c[i].unsqueeze(1)).squeeze(1);
  return {f, exact};
}

// The largest relative distance of a row of z from the same row of ref.
inline double max_row_error(const at::Tensor& z, const at::Tensor& ref) {
  return ((z - ref).norm(2, {1}) / ref.norm(2, {1})).max().item<double>();
}

// A DEQ layer small enough for float64 gradient checks (as tests/test_implicit.cpp):
// f(z) = tanh(W z + U x + b), ||W|| = 0.6, z: [3, 6].
struct ToyLayer {
  at::Tensor W, U, b, x;
  ToyLayer() {
    at::manual_seed(3);
    const auto opts = at::TensorOptions().dtype(at::kDouble);
    W = at::randn({6, 6}, opts);
    W = (0.6 * W / at::linalg_matrix_norm(W, 2)).detach().requires_grad_(true);
    U = (at::randn({6, 6}, opts) / std::sqrt(6.0)).requires_grad_(true);
    b = (0.1 * at::randn({6}, opts)).requires_grad_(true);
    x = at::randn({3, 6}, opts).requires_grad_(true);
  }
  mhd::TensorMap map() const {
    return [this](const at::Tensor& z) { return at::tanh(at::matmul(z, W.t()) + at::matmul(x, U.t()) + b); };
  }
  // Gradients of sum(c * z*^2) with respect to W and x, with `backward` as the backward solver and
  // the same forward equilibrium (`forward` to 1e-13) whatever the backward solver.
  std::pair<at::Tensor, at::Tensor> gradients(mhd::Solver& forward, mhd::Solver& backward,
                                              std::shared_ptr<mhd::SolverInfo> info) {
    W.mutable_grad() = at::Tensor();
    x.mutable_grad() = at::Tensor();
    at::Tensor z_star;
    {
      at::NoGradGuard no_grad;
      z_star = forward.solve({map(), {}, {}}, at::zeros_like(x), {500, 1e-13}).z;
    }
    at::manual_seed(5);
    const at::Tensor c = at::randn({3, 6}, at::kDouble);
    const at::Tensor z = mhd::implicit_equilibrium(map(), z_star, backward, {500, 1e-12}, std::move(info));
    (c * z * z).sum().backward();
    return {W.grad().clone(), x.grad().clone()};
  }
};

}  // namespace solver_test
