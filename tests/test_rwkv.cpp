// The "rwkv" backbone (plugins/backbones/rwkv): the fused WKV kernel and its hand-written backward
// against autograd of the naive recurrence in float64, its float32 running-max form where plain
// exponentials overflow, the layer (both decay modes) against a naive per-position reference written
// from its named parameters, forward and gradients, the paper's initialisation, decoding, causality,
// purity of step() and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include "backbone_checks.h"
#include "mhd/plugin.h"
#include "plugin_host/registry.h"
#include "wkv.h"

namespace {

using backbone_checks::max_abs;
using backbone_checks::max_abs_diff;

const mhd::LoadedPlugin& plugin() {
  return mhd::PluginRegistry::global().load_file(MHD_PLUGIN_RWKV, mhd::PluginKind::Backbone);
}

std::shared_ptr<mhd::Backbone> make(std::int64_t d_model, const std::string& decay, std::uint64_t seed,
                                    at::ScalarType dtype = at::kDouble, std::int64_t ffn_ratio = 2) {
  mhd::Params params = mhd::Params::defaults(plugin().manifest->params);
  params.set("decay", decay);
  params.set("decay_rank", std::int64_t{3});
  params.set("ffn_ratio", ffn_ratio);
  mhd::ModelDims dims;
  dims.d_model = d_model;
  at::manual_seed(seed);
  auto block = mhd::PluginRegistry::global().make<mhd::Backbone>("rwkv", params, dims);
  block->to(dtype);
  // decay_b starts at zero (the static decay); make the data-dependent path count, and the LayerNorm
  // affine non-trivial.
  torch::NoGradGuard no_grad;
  for (auto& p : block->named_parameters()) {
    if (p.key() == "decay_b" || p.key().rfind("ln2.", 0) == 0)
      p.value().add_(at::randn(p.value().sizes(), p.value().options()) * 0.3);
  }
  return block;
}

struct Naive {
  at::Tensor y, a, b;  // y: [B, L, D]; a, b: [B, D] after the last position
};

// The WKV recurrence as defined (wkv.h), with plain exponentials: float64 only.
Naive naive_wkv(const at::Tensor& k, const at::Tensor& v, const at::Tensor& w, const at::Tensor& u) {
  at::Tensor a = at::zeros({k.size(0), k.size(2)}, k.options()), b = at::zeros_like(a);
  std::vector<at::Tensor> ys;
  for (std::int64_t t = 0; t < k.size(1); ++t) {
    const at::Tensor kt = k.select(1, t), vt = v.select(1, t), wt = w.select(1, t);
    const at::Tensor bonus = at::exp(u + kt);
    ys.push_back((a + bonus * vt) / (b + bonus));
    a = at::exp(-wt) * a + at::exp(kt) * vt;
    b = at::exp(-wt) * b + at::exp(kt);
  }
  return {at::stack(ys, 1), a, b};
}

struct WkvInputs {
  at::Tensor k, v, w, u;
};

WkvInputs wkv_inputs(std::int64_t batch, std::int64_t len, std::int64_t dim, bool data_dependent, double k_shift,
                     at::ScalarType dtype = at::kDouble) {
  const auto opts = at::TensorOptions().dtype(dtype);
  WkvInputs in;
  in.k = (at::randn({batch, len, dim}, opts) + k_shift).requires_grad_(true);
  in.v = at::randn({batch, len, dim}, opts).requires_grad_(true);
  in.w = (data_dependent ? at::exp(at::randn({batch, len, dim}, opts) - 1.0)
                         : at::exp(at::randn({dim}, opts) - 1.0).expand({batch, len, dim}).contiguous())
             .requires_grad_(true);
  in.u = (at::randn({dim}, opts) * 0.5).requires_grad_(true);
  return in;
}

TEST(WkvKernel, ForwardAndBackwardEqualAutogradOfTheNaiveRecurrence) {
  // D = 37: two full blocks of 16 channels and a partial one; L = 1 and a longer sequence.
  for (const bool data_dependent : {false, true}) {
    for (const std::int64_t len : {1, 13}) {
      at::manual_seed(1);
      const WkvInputs in = wkv_inputs(3, len, 37, data_dependent, 0.0);
      const at::Tensor wy = at::randn({3, len, 37}, at::kDouble), wa = at::randn({3, 37}, at::kDouble),
                       wb = at::randn({3, 37}, at::kDouble);
      const mhd::rwkv::WkvResult r = mhd::rwkv::wkv(in.k, in.v, in.w, in.u);
      const Naive n = naive_wkv(in.k, in.v, in.w, in.u);
      const at::Tensor scale = at::exp(r.pp);
      EXPECT_LT(max_abs_diff(r.y, n.y), 1e-12);
      EXPECT_LT(max_abs_diff(r.aa * scale, n.a), 1e-10 * (1 + max_abs(n.a)));
      EXPECT_LT(max_abs_diff(r.bb * scale, n.b), 1e-10 * (1 + max_abs(n.b)));
      // The final state enters the loss as (aa e^pp, bb e^pp), the quantities it stands for.
      const at::Tensor loss = (r.y * wy).sum() + (r.aa * scale * wa).sum() + (r.bb * scale * wb).sum();
      const at::Tensor loss_ref = (n.y * wy).sum() + (n.a * wa).sum() + (n.b * wb).sum();
      const std::vector<at::Tensor> inputs = {in.k, in.v, in.w, in.u};
      const auto g = torch::autograd::grad({loss}, inputs);
      const auto g_ref = torch::autograd::grad({loss_ref}, inputs);
      const char* names[] = {"k", "v", "w", "u"};
      for (int i = 0; i < 4; ++i) {
        EXPECT_LT(max_abs_diff(g[i], g_ref[i]), 1e-10 * (1 + max_abs(g_ref[i])))
            << "d" << names[i] << " data_dependent=" << data_dependent << " L=" << len;
      }
    }
  }
}

// k around 60 to 100: e^k overflows float32 (and e^(k t) would overflow anything), the running-max
// form does not; float32 results match the float64 naive recurrence to float32 rounding.
TEST(WkvKernel, Float32RunningMaxFormDoesNotOverflow) {
  at::manual_seed(2);
  const WkvInputs in = wkv_inputs(2, 50, 20, true, 80.0);
  const Naive n = naive_wkv(in.k, in.v, in.w, in.u);
  const WkvInputs f{in.k.detach().to(at::kFloat).requires_grad_(true), in.v.detach().to(at::kFloat).requires_grad_(true),
                    in.w.detach().to(at::kFloat).requires_grad_(true), in.u.detach().to(at::kFloat).requires_grad_(true)};
  const mhd::rwkv::WkvResult r = mhd::rwkv::wkv(f.k, f.v, f.w, f.u);
  EXPECT_EQ(r.y.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::isfinite(r.y).all().item<bool>());
  EXPECT_LT(max_abs_diff(r.y, n.y), 1e-4);
  const at::Tensor wy = at::randn({2, 50, 20}, at::kDouble);
  (r.y * wy.to(at::kFloat)).sum().backward();
  const auto g_ref = torch::autograd::grad({(n.y * wy).sum()}, {in.k, in.v, in.w, in.u});
  EXPECT_LT(max_abs_diff(f.k.grad(), g_ref[0]), 1e-3);
  EXPECT_LT(max_abs_diff(f.v.grad(), g_ref[1]), 1e-3);
  EXPECT_LT(max_abs_diff(f.w.grad(), g_ref[2]), 1e-3 * (1 + max_abs(g_ref[2])));
  EXPECT_LT(max_abs_diff(f.u.grad(), g_ref[3]), 1e-3 * (1 + max_abs(g_ref[3])));
  for (const auto& t : {f.k.grad(), f.v.grad(), f.w.grad(), f.u.grad()}) EXPECT_TRUE(at::isfinite(t).all().item<bool>());
}

TEST(WkvKernel, RunsOnSeveralThreadsAtBenchmarkSize) {
  if (std::thread::hardware_concurrency() < 2) GTEST_SKIP() << "one CPU";
  const int threads = at::get_num_threads();
  at::set_num_threads(2);  // LibTorch may start with fewer threads than CPUs
  at::manual_seed(3);
  torch::NoGradGuard no_grad;
  const WkvInputs in = wkv_inputs(2, 1024, 128, false, 0.0, at::kFloat);
  mhd::rwkv::wkv(in.k, in.v, in.w, in.u);
  EXPECT_GT(mhd::rwkv::last_wkv_forward_tasks(), 1);
  at::set_num_threads(threads);
}

TEST(WkvKernel, BadShapesGiveOneLineErrors) {
  const at::Tensor k = at::randn({2, 3, 4});
  backbone_checks::expect_error([&] { mhd::rwkv::wkv(k, k, k, at::randn({5})); }, "rwkv: wkv: u must be [D] = [4]");
  backbone_checks::expect_error([&] { mhd::rwkv::wkv(k, at::randn({2, 3, 5}), k, at::randn({4})); },
                                "rwkv: wkv: v must be [B, L, D]");
}

// ---------------------------------------------------------------------------------------------
// The layer against a naive per-position reference (rwkv_block.h) from its named parameters.
// ---------------------------------------------------------------------------------------------

at::Tensor reference_forward(mhd::Backbone& block, const at::Tensor& x) {
  std::map<std::string, at::Tensor> P;
  for (const auto& p : block.named_parameters()) P[p.key()] = p.value();
  const bool data = P.count("decay_b") > 0;
  auto mix = [](const at::Tensor& x, const at::Tensor& s, const at::Tensor& m) { return m * x + (1 - m) * s; };
  auto lin = [&](const char* name, const at::Tensor& x) { return at::matmul(x, P[std::string(name) + ".weight"].t()); };
  const std::int64_t batch = x.size(0), len = x.size(1), d = x.size(2);
  at::Tensor s = at::zeros({batch, d}, x.options()), s2 = at::zeros_like(s);
  at::Tensor a_state = at::zeros_like(s), b_state = at::zeros_like(s);
  std::vector<at::Tensor> ys;
  for (std::int64_t t = 0; t < len; ++t) {
    const at::Tensor h = x.select(1, t);
    const at::Tensor k = lin("key", mix(h, s, P["mix_k"])), v = lin("value", mix(h, s, P["mix_v"]));
    const at::Tensor r = at::sigmoid(lin("receptance", mix(h, s, P["mix_r"])));
    at::Tensor w = at::exp(P["time_decay"]);
    if (data) w = at::exp(P["time_decay"] + at::matmul(at::tanh(at::matmul(mix(h, s, P["mix_w"]), P["decay_a"])), P["decay_b"]));
    const at::Tensor bonus = at::exp(P["time_first"] + k);
    const at::Tensor wkv = (a_state + bonus * v) / (b_state + bonus);
    a_state = at::exp(-w) * a_state + at::exp(k) * v;
    b_state = at::exp(-w) * b_state + at::exp(k);
    const at::Tensor a = lin("output", r * wkv);
    const at::Tensor g = h + a;
    const at::Tensor mean = g.mean(-1, true), var = g.var(-1, false, true);
    const at::Tensor n = (g - mean) / at::sqrt(var + 1e-5) * P["ln2.weight"] + P["ln2.bias"];
    const at::Tensor kk = at::relu(lin("ffn_key", mix(n, s2, P["ffn_mix_k"])));
    ys.push_back(a + at::sigmoid(lin("ffn_receptance", mix(n, s2, P["ffn_mix_r"]))) * lin("ffn_value", kk * kk));
    s = h;
    s2 = n;
  }
  return at::stack(ys, 1);
}

TEST(RwkvPlugin, ManifestDeclaresTheSchema) {
  const mhd::Manifest& m = *plugin().manifest;
  EXPECT_EQ(m.name, "rwkv");
  const mhd::Params d = mhd::Params::defaults(m.params);
  EXPECT_EQ(d.text("decay"), "static");
  EXPECT_EQ(d.integer("ffn_ratio"), 4);
  EXPECT_DOUBLE_EQ(d.real("init_depth"), 0.5);
}

TEST(RwkvBlock, ForwardAndGradientsEqualNaiveReference) {
  for (const std::string decay : {"static", "data"}) {
    auto block = make(12, decay, 4);
    at::manual_seed(5);
    const at::Tensor x = at::randn({2, 9, 12}, at::kDouble);
    const at::Tensor w = at::randn({2, 9, 12}, at::kDouble);
    const at::Tensor y = block->forward(x);
    const at::Tensor y_ref = reference_forward(*block, x);
    EXPECT_LT(max_abs_diff(y, y_ref), 1e-12) << decay;
    const auto params = block->parameters();
    const auto g = torch::autograd::grad({(y * w).sum()}, params);
    const auto g_ref = torch::autograd::grad({(y_ref * w).sum()}, params);
    for (std::size_t i = 0; i < params.size(); ++i) EXPECT_LT(max_abs_diff(g[i], g_ref[i]), 1e-10) << decay << " param " << i;
  }
}

// time_decay[i] = -5 + 8 (i / (D - 1))^(0.7 + 1.3 r0), time_first = log 0.3 + 0.5 ((i + 1) mod 3 - 1),
// mix_k = (i / D)^(1 - r0), with r0 = init_depth = 0.5 (to float32 rounding: the block is built in
// float32 and converted).
TEST(RwkvBlock, InitialisesDecayAndMixingAsThePaper) {
  auto block = make(8, "static", 1);
  auto P = block->named_parameters();
  for (std::int64_t i = 0; i < 8; ++i) {
    EXPECT_NEAR(P["time_decay"][i].item<double>(), -5 + 8 * std::pow(i / 7.0, 0.7 + 1.3 * 0.5), 1e-6) << i;
    EXPECT_NEAR(P["time_first"][i].item<double>(), std::log(0.3) + 0.5 * ((i + 1) % 3 - 1), 1e-6) << i;
    EXPECT_NEAR(P["mix_k"][i].item<double>(), std::pow(i / 8.0, 0.5), 1e-6) << i;
    EXPECT_NEAR(P["mix_v"][i].item<double>(), std::pow(i / 8.0, 0.5) + 0.15, 1e-6) << i;
    EXPECT_NEAR(P["mix_r"][i].item<double>(), std::pow(i / 8.0, 0.25), 1e-6) << i;
  }
}

TEST(RwkvBlock, DecodeEqualsForward) {
  for (const std::string decay : {"static", "data"}) {
    auto block = make(16, decay, 6);
    at::manual_seed(7);
    backbone_checks::expect_decode_equals_forward(*block, at::randn({3, 20, 16}, at::kDouble), 9, 1e-10);
    auto f32 = make(16, decay, 6, at::kFloat);
    backbone_checks::expect_decode_equals_forward(*f32, at::randn({2, 40, 16}), 17, 1e-4);
  }
}

TEST(RwkvBlock, IsCausal) {
  for (const std::string decay : {"static", "data"}) {
    auto block = make(8, decay, 2);
    at::manual_seed(3);
    backbone_checks::expect_causal(*block, at::randn({2, 9, 8}, at::kDouble));
  }
}

TEST(RwkvBlock, StepLeavesItsInputStateUnchanged) {
  auto block = make(8, "data", 8);
  at::manual_seed(9);
  backbone_checks::expect_step_pure(*block, at::randn({2, 5, 8}, at::kDouble));
}

TEST(RwkvBlock, GradientsReachEveryParameter) {
  for (const std::string decay : {"static", "data"}) {
    auto block = make(8, decay, 10);
    at::manual_seed(11);
    backbone_checks::expect_gradients_reach_everything(*block, at::randn({2, 6, 8}, at::kDouble));
  }
}

TEST(RwkvBlock, BadValuesGiveOneLineErrorsNamingTheKey) {
  auto block = make(8, "static", 1);
  backbone_checks::expect_error([&] { block->forward(at::randn({2, 3, 5}, at::kDouble)); }, "rwkv: x must be [B, L, d_model=8]");
  backbone_checks::expect_error([&] { block->step(at::randn({2, 8}, at::kDouble), block->initial_state(3)); },
                                "rwkv: step: att_shift must be [B, d_model]");
  mhd::Params params = mhd::Params::defaults(plugin().manifest->params);
  params.set("init_depth", 1.5);
  mhd::ModelDims dims;
  dims.d_model = 8;
  backbone_checks::expect_error([&] { mhd::PluginRegistry::global().make<mhd::Backbone>("rwkv", params, dims); },
                                "rwkv: init_depth must be in [0, 1], got 1.5");
}

}  // namespace
