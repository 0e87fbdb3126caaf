// Test problems shared by the solver suites: solver-specific extras, matrices of a given spectral norm
// and affine maps with their exact fixed point.
#pragma once

#include <cmath>
#include <string>

#include <ATen/ATen.h>

#include "mhd/solver.h"

namespace solver_test {

// The value of a SolverInfo::extra entry, NaN when the solver did not log it.
inline double extra(const mhd::SolverInfo& info, const std::string& key) {
  for (const auto& [k, v] : info.extra)
    if (k == key) return v;
  return std::nan("");
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

}  // namespace solver_test
