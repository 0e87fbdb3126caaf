#include "window_attention.h"

#include <algorithm>
#include <cmath>
#include <string>

#include <ATen/ATen.h>

#include "mhd/error.h"
#include "mhd/shapes.h"

namespace mhd::hybrid {

namespace {

[[noreturn]] void fail(const std::string& message) { throw Error("hybrid: " + message); }

std::string shape_or_undefined(const at::Tensor& t) { return t.defined() ? shape_string(t.sizes()) : "undefined"; }

constexpr double kRopeBase = 10000.0;

}  // namespace

WindowAttention::WindowAttention(const WindowAttentionConfig& config) : config_(config) {
  const std::int64_t d = config_.d_model;
  namespace nn = torch::nn;
  q_proj = register_module("q_proj", nn::Linear(nn::LinearOptions(d, d).bias(false)));
  k_proj = register_module("k_proj", nn::Linear(nn::LinearOptions(d, d).bias(false)));
  v_proj = register_module("v_proj", nn::Linear(nn::LinearOptions(d, d).bias(false)));
  o_proj = register_module("o_proj", nn::Linear(nn::LinearOptions(d, d).bias(false)));
}

// heads: [..., dh], positions broadcastable to the leading dims once a trailing one is added.
at::Tensor WindowAttention::rope(const at::Tensor& heads, const at::Tensor& positions) const {
  const std::int64_t dh = heads.size(-1), half = dh / 2;
  if (half == 0) return heads;
  const at::Tensor inv_freq =
      at::pow(kRopeBase, at::arange(half, heads.options().dtype(at::kDouble)) * (-2.0 / static_cast<double>(2 * half)));
  const at::Tensor angles = positions.to(at::kDouble).unsqueeze(-1) * inv_freq;  // [..., half]
  const at::Tensor cos = at::cos(angles).to(heads.scalar_type()), sin = at::sin(angles).to(heads.scalar_type());
  const at::Tensor x1 = heads.narrow(-1, 0, half), x2 = heads.narrow(-1, half, half);
  std::vector<at::Tensor> parts = {x1 * cos - x2 * sin, x2 * cos + x1 * sin};
  if (dh > 2 * half) parts.push_back(heads.narrow(-1, 2 * half, dh - 2 * half));
  return at::cat(parts, -1);
}

at::Tensor WindowAttention::trim(const at::Tensor& cache) const {
  if (config_.window == 0) return cache.contiguous();
  const std::int64_t len = cache.size(2), keep = std::min(len, config_.window - 1);
  return cache.narrow(2, len - keep, keep).contiguous();
}

// Global causal attention: q, k, v: [B, H, L, dh] -> [B, H, L, dh]; O(L^2).
at::Tensor WindowAttention::global_context(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           double scale) const {
  const std::int64_t len = q.size(2);
  const at::Tensor future =
      at::triu(at::ones({len, len}, q.options().dtype(at::kBool)), 1);  // key j > query i
  const at::Tensor scores = (at::matmul(q, k.transpose(-2, -1)) * scale).masked_fill(future, -INFINITY);
  return at::matmul(at::softmax(scores, -1), v);
}

// Sliding-window attention in blocks of W queries: block b's queries [bW, bW + W) see the 2W keys
// [bW - W, bW + W) (the left W from the block before, zero-padded before the first), masked to
// (i - W, i]. O(L W) time and memory. One block's scores at a time ([B, H, W, 2W], which stays in
// cache, where all blocks' at once measured 3x slower at L = 4096), taken with unbind from the
// padded q and the unfolded k and v windows: their backwards are one stack and one fold, where a
// narrow per block writes each block's gradient into a zero tensor of the whole sequence (O(L^2 / W)).
// q, k, v: [B, H, L, dh] -> [B, H, L, dh].
at::Tensor WindowAttention::local_context(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          double scale) const {
  const std::int64_t batch = q.size(0), h = q.size(1), len = q.size(2), dh = q.size(3), w = config_.window;
  const std::int64_t blocks = (len + w - 1) / w, padded = blocks * w;
  const std::vector<at::Tensor> qs = at::constant_pad_nd(q, {0, 0, 0, padded - len}).view({batch, h, blocks, w, dh}).unbind(2);
  auto windows = [&](const at::Tensor& t) {  // [B, H, L, dh] -> blocks x [B, H, 2W, dh]
    return at::constant_pad_nd(t, {0, 0, w, padded - len}).unfold(2, 2 * w, w).transpose(-1, -2).unbind(2);
  };
  const std::vector<at::Tensor> ks = windows(k), vs = windows(v);
  // Query i of a block sits at window offset W + i and sees offsets j in (i, W + i]. Keys past the
  // sequence's end lie after every real query, so this mask hides them too; the first block also
  // hides its W padding keys.
  const auto long_opts = q.options().dtype(at::kLong);
  const at::Tensor i = at::arange(w, long_opts).unsqueeze(1), j = at::arange(2 * w, long_opts).unsqueeze(0);
  const at::Tensor hidden = (j > i + w) | (j <= i);  // [W, 2W]
  const at::Tensor hidden_first = hidden | (j < w);
  std::vector<at::Tensor> outs;
  outs.reserve(blocks);
  for (std::int64_t b = 0; b < blocks; ++b) {
    const at::Tensor scores =
        (at::matmul(qs[b], ks[b].transpose(-2, -1)) * scale).masked_fill(b == 0 ? hidden_first : hidden, -INFINITY);
    outs.push_back(at::matmul(at::softmax(scores, -1), vs[b]));  // [B, H, W, dh]
  }
  return at::cat(outs, 2).narrow(2, 0, len);
}

std::pair<at::Tensor, std::vector<at::Tensor>> WindowAttention::sequence(const at::Tensor& x, bool keep_state) {
  const std::int64_t batch = x.size(0), len = x.size(1), h = config_.n_heads, dh = config_.d_model / h;
  const std::int64_t window = config_.window;
  auto heads = [&](const at::Tensor& t) { return t.view({batch, len, h, dh}).transpose(1, 2); };  // [B, H, L, dh]
  const auto long_opts = x.options().dtype(at::kLong);
  const at::Tensor positions = at::arange(len, long_opts);
  const at::Tensor q = rope(heads(q_proj(x)), positions);
  const at::Tensor k = rope(heads(k_proj(x)), positions);
  const at::Tensor v = heads(v_proj(x));
  const double scale = 1.0 / std::sqrt(static_cast<double>(dh));
  const at::Tensor ctx = window > 0 ? local_context(q, k, v, scale) : global_context(q, k, v, scale);  // [B, H, L, dh]
  const at::Tensor a = o_proj(ctx.transpose(1, 2).reshape({batch, len, config_.d_model}));
  std::vector<at::Tensor> cache;
  if (keep_state) cache = {trim(k), trim(v), at::full({batch}, len, long_opts)};
  return {a, cache};
}

std::vector<at::Tensor> WindowAttention::empty_cache(std::int64_t batch) const {
  const auto opts = q_proj->weight.options().requires_grad(false);
  const std::int64_t h = config_.n_heads, dh = config_.d_model / h;
  return {at::zeros({batch, h, 0, dh}, opts), at::zeros({batch, h, 0, dh}, opts), at::zeros({batch}, opts.dtype(at::kLong))};
}

void WindowAttention::check_cache(const std::vector<at::Tensor>& cache, std::int64_t batch) const {
  const std::int64_t h = config_.n_heads, dh = config_.d_model / h;
  const std::int64_t max_len = config_.window > 0 ? config_.window - 1 : -1;
  for (int i = 0; i < 2; ++i) {
    const at::Tensor& c = cache[i];
    const char* name = i == 0 ? "k" : "v";
    if (!c.defined() || c.dim() != 4 || c.size(0) != batch || c.size(1) != h || c.size(3) != dh ||
        (max_len >= 0 && c.size(2) > max_len)) {
      fail(std::string("step: attention ") + name + " cache must be [B, n_heads, T, head_dim] = [" +
           std::to_string(batch) + ", " + std::to_string(h) + ", T, " + std::to_string(dh) + "]" +
           (max_len >= 0 ? " with T <= window_size - 1 = " + std::to_string(max_len) : std::string()) + ", got " +
           shape_or_undefined(c));
    }
  }
  if (cache[0].size(2) != cache[1].size(2)) fail("step: attention k and v caches hold different lengths");
  const at::Tensor& pos = cache[2];
  if (!pos.defined() || pos.dim() != 1 || pos.size(0) != batch || pos.scalar_type() != at::kLong) {
    fail("step: attention pos must be an int64 tensor [B] = [" + std::to_string(batch) + "], got " + shape_or_undefined(pos));
  }
}

std::pair<at::Tensor, std::vector<at::Tensor>> WindowAttention::step(const at::Tensor& x_t,
                                                                     const std::vector<at::Tensor>& cache) {
  const std::int64_t batch = x_t.size(0), h = config_.n_heads, dh = config_.d_model / h;
  const at::Tensor& pos = cache[2];
  const at::Tensor where = pos.view({batch, 1, 1});
  auto heads = [&](const at::Tensor& t) { return t.view({batch, h, 1, dh}); };
  const at::Tensor q = rope(heads(q_proj(x_t)), where);                                   // [B, H, 1, dh]
  const at::Tensor k = at::cat({cache[0], rope(heads(k_proj(x_t)), where)}, 2);            // [B, H, T + 1, dh]
  const at::Tensor v = at::cat({cache[1], heads(v_proj(x_t))}, 2);
  const at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(dh));
  const at::Tensor ctx = at::matmul(at::softmax(scores, -1), v);                          // [B, H, 1, dh]
  return {o_proj(ctx.reshape({batch, config_.d_model})), {trim(k), trim(v), pos + 1}};
}

}  // namespace mhd::hybrid
