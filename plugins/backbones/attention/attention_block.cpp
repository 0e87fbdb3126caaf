#include "attention_block.h"

#include <cmath>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "mhd/shapes.h"

namespace mhd::attention {

namespace {

[[noreturn]] void fail(const std::string& message) { throw Error("attention: " + message); }

std::string num(double x) {
  std::ostringstream out;
  out << x;
  return out.str();
}

std::string shape_or_undefined(const at::Tensor& t) {
  return t.defined() ? mhd::shape_string(t.sizes()) : std::string("undefined");
}

}  // namespace

void AttentionConfig::validate() const {
  if (d_model < 1) fail("d_model must be >= 1, got " + std::to_string(d_model));
  if (n_heads < 1) fail("n_heads must be >= 1, got " + std::to_string(n_heads));
  if (d_model % n_heads != 0) {
    fail("d_model (" + std::to_string(d_model) + ") must be divisible by n_heads (" + std::to_string(n_heads) + ")");
  }
  if (mlp_ratio < 0) fail("mlp_ratio must be >= 0 (0 = no MLP), got " + std::to_string(mlp_ratio));
  if (!(rope_base > 0) || !std::isfinite(rope_base)) fail("rope_base must be a positive number, got " + num(rope_base));
}

AttentionBlock::AttentionBlock(const AttentionConfig& config) : config_(config) {
  config_.validate();
  const std::int64_t d = config_.d_model, m = config_.mlp_ratio * d;
  namespace nn = torch::nn;
  q_proj = register_module("q_proj", nn::Linear(nn::LinearOptions(d, d).bias(false)));
  k_proj = register_module("k_proj", nn::Linear(nn::LinearOptions(d, d).bias(false)));
  v_proj = register_module("v_proj", nn::Linear(nn::LinearOptions(d, d).bias(false)));
  o_proj = register_module("o_proj", nn::Linear(nn::LinearOptions(d, d).bias(false)));
  if (m > 0) {
    mlp_norm = register_module("mlp_norm", nn::LayerNorm(nn::LayerNormOptions({d})));
    mlp_in = register_module("mlp_in", nn::Linear(nn::LinearOptions(d, m).bias(true)));
    mlp_out = register_module("mlp_out", nn::Linear(nn::LinearOptions(m, d).bias(true)));
  }
}

void AttentionBlock::check_sequence_input(const torch::Tensor& x) const {
  const std::string want = "[B, L, d_model=" + std::to_string(config_.d_model) + "]";
  if (!x.defined()) fail("x is undefined; expected " + want);
  if (x.dim() != 3 || x.size(2) != config_.d_model) fail("x must be " + want + ", got " + mhd::shape_string(x.sizes()));
  const auto dtype = q_proj->weight.scalar_type();
  if (x.scalar_type() != dtype) {
    fail(std::string("x is ") + c10::toString(x.scalar_type()) + " but the block's parameters are " +
         c10::toString(dtype) + "; convert one with .to()");
  }
}

void AttentionBlock::check_step_input(const torch::Tensor& x_t, const RecurrentState& state) const {
  const auto dtype = q_proj->weight.scalar_type();
  if (!x_t.defined() || x_t.dim() != 2 || x_t.size(1) != config_.d_model) {
    fail("step: x_t must be [B, d_model=" + std::to_string(config_.d_model) + "], got " + shape_or_undefined(x_t));
  }
  if (x_t.scalar_type() != dtype) {
    fail(std::string("step: x_t is ") + c10::toString(x_t.scalar_type()) + " but the block's parameters are " +
         c10::toString(dtype));
  }
  if (state.tensors.size() != 3) {
    fail("step: state must hold {k, v, pos} (3 tensors), got " + std::to_string(state.tensors.size()));
  }
  const at::Tensor& k = state.tensors[0];
  const at::Tensor& v = state.tensors[1];
  const at::Tensor& pos = state.tensors[2];
  const std::int64_t batch = x_t.size(0), h = config_.n_heads, dh = config_.head_dim();
  auto check_cache = [&](const at::Tensor& c, const char* name) {
    if (!c.defined() || c.dim() != 4 || c.size(0) != batch || c.size(1) != h || c.size(3) != dh) {
      fail(std::string("step: ") + name + " cache must be [B, n_heads, T, head_dim] = [" + std::to_string(batch) +
           ", " + std::to_string(h) + ", T, " + std::to_string(dh) + "], got " + shape_or_undefined(c));
    }
    if (c.scalar_type() != dtype) {
      fail(std::string("step: ") + name + " cache is " + c10::toString(c.scalar_type()) +
           " but the block's parameters are " + c10::toString(dtype));
    }
  };
  check_cache(k, "k");
  check_cache(v, "v");
  if (k.size(2) != v.size(2)) {
    fail("step: k and v caches hold different lengths: " + mhd::shape_string(k.sizes()) + " vs " +
         mhd::shape_string(v.sizes()));
  }
  if (!pos.defined() || pos.dim() != 1 || pos.size(0) != batch || pos.scalar_type() != at::kLong) {
    fail("step: pos must be an int64 tensor [B] = [" + std::to_string(batch) + "], got " + shape_or_undefined(pos) +
         (pos.defined() ? std::string(" ") + c10::toString(pos.scalar_type()) : std::string()));
  }
}

// heads: [..., dh]; positions: integer tensor broadcastable to heads' leading dims once a trailing
// dimension is added. Angles are computed in float64 and then cast, so float32 stays accurate at
// large positions.
torch::Tensor AttentionBlock::rope(const torch::Tensor& heads, const torch::Tensor& positions) const {
  const std::int64_t dh = heads.size(-1), half = dh / 2;
  if (half == 0) return heads;
  const at::Tensor inv_freq =
      at::pow(config_.rope_base, at::arange(0, half, at::TensorOptions().dtype(at::kDouble).device(heads.device())) *
                                     (-2.0 / static_cast<double>(2 * half)));  // [half]
  const at::Tensor angles = positions.to(at::kDouble).unsqueeze(-1) * inv_freq;   // [..., half]
  const at::Tensor cos = at::cos(angles).to(heads.scalar_type());
  const at::Tensor sin = at::sin(angles).to(heads.scalar_type());
  const at::Tensor x1 = heads.narrow(-1, 0, half), x2 = heads.narrow(-1, half, half);
  std::vector<at::Tensor> parts = {x1 * cos - x2 * sin, x2 * cos + x1 * sin};
  if (dh > 2 * half) parts.push_back(heads.narrow(-1, 2 * half, dh - 2 * half));
  return at::cat(parts, -1);
}

torch::Tensor AttentionBlock::finish(const torch::Tensor& h, const torch::Tensor& a) {
  if (!mlp_in) return a;
  return a + mlp_out(at::gelu(mlp_in(mlp_norm(h + a))));
}

torch::Tensor AttentionBlock::forward(const torch::Tensor& x) { return run_sequence(x, false).first; }

std::pair<torch::Tensor, RecurrentState> AttentionBlock::forward_with_state(const torch::Tensor& x) {
  return run_sequence(x, true);
}

std::pair<torch::Tensor, RecurrentState> AttentionBlock::run_sequence(const torch::Tensor& x, bool keep_state) {
  check_sequence_input(x);
  const std::int64_t batch = x.size(0), len = x.size(1), h = config_.n_heads, dh = config_.head_dim();
  if (len == 0) return {at::zeros_like(x), keep_state ? initial_state(batch) : RecurrentState{}};
  // [B, L, D] -> [B, H, L, dh]
  auto heads = [&](const at::Tensor& t) { return t.view({batch, len, h, dh}).transpose(1, 2); };
  const at::Tensor positions = at::arange(len, at::TensorOptions().dtype(at::kLong).device(x.device()));  // [L]
  const at::Tensor q = rope(heads(q_proj(x)), positions);
  const at::Tensor k = rope(heads(k_proj(x)), positions);
  const at::Tensor v = heads(v_proj(x));
  const at::Tensor future =
      at::triu(at::ones({len, len}, at::TensorOptions().dtype(at::kBool).device(x.device())), 1);  // j > i
  const at::Tensor scores =
      (at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(dh))).masked_fill(future, -INFINITY);
  const at::Tensor ctx = at::matmul(at::softmax(scores, -1), v);  // [B, H, L, dh]
  const at::Tensor a = o_proj(ctx.transpose(1, 2).reshape({batch, len, config_.d_model}));
  RecurrentState state;
  if (keep_state) {
    state.tensors = {k.contiguous(), v.contiguous(),
                     at::full({batch}, len, at::TensorOptions().dtype(at::kLong).device(x.device()))};
  }
  return {finish(x, a), state};
}

