// The "hybrid" backbone (plugins/backbones/hybrid): Mamba sublayers interleaved with local or global
// attention, against a naive per-position reference written from its named parameters (forward and
// gradients), the bounded decode cache of local attention, decoding, causality, purity of step()
// and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "backbone_checks.h"
#include "mhd/plugin.h"
#include "plugin_host/registry.h"

namespace {

using backbone_checks::max_abs_diff;

const mhd::LoadedPlugin& plugin() {
  return mhd::PluginRegistry::global().load_file(MHD_PLUGIN_HYBRID_BACKBONE, mhd::PluginKind::Backbone);
}

struct Shape {
  std::int64_t d_model = 8, attention_every = 2;
  std::string type = "local";
  std::int64_t window = 3, n_heads = 2, d_state = 4;
};

std::shared_ptr<mhd::Backbone> make(const Shape& s, std::uint64_t seed, at::ScalarType dtype = at::kDouble) {
  mhd::Params params = mhd::Params::defaults(plugin().manifest->params);
  params.set("attention_every", s.attention_every);
  params.set("attention_type", s.type);
  params.set("window_size", s.window);
  params.set("n_heads", s.n_heads);
  params.set("d_state", s.d_state);
  mhd::ModelDims dims;
  dims.d_model = s.d_model;
  at::manual_seed(seed);
  auto block = mhd::PluginRegistry::global().make<mhd::Backbone>("hybrid", params, dims);
  block->to(dtype);
  torch::NoGradGuard no_grad;
  for (auto& p : block->named_parameters()) {
    if (p.key().rfind("norm", 0) == 0) p.value().add_(at::randn(p.value().sizes(), p.value().options()) * 0.3);
  }
  return block;
}

using Params = std::map<std::string, at::Tensor>;

at::Tensor layer_norm_ref(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return (x - x.mean(-1, true)) / at::sqrt(x.var(-1, false, true) + 1e-5) * w + b;
}

// One Mamba block (mamba_block.h) position by position, x: [L, D] of one sequence.
at::Tensor mamba_ref(Params& P, const std::string& pre, const at::Tensor& x) {
  auto W = [&](const std::string& name) { return P[pre + name]; };
  const at::Tensor conv_w = W("conv1d.weight").squeeze(1);  // [E, K]
  const std::int64_t e = conv_w.size(0), k = conv_w.size(1), n = W("A_log").size(1), r = W("dt_proj.weight").size(1);
  const at::Tensor A = -at::exp(W("A_log"));
  const at::Tensor xz = at::matmul(x, W("in_proj.weight").t());
  const at::Tensor x_in = xz.narrow(1, 0, e), z = xz.narrow(1, e, e);
  at::Tensor h = at::zeros({e, n}, x.options());
  std::vector<at::Tensor> ys;
  for (std::int64_t t = 0; t < x.size(0); ++t) {
    at::Tensor pre_act = W("conv1d.bias");
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t src = t - (k - 1) + j;
      if (src >= 0) pre_act = pre_act + conv_w.select(1, j) * x_in[src];
    }
    const at::Tensor u = at::silu(pre_act);  // [E]
    const at::Tensor dbl = at::mv(W("x_proj.weight"), u);
    const at::Tensor delta = at::softplus(at::mv(W("dt_proj.weight"), dbl.narrow(0, 0, r)) + W("dt_proj.bias"));
    const at::Tensor B = dbl.narrow(0, r, n), C = dbl.narrow(0, r + n, n);
    h = at::exp(delta.unsqueeze(1) * A) * h + (delta * u).unsqueeze(1) * B.unsqueeze(0);
    const at::Tensor y = at::mv(h, C) + W("D") * u;
    ys.push_back(at::mv(W("out_proj.weight"), y * at::silu(z[t])));
  }
  return at::stack(ys);
}

at::Tensor rope_ref(const at::Tensor& v, std::int64_t pos) {
  const std::int64_t dh = v.size(0), half = dh / 2;
  std::vector<at::Tensor> a(dh);
  for (std::int64_t j = 0; j < dh; ++j) a[j] = v[j];
  for (std::int64_t j = 0; j < half; ++j) {
    const double th = static_cast<double>(pos) * std::pow(10000.0, -2.0 * j / (2.0 * half));
    a[j] = v[j] * std::cos(th) - v[j + half] * std::sin(th);
    a[j + half] = v[j + half] * std::cos(th) + v[j] * std::sin(th);
  }
  return at::stack(a);
}

