#include "hybrid_block.h"

#include <string>

#include <ATen/ATen.h>

#include "mhd/error.h"
#include "mhd/shapes.h"

namespace mhd::hybrid {

namespace {

[[noreturn]] void fail(const std::string& message) { throw Error("hybrid: " + message); }

}  // namespace

void HybridConfig::validate() const {
  if (d_model < 1) fail("d_model must be >= 1, got " + std::to_string(d_model));
  if (attention_every < 1) fail("attention_every must be >= 1, got " + std::to_string(attention_every));
  if (local && window_size < 1) fail("window_size must be >= 1, got " + std::to_string(window_size));
  if (n_heads < 1 || d_model % n_heads != 0) {
    fail("n_heads (" + std::to_string(n_heads) + ") must be >= 1 and divide d_model (" + std::to_string(d_model) + ")");
  }
}

HybridBlock::HybridBlock(const HybridConfig& config) : config_(config) {
  config_.validate();
  mamba::MambaConfig mc;
  mc.d_model = config_.d_model;
  mc.d_state = config_.d_state;
  mc.d_conv = config_.d_conv;
  mc.expand = config_.expand;
  for (std::int64_t i = 0; i + 1 < config_.attention_every; ++i) {
    mambas.push_back(register_module("mamba" + std::to_string(i), std::make_shared<mamba::MambaBlock>(mc)));
  }
  attention = register_module(
      "attention", std::make_shared<WindowAttention>(WindowAttentionConfig{
                       config_.d_model, config_.n_heads, config_.local ? config_.window_size : 0}));
  for (std::int64_t i = 0; i < config_.attention_every; ++i) {
    norms.push_back(register_module("norm" + std::to_string(i),
                                    torch::nn::LayerNorm(torch::nn::LayerNormOptions({config_.d_model}))));
  }
}

void HybridBlock::check_sequence_input(const torch::Tensor& x) const {
  const std::string want = "[B, L, d_model=" + std::to_string(config_.d_model) + "]";
  if (!x.defined()) fail("x is undefined; expected " + want);
  if (x.dim() != 3 || x.size(2) != config_.d_model) fail("x must be " + want + ", got " + shape_string(x.sizes()));
  const auto dtype = attention->q_proj->weight.scalar_type();
  if (x.scalar_type() != dtype) {
    fail(std::string("x is ") + c10::toString(x.scalar_type()) + " but the block's parameters are " +
         c10::toString(dtype) + "; convert one with .to()");
  }
}

torch::Tensor HybridBlock::forward(const torch::Tensor& x) { return run_sequence(x, false).first; }

std::pair<torch::Tensor, RecurrentState> HybridBlock::forward_with_state(const torch::Tensor& x) {
  return run_sequence(x, true);
}

std::pair<torch::Tensor, RecurrentState> HybridBlock::run_sequence(const torch::Tensor& x, bool keep_state) {
  check_sequence_input(x);
  if (x.size(1) == 0) return {at::zeros_like(x), keep_state ? initial_state(x.size(0)) : RecurrentState{}};
  at::Tensor h = x;
  RecurrentState state;
  for (std::size_t i = 0; i < mambas.size(); ++i) {
    auto [update, s] = mambas[i]->forward_with_state(norms[i](h));
    h = h + update;
    if (keep_state) state.tensors.insert(state.tensors.end(), s.tensors.begin(), s.tensors.end());
  }
  auto [update, cache] = attention->sequence(norms.back()(h), keep_state);
  h = h + update;
  if (keep_state) state.tensors.insert(state.tensors.end(), cache.begin(), cache.end());
  return {h - x, state};
}

RecurrentState HybridBlock::initial_state(std::int64_t batch) {
  if (batch < 0) fail("initial_state: batch must be >= 0, got " + std::to_string(batch));
  RecurrentState state;
  for (auto& m : mambas) {
    const RecurrentState s = m->initial_state(batch);
    state.tensors.insert(state.tensors.end(), s.tensors.begin(), s.tensors.end());
  }
  const std::vector<at::Tensor> cache = attention->empty_cache(batch);
  state.tensors.insert(state.tensors.end(), cache.begin(), cache.end());
  return state;
}

std::pair<torch::Tensor, RecurrentState> HybridBlock::step(const torch::Tensor& x_t, const RecurrentState& state) {
  if (!x_t.defined() || x_t.dim() != 2 || x_t.size(1) != config_.d_model) {
    fail("step: x_t must be [B, d_model=" + std::to_string(config_.d_model) + "], got " +
         (x_t.defined() ? shape_string(x_t.sizes()) : std::string("undefined")));
  }
  if (state.tensors.size() != state_size()) {
    fail("step: state must hold " + std::to_string(state_size()) + " tensors (2 per Mamba sublayer, 3 for attention), got " +
         std::to_string(state.tensors.size()));
  }
  at::Tensor h = x_t;
  RecurrentState next;
  for (std::size_t i = 0; i < mambas.size(); ++i) {
    const RecurrentState s{{state.tensors[2 * i], state.tensors[2 * i + 1]}};
    auto [update, s_next] = mambas[i]->step(norms[i](h), s);  // checks its own state
    h = h + update;
    next.tensors.insert(next.tensors.end(), s_next.tensors.begin(), s_next.tensors.end());
  }
  const std::size_t a = 2 * mambas.size();
  const std::vector<at::Tensor> cache(state.tensors.begin() + a, state.tensors.end());
  attention->check_cache(cache, x_t.size(0));
  auto [update, cache_next] = attention->step(norms.back()(h), cache);
  h = h + update;
  next.tensors.insert(next.tensors.end(), cache_next.begin(), cache_next.end());
  return {h - x_t, next};
}

// ---------------------------------------------------------------------------------------------
// Plugin manifest
// ---------------------------------------------------------------------------------------------

HybridConfig config_from_params(const Params& p, const ModelDims& dims) {
  HybridConfig c;
  c.d_model = dims.d_model;
  c.attention_every = p.integer("attention_every");
  c.local = p.text("attention_type") == "local";
  c.window_size = p.integer("window_size");
  c.n_heads = p.integer("n_heads");
  c.d_state = p.integer("d_state");
  c.d_conv = p.integer("d_conv");
  c.expand = p.integer("expand");
  c.validate();
  return c;
}

Manifest make_manifest() {
  Manifest m;
  m.kind = PluginKind::Backbone;
  m.name = "hybrid";
  m.version = "1.0.0";
  m.description = "Mamba blocks interleaved with attention: attention_every - 1 Mamba sublayers, then one local or "
                  "global attention sublayer";
  m.params = {
      int_param("attention_every", 4,
                "sublayers per layer, the last one attention: 4 = 3 Mamba : 1 attention, 8 = Jamba's 7 : 1, 1 = "
                "attention only",
                1, 64),
      choice_param("attention_type", "local", {"local", "global"},
                   "local: a sliding window of window_size keys (bounded decode cache); global: every earlier position"),
      int_param("window_size", 256, "keys a local attention position sees, itself included", 1, 1 << 20),
      int_param("n_heads", 4, "attention heads; d_model must be divisible by n_heads", 1, 64),
      int_param("d_state", 16, "Mamba sublayers' SSM state size N", 1, 256),
      int_param("d_conv", 4, "Mamba sublayers' causal convolution width", 1, 16),
      int_param("expand", 2, "Mamba sublayers' inner width = expand * d_model", 1, 8),
  };
  m.check = heads_divide_d_model("hybrid");
  m.make_backbone = [](const Params& params, const ModelDims& dims) -> std::shared_ptr<Backbone> {
    return std::make_shared<HybridBlock>(config_from_params(params, dims));
  };
  return m;
}

}  // namespace mhd::hybrid
