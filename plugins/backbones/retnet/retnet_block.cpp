#include "retnet_block.h"

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "mhd/shapes.h"
#include "retention.h"

namespace mhd::retnet {

namespace {

[[noreturn]] void fail(const std::string& message) { throw Error("retnet: " + message); }

std::string shape_or_undefined(const at::Tensor& t) { return t.defined() ? shape_string(t.sizes()) : "undefined"; }

constexpr double kRotationBase = 10000.0;
constexpr double kGroupNormEps = 1e-5;

// Rotate-half rotation of heads: [..., H, dk] at positions: [...] (integer), angle pos * base^(-2i / r),
// r = 2 floor(dk / 2); computed in float64 so float32 stays accurate at large positions.
at::Tensor rotate(const at::Tensor& heads, const at::Tensor& positions) {
  const std::int64_t dk = heads.size(-1), half = dk / 2;
  if (half == 0) return heads;
  const at::Tensor inv_freq = at::pow(kRotationBase, at::arange(half, heads.options().dtype(at::kDouble)) *
                                                         (-2.0 / static_cast<double>(2 * half)));  // [half]
  std::vector<std::int64_t> shape(positions.sizes().begin(), positions.sizes().end());
  shape.push_back(1);
  shape.push_back(1);
  const at::Tensor angles = positions.to(at::kDouble).view(shape) * inv_freq;  // [..., 1, half]
  const at::Tensor cos = at::cos(angles).to(heads.scalar_type()), sin = at::sin(angles).to(heads.scalar_type());
  const at::Tensor x1 = heads.narrow(-1, 0, half), x2 = heads.narrow(-1, half, half);
  std::vector<at::Tensor> parts = {x1 * cos - x2 * sin, x2 * cos + x1 * sin};
  if (dk > 2 * half) parts.push_back(heads.narrow(-1, 2 * half, dk - 2 * half));
  return at::cat(parts, -1);
}

}  // namespace

void RetNetConfig::validate() const {
  if (d_model < 1) fail("d_model must be >= 1, got " + std::to_string(d_model));
  if (n_heads < 1) fail("n_heads must be >= 1, got " + std::to_string(n_heads));
  if (d_model % n_heads != 0) {
    fail("n_heads (" + std::to_string(n_heads) + ") must divide d_model (" + std::to_string(d_model) + ")");
  }
  if (value_factor < 1) fail("value_factor must be >= 1, got " + std::to_string(value_factor));
  if (ffn_ratio < 0) fail("ffn_ratio must be >= 0 (0 = no FFN), got " + std::to_string(ffn_ratio));
  if (chunk_size < 1) fail("chunk_size must be >= 1, got " + std::to_string(chunk_size));
}

RetNetBlock::RetNetBlock(const RetNetConfig& config) : config_(config) {
  config_.validate();
  const std::int64_t d = config_.d_model, dv_all = config_.n_heads * config_.value_dim(), f = config_.ffn_ratio * d;
  namespace nn = torch::nn;
  q_proj = register_module("q_proj", nn::Linear(nn::LinearOptions(d, d).bias(false)));
  k_proj = register_module("k_proj", nn::Linear(nn::LinearOptions(d, d).bias(false)));
  v_proj = register_module("v_proj", nn::Linear(nn::LinearOptions(d, dv_all).bias(false)));
  g_proj = register_module("g_proj", nn::Linear(nn::LinearOptions(d, dv_all).bias(false)));
  o_proj = register_module("o_proj", nn::Linear(nn::LinearOptions(dv_all, d).bias(false)));
  norm_weight = register_parameter("norm_weight", at::ones({dv_all}));
  norm_bias = register_parameter("norm_bias", at::zeros({dv_all}));
  if (f > 0) {
    ffn_norm = register_module("ffn_norm", nn::LayerNorm(nn::LayerNormOptions({d})));
    ffn_in = register_module("ffn_in", nn::Linear(nn::LinearOptions(d, f).bias(true)));
    ffn_out = register_module("ffn_out", nn::Linear(nn::LinearOptions(f, d).bias(true)));
  }
  log_gamma = register_buffer("log_gamma", retention_log_gamma(config_.n_heads));  // float64 until .to()
}

void RetNetBlock::check_sequence_input(const torch::Tensor& x) const {
  const std::string want = "[B, L, d_model=" + std::to_string(config_.d_model) + "]";
  if (!x.defined()) fail("x is undefined; expected " + want);
  if (x.dim() != 3 || x.size(2) != config_.d_model) fail("x must be " + want + ", got " + shape_string(x.sizes()));
  if (x.scalar_type() != norm_weight.scalar_type()) {
    fail(std::string("x is ") + c10::toString(x.scalar_type()) + " but the block's parameters are " +
         c10::toString(norm_weight.scalar_type()) + "; convert one with .to()");
  }
}

void RetNetBlock::check_step_input(const torch::Tensor& x_t, const RecurrentState& state) const {
  if (!x_t.defined() || x_t.dim() != 2 || x_t.size(1) != config_.d_model) {
    fail("step: x_t must be [B, d_model=" + std::to_string(config_.d_model) + "], got " + shape_or_undefined(x_t));
  }
  if (x_t.scalar_type() != norm_weight.scalar_type()) {
    fail(std::string("step: x_t is ") + c10::toString(x_t.scalar_type()) + " but the block's parameters are " +
         c10::toString(norm_weight.scalar_type()));
  }
  if (state.tensors.size() != 2) fail("step: state must hold {S, pos} (2 tensors), got " + std::to_string(state.tensors.size()));
  const std::vector<std::int64_t> want = {x_t.size(0), config_.n_heads, config_.key_dim(), config_.value_dim()};
  const at::Tensor &s = state.tensors[0], &pos = state.tensors[1];
  if (!s.defined() || s.sizes() != at::IntArrayRef(want)) {
    fail("step: S must be [B, n_heads, d_model / n_heads, value_dim] = " + shape_string(want) + ", got " +
         shape_or_undefined(s));
  }
  if (!pos.defined() || pos.dim() != 1 || pos.size(0) != x_t.size(0) || pos.scalar_type() != at::kLong) {
    fail("step: pos must be an int64 tensor [B] = [" + std::to_string(x_t.size(0)) + "], got " + shape_or_undefined(pos));
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> RetNetBlock::project(const at::Tensor& h, const at::Tensor& positions) {
  const std::int64_t heads = config_.n_heads, dk = config_.key_dim(), dv = config_.value_dim();
  auto split = [&](const at::Tensor& t, std::int64_t width) {
    std::vector<std::int64_t> shape(t.sizes().begin(), t.sizes().end() - 1);
    shape.push_back(heads);
    shape.push_back(width);
    return t.reshape(shape);
  };
  const at::Tensor q = rotate(split(q_proj(h), dk), positions);
  const at::Tensor k = rotate(split(k_proj(h), dk), positions) / std::sqrt(static_cast<double>(dk));
  return {q, k, split(v_proj(h), dv)};
}

at::Tensor RetNetBlock::finish(const at::Tensor& h, const at::Tensor& o) {
  const std::int64_t batch = o.size(0), len = o.size(2);
  // GroupNorm with one group per head: each head's dv values per position. [B, H, L, dv] -> [B, L, H dv]
  const at::Tensor normed = at::layer_norm(o, {config_.value_dim()}, {}, {}, kGroupNormEps)
                                .transpose(1, 2)
                                .reshape({batch, len, -1});
  const at::Tensor y = normed * norm_weight + norm_bias;
  const at::Tensor a = o_proj(at::silu(g_proj(h)) * y);  // swish gate
  if (!ffn_in) return a;
  return a + ffn_out(at::gelu(ffn_in(ffn_norm(h + a))));
}

torch::Tensor RetNetBlock::forward(const torch::Tensor& x) { return run_sequence(x, false).first; }

std::pair<torch::Tensor, RecurrentState> RetNetBlock::forward_with_state(const torch::Tensor& x) {
  return run_sequence(x, true);
}

std::pair<torch::Tensor, RecurrentState> RetNetBlock::run_sequence(const torch::Tensor& x, bool keep_state) {
  check_sequence_input(x);
  const std::int64_t batch = x.size(0), len = x.size(1);
  if (len == 0) return {at::zeros_like(x), keep_state ? initial_state(batch) : RecurrentState{}};
  const at::Tensor positions = at::arange(len, x.options().dtype(at::kLong));
  auto [q, k, v] = project(x, positions);  // [B, L, H, dk | dv]
  q = q.transpose(1, 2), k = k.transpose(1, 2), v = v.transpose(1, 2);  // [B, H, L, dk | dv]
  const at::Tensor lg = log_gamma.to(x.scalar_type());
  const Retained r = config_.form == Form::Parallel    ? retention_parallel(q, k, v, lg, {})
                     : config_.form == Form::Recurrent ? retention_recurrent(q, k, v, lg, {})
                                                        : retention_chunkwise(q, k, v, lg, {}, config_.chunk_size);
  RecurrentState state;
  if (keep_state) state.tensors = {r.second, at::full({batch}, len, x.options().dtype(at::kLong))};
  return {finish(x, r.first), state};
}

RecurrentState RetNetBlock::initial_state(std::int64_t batch) {
  if (batch < 0) fail("initial_state: batch must be >= 0, got " + std::to_string(batch));
  const auto opts = norm_weight.options().requires_grad(false);
  return {{at::zeros({batch, config_.n_heads, config_.key_dim(), config_.value_dim()}, opts),
           at::zeros({batch}, opts.dtype(at::kLong))}};
}

std::pair<torch::Tensor, RecurrentState> RetNetBlock::step(const torch::Tensor& x_t, const RecurrentState& state) {
  check_step_input(x_t, state);
  const at::Tensor& pos = state.tensors[1];
  auto [q, k, v] = project(x_t, pos);  // [B, H, dk | dv]
  const Retained r = retention_recurrent(q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2),
                                         log_gamma.to(x_t.scalar_type()), state.tensors[0]);
  const at::Tensor y = finish(x_t.unsqueeze(1), r.first).squeeze(1);
  return {y, RecurrentState{{r.second, pos + 1}}};
}

// ---------------------------------------------------------------------------------------------
// Plugin manifest
// ---------------------------------------------------------------------------------------------

RetNetConfig config_from_params(const Params& p, const ModelDims& dims) {
  RetNetConfig c;
  c.d_model = dims.d_model;
  c.n_heads = p.integer("n_heads");
  c.value_factor = p.integer("value_factor");
  c.ffn_ratio = p.integer("ffn_ratio");
  const std::string form = p.text("form");
  c.form = form == "parallel" ? Form::Parallel : form == "recurrent" ? Form::Recurrent : Form::Chunkwise;
  c.chunk_size = p.integer("chunk_size");
  c.validate();
  return c;
}

Manifest make_manifest() {
  Manifest m;
  m.kind = PluginKind::Backbone;
  m.name = "retnet";
  m.version = "1.0.0";
  m.description = "RetNet layer: multi-scale retention (gamma_h = 1 - 2^(-5-h)), group norm, swish gate, GELU FFN";
  m.params = {
      int_param("n_heads", 4, "retention heads H; d_model must be divisible by H", 1, 64),
      int_param("value_factor", 2, "value width per head = value_factor * d_model / H", 1, 8),
      int_param("ffn_ratio", 2, "FFN hidden width = ffn_ratio * d_model; 0 = retention only", 0, 16),
      choice_param("form", "chunkwise", {"parallel", "chunkwise", "recurrent"},
                   "how a sequence is computed: parallel O(L^2), chunkwise O(L chunk_size), recurrent per position"),
      int_param("chunk_size", 64, "positions per chunk of the chunkwise form", 1, 65536),
  };
  m.check = heads_divide_d_model("retnet");
  m.make_backbone = [](const Params& params, const ModelDims& dims) -> std::shared_ptr<Backbone> {
    return std::make_shared<RetNetBlock>(config_from_params(params, dims));
  };
  return m;
}

}  // namespace mhd::retnet
