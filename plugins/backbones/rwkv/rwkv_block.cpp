#include "rwkv_block.h"

#include <cmath>
#include <sstream>
#include <string>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "mhd/shapes.h"
#include "wkv.h"

namespace mhd::rwkv {

namespace {

[[noreturn]] void fail(const std::string& message) { throw Error("rwkv: " + message); }

std::string num(double x) {
  std::ostringstream out;
  out << x;
  return out.str();
}

std::string shape_or_undefined(const at::Tensor& t) { return t.defined() ? shape_string(t.sizes()) : "undefined"; }

// m x + (1 - m) s, the token-shift interpolation.
at::Tensor mix(const at::Tensor& x, const at::Tensor& shifted, const at::Tensor& m) { return shifted + m * (x - shifted); }

// x: [B, L, D] -> [B, L, D] with row t = x_{t-1} and row 0 = zeros.
at::Tensor shift_sequence(const at::Tensor& x) {
  return at::constant_pad_nd(x.narrow(1, 0, x.size(1) - 1), {0, 0, 1, 0}, 0);
}

}  // namespace

void RwkvConfig::validate() const {
  if (d_model < 1) fail("d_model must be >= 1, got " + std::to_string(d_model));
  if (ffn_ratio < 1) fail("ffn_ratio must be >= 1, got " + std::to_string(ffn_ratio));
  if (decay_rank < 1) fail("decay_rank must be >= 1, got " + std::to_string(decay_rank));
  if (!(init_depth >= 0.0 && init_depth <= 1.0)) fail("init_depth must be in [0, 1], got " + num(init_depth));
}

RwkvBlock::RwkvBlock(const RwkvConfig& config) : config_(config) {
  config_.validate();
  const std::int64_t d = config_.d_model, f = config_.ffn_ratio * d;
  namespace nn = torch::nn;
  auto vec = [&](const char* name) { return register_parameter(name, at::empty({d})); };
  mix_k = vec("mix_k");
  mix_v = vec("mix_v");
  mix_r = vec("mix_r");
  time_decay = vec("time_decay");
  time_first = vec("time_first");
  if (config_.decay == Decay::Data) {
    mix_w = vec("mix_w");
    decay_a = register_parameter("decay_a", at::empty({d, config_.decay_rank}));
    decay_b = register_parameter("decay_b", at::empty({config_.decay_rank, d}));
  }
  key = register_module("key", nn::Linear(nn::LinearOptions(d, d).bias(false)));
  value = register_module("value", nn::Linear(nn::LinearOptions(d, d).bias(false)));
  receptance = register_module("receptance", nn::Linear(nn::LinearOptions(d, d).bias(false)));
  output = register_module("output", nn::Linear(nn::LinearOptions(d, d).bias(false)));
  ln2 = register_module("ln2", nn::LayerNorm(nn::LayerNormOptions({d})));
  ffn_mix_k = vec("ffn_mix_k");
  ffn_mix_r = vec("ffn_mix_r");
  ffn_key = register_module("ffn_key", nn::Linear(nn::LinearOptions(d, f).bias(false)));
  ffn_value = register_module("ffn_value", nn::Linear(nn::LinearOptions(f, d).bias(false)));
  ffn_receptance = register_module("ffn_receptance", nn::Linear(nn::LinearOptions(d, d).bias(false)));
  init_parameters();
}

// The paper's code's initialisation of decay and mixing (rwkv_block.h).
void RwkvBlock::init_parameters() {
  torch::NoGradGuard no_grad;
  const std::int64_t d = config_.d_model;
  const double r0 = config_.init_depth, r1 = 1.0 - r0;
  const at::Tensor i = at::arange(d, at::kDouble);
  const at::Tensor frac = i / static_cast<double>(d);                       // i / D
  const at::Tensor ramp = d > 1 ? i / static_cast<double>(d - 1) : at::zeros({d}, at::kDouble);  // i / (D - 1)
  time_decay.copy_(-5.0 + 8.0 * at::pow(ramp, 0.7 + 1.3 * r0));
  time_first.copy_(std::log(0.3) + 0.5 * (at::remainder(i + 1, 3) - 1));
  mix_k.copy_(at::pow(frac, r1));
  mix_v.copy_(at::pow(frac, r1) + 0.3 * r0);
  mix_r.copy_(at::pow(frac, 0.5 * r1));
  ffn_mix_k.copy_(at::pow(frac, r1));
  ffn_mix_r.copy_(at::pow(frac, r1));
  if (config_.decay == Decay::Data) {
    mix_w.copy_(at::pow(frac, r1));
    decay_a.uniform_(-1e-2, 1e-2);
    decay_b.zero_();  // w_t = exp(time_decay) at initialisation: the RWKV-4 decay
  }
}

at::ScalarType RwkvBlock::state_dtype() const {
  return time_decay.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void RwkvBlock::check_sequence_input(const torch::Tensor& x) const {
  const std::string want = "[B, L, d_model=" + std::to_string(config_.d_model) + "]";
  if (!x.defined()) fail("x is undefined; expected " + want);
  if (x.dim() != 3 || x.size(2) != config_.d_model) fail("x must be " + want + ", got " + shape_string(x.sizes()));
  if (x.scalar_type() != time_decay.scalar_type()) {
    fail(std::string("x is ") + c10::toString(x.scalar_type()) + " but the block's parameters are " +
         c10::toString(time_decay.scalar_type()) + "; convert one with .to()");
  }
}

void RwkvBlock::check_step_input(const torch::Tensor& x_t, const RecurrentState& state) const {
  if (!x_t.defined() || x_t.dim() != 2 || x_t.size(1) != config_.d_model) {
    fail("step: x_t must be [B, d_model=" + std::to_string(config_.d_model) + "], got " + shape_or_undefined(x_t));
  }
  if (x_t.scalar_type() != time_decay.scalar_type()) {
    fail(std::string("step: x_t is ") + c10::toString(x_t.scalar_type()) + " but the block's parameters are " +
         c10::toString(time_decay.scalar_type()));
  }
  if (state.tensors.size() != 5) {
    fail("step: state must hold {att_shift, aa, bb, pp, ffn_shift} (5 tensors), got " +
         std::to_string(state.tensors.size()));
  }
  const char* names[] = {"att_shift", "aa", "bb", "pp", "ffn_shift"};
  for (int i = 0; i < 5; ++i) {
    const at::Tensor& t = state.tensors[i];
    if (!t.defined() || t.dim() != 2 || t.size(0) != x_t.size(0) || t.size(1) != config_.d_model) {
      fail(std::string("step: ") + names[i] + " must be [B, d_model] = [" + std::to_string(x_t.size(0)) + ", " +
           std::to_string(config_.d_model) + "], got " + shape_or_undefined(t));
    }
  }
}

at::Tensor RwkvBlock::decay_rate(const at::Tensor& h, const at::Tensor& shifted) const {
  if (config_.decay == Decay::Static) return at::exp(time_decay);
  return at::exp(time_decay + at::matmul(at::tanh(at::matmul(mix(h, shifted, mix_w), decay_a)), decay_b));
}

at::Tensor RwkvBlock::channel_mix(const at::Tensor& n, const at::Tensor& shifted) {
  const at::Tensor k = at::relu(ffn_key(mix(n, shifted, ffn_mix_k)));
  return at::sigmoid(ffn_receptance(mix(n, shifted, ffn_mix_r))) * ffn_value(k * k);
}

torch::Tensor RwkvBlock::forward(const torch::Tensor& x) { return run_sequence(x, false).first; }

std::pair<torch::Tensor, RecurrentState> RwkvBlock::forward_with_state(const torch::Tensor& x) {
  return run_sequence(x, true);
}

std::pair<torch::Tensor, RecurrentState> RwkvBlock::run_sequence(const torch::Tensor& x, bool keep_state) {
  check_sequence_input(x);
  const std::int64_t batch = x.size(0), len = x.size(1);
  if (len == 0) return {at::zeros_like(x), keep_state ? initial_state(batch) : RecurrentState{}};
  const at::Tensor s = shift_sequence(x);  // [B, L, D]
  const at::Tensor k = key(mix(x, s, mix_k));
  const at::Tensor v = value(mix(x, s, mix_v));
  const at::Tensor r = at::sigmoid(receptance(mix(x, s, mix_r)));
  const at::Tensor w = decay_rate(x, s).expand({batch, len, config_.d_model});
  const WkvResult wkv_out = wkv(k, v, w, time_first);  // fused, float32 sums
  const at::Tensor a = output(r * wkv_out.y.to(x.scalar_type()));
  const at::Tensor n = ln2(x + a);
  const at::Tensor y = a + channel_mix(n, shift_sequence(n));
  RecurrentState state;
  if (keep_state) {
    state.tensors = {x.select(1, len - 1), wkv_out.aa, wkv_out.bb, wkv_out.pp, n.select(1, len - 1)};
  }
  return {y, state};
}

RecurrentState RwkvBlock::initial_state(std::int64_t batch) {
  if (batch < 0) fail("initial_state: batch must be >= 0, got " + std::to_string(batch));
  const std::int64_t d = config_.d_model;
  const auto opts = time_decay.options().requires_grad(false);
  const auto acc = opts.dtype(state_dtype());
  return {{at::zeros({batch, d}, opts), at::zeros({batch, d}, acc), at::zeros({batch, d}, acc),
           at::full({batch, d}, kEmptyExponent, acc), at::zeros({batch, d}, opts)}};
}

// The same as one position of run_sequence, in LibTorch ops on [B, D] (differentiable; the WKV
// update in the scaled form of wkv.h, in the state's dtype).
std::pair<torch::Tensor, RecurrentState> RwkvBlock::step(const torch::Tensor& x_t, const RecurrentState& state) {
  check_step_input(x_t, state);
  const at::Tensor& s = state.tensors[0];
  const at::Tensor &aa = state.tensors[1], &bb = state.tensors[2], &pp = state.tensors[3];
  const at::ScalarType acc = state_dtype();
  const at::Tensor k = key(mix(x_t, s, mix_k)).to(acc);
  const at::Tensor v = value(mix(x_t, s, mix_v)).to(acc);
  const at::Tensor r = at::sigmoid(receptance(mix(x_t, s, mix_r)));
  const at::Tensor w = decay_rate(x_t, s).to(acc);
  const at::Tensor u = time_first.to(acc);
  // y_t = (a_{t-1} + e^{u + k} v) / (b_{t-1} + e^{u + k})
  const at::Tensor ww = u + k;
  // The shifts p and p2 are constants to autograd: they cancel in y, and the state's pp carries no
  // gradient (wkv.cpp explains why that is exact), so aa and bb must not depend on them either.
  const at::Tensor p = at::maximum(pp, ww).detach();
  const at::Tensor e1 = at::exp(pp - p), e2 = at::exp(ww - p);
  const at::Tensor wkv_t = (e1 * aa + e2 * v) / (e1 * bb + e2);
  // a_t = e^{-w} a_{t-1} + e^{k} v, b_t alike
  const at::Tensor decayed = pp - w;
  const at::Tensor p2 = at::maximum(decayed, k).detach();
  const at::Tensor f1 = at::exp(decayed - p2), f2 = at::exp(k - p2);
  const at::Tensor a = output(r * wkv_t.to(x_t.scalar_type()));
  const at::Tensor n = ln2(x_t + a);
  const at::Tensor y = a + channel_mix(n, state.tensors[4]);
  return {y, RecurrentState{{x_t, f1 * aa + f2 * v, f1 * bb + f2, p2, n}}};
}

// ---------------------------------------------------------------------------------------------
// Plugin manifest
// ---------------------------------------------------------------------------------------------

RwkvConfig config_from_params(const Params& p, const ModelDims& dims) {
  RwkvConfig c;
  c.d_model = dims.d_model;
  c.ffn_ratio = p.integer("ffn_ratio");
  c.decay = p.text("decay") == "data" ? Decay::Data : Decay::Static;
  c.decay_rank = p.integer("decay_rank");
  c.init_depth = p.real("init_depth");
  c.validate();
  return c;
}

Manifest make_manifest() {
  Manifest m;
  m.kind = PluginKind::Backbone;
  m.name = "rwkv";
  m.version = "1.0.0";
  m.description = "RWKV-4 layer: time-mix (fused CPU WKV kernel, float32 running-max form) and channel-mix";
  m.params = {
      int_param("ffn_ratio", 4, "channel-mix hidden width = ffn_ratio * d_model", 1, 16),
      choice_param("decay", "static", {"static", "data"},
                   "WKV decay: static per channel (RWKV-4), or data-dependent per position through a rank-R "
                   "projection of the token-shifted input (in the spirit of RWKV-6)"),
      int_param("decay_rank", 16, "rank R of the data-dependent decay's projection (decay = data)", 1, 1024),
      float_param("init_depth", 0.5, "relative depth r0 in [0, 1] for the paper's initialisation of decay and mixing",
                  0.0, 1.0),
  };
  m.make_backbone = [](const Params& params, const ModelDims& dims) -> std::shared_ptr<Backbone> {
    return std::make_shared<RwkvBlock>(config_from_params(params, dims));
  };
  return m;
}

}  // namespace mhd::rwkv