RecurrentState AttentionBlock::initial_state(std::int64_t batch) {
  if (batch < 0) fail("initial_state: batch must be >= 0, got " + std::to_string(batch));
  const auto opts = q_proj->weight.options().requires_grad(false);
  const std::int64_t h = config_.n_heads, dh = config_.head_dim();
  return {{at::zeros({batch, h, 0, dh}, opts), at::zeros({batch, h, 0, dh}, opts),
           at::zeros({batch}, opts.dtype(at::kLong))}};
}

std::pair<torch::Tensor, RecurrentState> AttentionBlock::step(const torch::Tensor& x_t, const RecurrentState& state) {
  check_step_input(x_t, state);
  const std::int64_t batch = x_t.size(0), h = config_.n_heads, dh = config_.head_dim();
  const at::Tensor& pos = state.tensors[2];                       // [B]
  const at::Tensor where = pos.view({batch, 1, 1});               // broadcast over [B, H, 1]
  auto heads = [&](const at::Tensor& t) { return t.view({batch, h, 1, dh}); };
  const at::Tensor q = rope(heads(q_proj(x_t)), where);           // [B, H, 1, dh]
  const at::Tensor k = at::cat({state.tensors[0], rope(heads(k_proj(x_t)), where)}, 2);  // [B, H, T + 1, dh]
  const at::Tensor v = at::cat({state.tensors[1], heads(v_proj(x_t))}, 2);
  const at::Tensor scores = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(dh));  // [B, H, 1, T + 1]
  const at::Tensor ctx = at::matmul(at::softmax(scores, -1), v);  // [B, H, 1, dh]
  const at::Tensor a = o_proj(ctx.reshape({batch, config_.d_model}));
  return {finish(x_t, a), RecurrentState{{k, v, pos + 1}}};
}

