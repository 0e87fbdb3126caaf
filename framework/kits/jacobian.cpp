#include "mhd/kits/jacobian.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

namespace mhd {

namespace {
// Each row scaled to unit norm. v: [B, D]
at::Tensor normalize_rows(const at::Tensor& v) { return v / (v.norm(2, {1}, true) + 1e-12); }
}  // namespace

at::Tensor vector_jacobian_product(const TensorMap& f, const at::Tensor& z, const at::Tensor& v) {
  torch::AutoGradMode enable(true);
  auto zz = z.detach().requires_grad_(true);
  auto fz = f(zz);
  return torch::autograd::grad({fz}, {zz}, {v}, /*retain_graph=*/false, /*create_graph=*/false)[0];
}

at::Tensor hutchinson_jacobian_frobenius(const TensorMap& f, const at::Tensor& z) {
  torch::AutoGradMode enable(true);
  auto zz = z.detach().requires_grad_(true);
  auto fz = f(zz);
  auto v = at::randn_like(fz);
  auto vjp = torch::autograd::grad({fz}, {zz}, {v}, /*retain_graph=*/true, /*create_graph=*/true)[0];  // [B, D]
  return vjp.pow(2).sum(1);
}

namespace {
struct PowerIteration {
  at::Tensor sigma;  // [B], detached
  at::Tensor v;      // [B, D] unit rows, detached: the top right singular vector's estimate
  at::Tensor jv;     // [B, D] J v, detached
};

// Power iteration on J^T J at zz (requires_grad) with fz = f(zz) whose graph stays alive.
PowerIteration power_iteration(const at::Tensor& fz, const at::Tensor& zz, std::int64_t iterations) {
  // J v via the double-backward trick: w -> J^T w is linear in w, so d<J^T w, v>/dw = J v.
  auto w = at::zeros_like(fz).requires_grad_(true);
  auto jt_w = torch::autograd::grad({fz}, {zz}, {w}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  auto jacobian_times = [&](const at::Tensor& v) {
    return torch::autograd::grad({jt_w}, {w}, {v}, /*retain_graph=*/true)[0];  // [B, D]
  };
  PowerIteration p;
  p.v = normalize_rows(at::randn_like(zz));
  p.sigma = at::zeros({zz.size(0)}, zz.options());
  for (std::int64_t i = 0; i < iterations; ++i) {
    auto jv = jacobian_times(p.v);
    auto jtjv = torch::autograd::grad({fz}, {zz}, {jv}, /*retain_graph=*/true)[0];  // [B, D]
    p.sigma = jtjv.norm(2, {1}).sqrt();  // ||J^T J v|| -> sigma_max^2 for unit v
    p.v = normalize_rows(jtjv);
  }
  p.jv = jacobian_times(p.v).detach();
  p.sigma = p.sigma.detach();
  p.v = p.v.detach();
  return p;
}
}  // namespace

at::Tensor jacobian_spectral_norm(const TensorMap& f, const at::Tensor& z, std::int64_t iterations) {
  torch::AutoGradMode enable(true);
  auto zz = z.detach().requires_grad_(true);
  auto fz = f(zz);  // [B, D]
  return power_iteration(fz, zz, iterations).sigma;
}

at::Tensor jacobian_spectral_norm_trainable(const TensorMap& f, const at::Tensor& z, std::int64_t iterations) {
  torch::AutoGradMode enable(true);
  auto zz = z.detach().requires_grad_(true);
  auto fz = f(zz);  // [B, D]
  const PowerIteration p = power_iteration(fz, zz, iterations);
  // sigma = u^T J v with u = J v / ||J v||: at fixed singular vectors its gradient is that of
  // sigma_max (d sigma = u^T dJ v), and it needs one vector-Jacobian product with a graph.
  auto u = normalize_rows(p.jv);                                                            // [B, D]
  auto jt_u = torch::autograd::grad({fz}, {zz}, {u}, /*retain_graph=*/true, /*create_graph=*/true)[0];  // [B, D]
  return (jt_u * p.v).sum(1);
}

}  // namespace mhd
