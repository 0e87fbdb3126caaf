#include "retention.h"

#include <cmath>
#include <vector>

#include <ATen/ATen.h>

namespace mhd::retnet {

namespace {

// gamma^e for exponents e: [...] -> [H, ...], with log_gamma: [H].
at::Tensor gamma_pow(const at::Tensor& log_gamma, const at::Tensor& exponents) {
  std::vector<std::int64_t> shape = {log_gamma.size(0)};
  for (std::int64_t i = 0; i < exponents.dim(); ++i) shape.push_back(1);
  return at::exp(log_gamma.view(shape) * exponents.unsqueeze(0));
}

}  // namespace

at::Tensor retention_log_gamma(std::int64_t heads) {
  return at::log1p(-at::pow(2.0, -5.0 - at::arange(heads, at::kDouble)));
}

Retained retention_parallel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& log_gamma, const at::Tensor& s0) {
  const std::int64_t len = q.size(2);
  const auto opts = q.options().requires_grad(false);
  const at::Tensor n = at::arange(len, opts);
  const at::Tensor diff = n.unsqueeze(1) - n.unsqueeze(0);                                // [L, L] = n - m
  const at::Tensor decay = gamma_pow(log_gamma, diff.clamp_min(0)) * (diff >= 0).to(q.scalar_type());  // [H, L, L]
  at::Tensor o = at::matmul(at::matmul(q, k.transpose(-2, -1)) * decay, v);             // [B, H, L, dv]
  const at::Tensor zeta = gamma_pow(log_gamma, (len - 1) - n).unsqueeze(-1);             // [H, L, 1]
  at::Tensor s = at::matmul(k.transpose(-2, -1), v * zeta);                              // [B, H, dk, dv]
  if (s0.defined()) {
    const at::Tensor xi = gamma_pow(log_gamma, n + 1).unsqueeze(-1);                     // [H, L, 1]
    o = o + at::matmul(q, s0) * xi;
    s = s + s0 * gamma_pow(log_gamma, at::full({}, static_cast<double>(len), opts)).view({-1, 1, 1});
  }
  return {o, s};
}

Retained retention_chunkwise(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& log_gamma, const at::Tensor& s0, std::int64_t chunk) {
  const std::int64_t len = q.size(2);
  if (len == 0) {
    const at::Tensor o = at::zeros({q.size(0), q.size(1), 0, v.size(3)}, v.options());
    return {o, s0.defined() ? s0 : at::zeros({q.size(0), q.size(1), q.size(3), v.size(3)}, v.options())};
  }
  // split, not a narrow per chunk: a narrow's backward writes its slice into a zero tensor of the
  // whole input, which made the backward O(L^2 / C); split's backward is one concatenation.
  const std::vector<at::Tensor> qs = q.split(chunk, 2), ks = k.split(chunk, 2), vs = v.split(chunk, 2);
  std::vector<at::Tensor> outs;
  at::Tensor s = s0;
  for (std::size_t i = 0; i < qs.size(); ++i) {
    Retained r = retention_parallel(qs[i], ks[i], vs[i], log_gamma, s);
    outs.push_back(r.first);
    s = r.second;
  }
  return {at::cat(outs, 2), s};
}

Retained retention_recurrent(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                             const at::Tensor& log_gamma, const at::Tensor& s0) {
  const std::int64_t len = q.size(2);
  const at::Tensor gamma = at::exp(log_gamma).view({1, -1, 1, 1});  // [1, H, 1, 1]
  at::Tensor s = s0.defined() ? s0 : at::zeros({q.size(0), q.size(1), q.size(3), v.size(3)}, v.options());
  std::vector<at::Tensor> outs;
  for (std::int64_t t = 0; t < len; ++t) {
    const at::Tensor kt = k.select(2, t).unsqueeze(-1), vt = v.select(2, t).unsqueeze(-2);  // [B, H, dk, 1], [B, H, 1, dv]
    s = gamma * s + kt * vt;
    outs.push_back(at::matmul(q.select(2, t).unsqueeze(-2), s));  // [B, H, 1, dv]
  }
  if (outs.empty()) return {at::zeros({q.size(0), q.size(1), 0, v.size(3)}, v.options()), s};
  return {at::cat(outs, 2), s};
}

}  // namespace mhd::retnet