// Attention over keys (i - W, i] (window 0: [0, i]), x: [L, D] of one sequence.
at::Tensor attention_ref(Params& P, const Shape& s, const at::Tensor& x, std::int64_t window) {
  const std::int64_t dh = s.d_model / s.n_heads;
  const at::Tensor q = at::matmul(x, P["attention.q_proj.weight"].t()), k = at::matmul(x, P["attention.k_proj.weight"].t()),
                   v = at::matmul(x, P["attention.v_proj.weight"].t());
  std::vector<at::Tensor> ys;
  for (std::int64_t i = 0; i < x.size(0); ++i) {
    std::vector<at::Tensor> heads;
    for (std::int64_t hd = 0; hd < s.n_heads; ++hd) {
      const at::Tensor qi = rope_ref(q[i].narrow(0, hd * dh, dh), i);
      const std::int64_t first = window > 0 ? std::max<std::int64_t>(0, i - window + 1) : 0;
      std::vector<at::Tensor> scores, values;
      for (std::int64_t j = first; j <= i; ++j) {
        scores.push_back(at::dot(qi, rope_ref(k[j].narrow(0, hd * dh, dh), j)) / std::sqrt(static_cast<double>(dh)));
        values.push_back(v[j].narrow(0, hd * dh, dh));
      }
      heads.push_back(at::matmul(at::softmax(at::stack(scores), 0), at::stack(values)));
    }
    ys.push_back(at::mv(P["attention.o_proj.weight"], at::cat(heads)));
  }
  return at::stack(ys);
}

at::Tensor reference_forward(mhd::Backbone& block, const Shape& s, const at::Tensor& x) {
  Params P;
  for (const auto& p : block.named_parameters()) P[p.key()] = p.value();
  std::vector<at::Tensor> rows;
  for (std::int64_t b = 0; b < x.size(0); ++b) {
    at::Tensor h = x[b];
    for (std::int64_t i = 0; i < s.attention_every; ++i) {
      const std::string norm = "norm" + std::to_string(i);
      const at::Tensor in = layer_norm_ref(h, P[norm + ".weight"], P[norm + ".bias"]);
      if (i + 1 < s.attention_every) {
        h = h + mamba_ref(P, "mamba" + std::to_string(i) + ".", in);
      } else {
        h = h + attention_ref(P, s, in, s.type == "local" ? s.window : 0);
      }
    }
    rows.push_back(h - x[b]);
  }
  return at::stack(rows);
}

TEST(HybridPlugin, ManifestDeclaresTheSchema) {
  const mhd::Manifest& m = *plugin().manifest;
  EXPECT_EQ(m.name, "hybrid");
  EXPECT_EQ(m.kind, mhd::PluginKind::Backbone);
  const mhd::Params d = mhd::Params::defaults(m.params);
  EXPECT_EQ(d.integer("attention_every"), 4);
  EXPECT_EQ(d.text("attention_type"), "local");
  EXPECT_EQ(d.integer("window_size"), 256);
}

TEST(HybridPlugin, DefaultLayerIsThreeMambaBlocksThenAttention) {
  mhd::ModelDims dims;
  dims.d_model = 16;
  auto block = mhd::PluginRegistry::global().make<mhd::Backbone>("hybrid", mhd::Params::defaults(plugin().manifest->params), dims);
  std::vector<std::string> children;
  for (const auto& c : block->named_children()) children.push_back(c.key());
  for (const char* name : {"mamba0", "mamba1", "mamba2", "attention"})
    EXPECT_NE(std::find(children.begin(), children.end(), name), children.end()) << name;
  EXPECT_EQ(std::find(children.begin(), children.end(), "mamba3"), children.end());
}

TEST(HybridBlock, ForwardAndGradientsEqualNaiveReference) {
  for (const Shape& s : {Shape{8, 1, "local", 3}, Shape{8, 2, "local", 3}, Shape{8, 4, "global", 0},
                         Shape{8, 3, "local", 1}, Shape{6, 2, "local", 4, 3}}) {
    auto block = make(s, 4);
    at::manual_seed(5);
    const at::Tensor x = at::randn({2, 9, s.d_model}, at::kDouble);
    const at::Tensor w = at::randn({2, 9, s.d_model}, at::kDouble);
    const at::Tensor y = block->forward(x);
    const at::Tensor y_ref = reference_forward(*block, s, x);
    const std::string where = "attention_every=" + std::to_string(s.attention_every) + " " + s.type +
                              " window=" + std::to_string(s.window);
    EXPECT_LT(max_abs_diff(y, y_ref), 1e-10) << where;
    const auto params = block->parameters();
    const auto g = torch::autograd::grad({(y * w).sum()}, params);
    const auto g_ref = torch::autograd::grad({(y_ref * w).sum()}, params);
    for (std::size_t i = 0; i < params.size(); ++i) EXPECT_LT(max_abs_diff(g[i], g_ref[i]), 1e-9) << where << " param " << i;
  }
}