// ---------------------------------------------------------------------------------------------
// Plugin manifest
// ---------------------------------------------------------------------------------------------

AttentionConfig config_from_params(const Params& p, const ModelDims& dims) {
  AttentionConfig c;
  c.d_model = dims.d_model;
  c.n_heads = p.integer("n_heads");
  c.mlp_ratio = p.integer("mlp_ratio");
  c.rope_base = p.real("rope_base");
  c.validate();
  return c;
}

Manifest make_manifest() {
  Manifest m;
  m.kind = PluginKind::Backbone;
  m.name = "attention";
  m.version = "1.0.0";
  m.description = "Transformer layer: causal multi-head softmax self-attention with RoPE, then a GELU MLP";
  m.params = {
      int_param("n_heads", 4, "attention heads H; d_model must be divisible by H (head width d_model / H)", 1, 64),
      int_param("mlp_ratio", 2, "MLP hidden width = mlp_ratio * d_model; 0 = attention only, no MLP", 0, 16),
      float_param("rope_base", 10000.0, "RoPE base: head pair i rotates by position * rope_base^(-2i / head_dim)",
                  1.0, 1e9),
  };
  m.check = heads_divide_d_model("attention");
  m.make_backbone = [](const Params& params, const ModelDims& dims) -> std::shared_ptr<Backbone> {
    return std::make_shared<AttentionBlock>(config_from_params(params, dims));
  };
  return m;
}

}  // namespace mhd::attention
