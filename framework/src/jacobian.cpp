#include "mhd/jacobian.h"

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

at::Tensor jacobian_spectral_norm(const TensorMap& f, const at::Tensor& z, std::int64_t iterations) {
  torch::AutoGradMode enable(true);
  auto zz = z.detach().requires_grad_(true);
  auto fz = f(zz);  // [B, D]
  // J v via the double-backward trick: w -> J^T w is linear in w, so d<J^T w, v>/dw = J v.
  auto w = at::zeros_like(fz).requires_grad_(true);
  auto jt_w = torch::autograd::grad({fz}, {zz}, {w}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  auto v = normalize_rows(at::randn_like(z));
  at::Tensor sigma = at::zeros({z.size(0)}, z.options());
  for (std::int64_t i = 0; i < iterations; ++i) {
    auto jv = torch::autograd::grad({jt_w}, {w}, {v}, /*retain_graph=*/true)[0];     // [B, D]
    auto jtjv = torch::autograd::grad({fz}, {zz}, {jv}, /*retain_graph=*/true)[0];   // [B, D]
    sigma = jtjv.norm(2, {1}).sqrt();  // ||J^T J v|| -> sigma_max^2 for unit v
    v = normalize_rows(jtjv);
  }
  return sigma.detach();
}

}  // namespace mhd