// A window at least as long as the sequence is global attention.
TEST(HybridBlock, LocalWithAWindowCoveringTheSequenceIsGlobal) {
  auto local = make(Shape{8, 2, "local", 16}, 3);
  auto global = make(Shape{8, 2, "global", 16}, 3);
  at::manual_seed(4);
  const at::Tensor x = at::randn({2, 16, 8}, at::kDouble);
  EXPECT_LT(max_abs_diff(local->forward(x), global->forward(x)), 1e-13);
  EXPECT_GT(max_abs_diff(make(Shape{8, 2, "local", 4}, 3)->forward(x), global->forward(x)), 1e-4);
}

// Local attention's decode cache keeps window_size - 1 positions, however long the sequence.
TEST(HybridBlock, LocalDecodeCacheIsBounded) {
  auto block = make(Shape{8, 2, "local", 4}, 5);
  at::manual_seed(6);
  const at::Tensor x = at::randn({2, 30, 8}, at::kDouble);
  torch::NoGradGuard no_grad;
  mhd::RecurrentState st = block->initial_state(2);
  for (std::int64_t t = 0; t < 30; ++t) {
    st = block->step(x.select(1, t), st).second;
    const at::Tensor& k = st.tensors[st.tensors.size() - 3];
    EXPECT_EQ(k.size(2), std::min<std::int64_t>(t + 1, 3)) << "t=" << t;
  }
  EXPECT_EQ(block->forward_with_state(x).second.tensors[st.tensors.size() - 3].size(2), 3);
}

TEST(HybridBlock, DecodeEqualsForward) {
  for (const Shape& s : {Shape{16, 4, "local", 5, 4}, Shape{16, 2, "global", 0, 4}}) {
    auto block = make(s, 6);
    at::manual_seed(7);
    backbone_checks::expect_decode_equals_forward(*block, at::randn({3, 20, 16}, at::kDouble), 9, 1e-10);
    auto f32 = make(s, 6, at::kFloat);
    backbone_checks::expect_decode_equals_forward(*f32, at::randn({2, 40, 16}), 17, 1e-4);
  }
}

TEST(HybridBlock, IsCausal) {
  for (const Shape& s : {Shape{8, 2, "local", 3}, Shape{8, 4, "global", 0}}) {
    auto block = make(s, 2);
    at::manual_seed(3);
    backbone_checks::expect_causal(*block, at::randn({2, 9, 8}, at::kDouble));
  }
}

TEST(HybridBlock, StepLeavesItsInputStateUnchanged) {
  auto block = make(Shape{}, 8);
  at::manual_seed(9);
  backbone_checks::expect_step_pure(*block, at::randn({2, 5, 8}, at::kDouble));
}

TEST(HybridBlock, GradientsReachEveryParameter) {
  auto block = make(Shape{8, 3, "local", 3}, 10);
  at::manual_seed(11);
  backbone_checks::expect_gradients_reach_everything(*block, at::randn({2, 6, 8}, at::kDouble));
}

TEST(HybridBlock, BadValuesGiveOneLineErrorsNamingTheKey) {
  mhd::Params params = mhd::Params::defaults(plugin().manifest->params);
  params.set("n_heads", std::int64_t{3});
  mhd::ModelDims dims;
  dims.d_model = 8;
  backbone_checks::expect_error([&] { mhd::PluginRegistry::global().make<mhd::Backbone>("hybrid", params, dims); },
                                "hybrid: n_heads (3) must be >= 1 and divide d_model (8)");
  auto block = make(Shape{}, 1);
  backbone_checks::expect_error([&] { block->forward(at::randn({2, 3, 5}, at::kDouble)); }, "hybrid: x must be [B, L, d_model=8]");
  backbone_checks::expect_error([&] { block->step(at::randn({2, 8}, at::kDouble), mhd::RecurrentState{}); },
                                "hybrid: step: state must hold 5 tensors");
}

}  // namespace
