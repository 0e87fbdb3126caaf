// The "retnet" backbone (plugins/backbones/retnet), loaded as the host loads it: the per-head decays,
// the parallel, chunkwise and recurrent forms agreeing at several lengths and chunk sizes, forward
// and gradients against a naive per-position reference written from the layer's named parameters,
// decoding, causality, purity of step() and errors.
#include <gtest/gtest.h>

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
  return mhd::PluginRegistry::global().load_file(MHD_PLUGIN_RETNET, mhd::PluginKind::Backbone);
}

struct Shape {
  std::int64_t d_model = 8, n_heads = 2, value_factor = 2, ffn_ratio = 2;
  std::string form = "chunkwise";
  std::int64_t chunk = 4;
};

std::shared_ptr<mhd::Backbone> make(const Shape& s, std::uint64_t seed, at::ScalarType dtype = at::kDouble) {
  mhd::Params params = mhd::Params::defaults(plugin().manifest->params);
  params.set("n_heads", s.n_heads);
  params.set("value_factor", s.value_factor);
  params.set("ffn_ratio", s.ffn_ratio);
  params.set("form", s.form);
  params.set("chunk_size", s.chunk);
  mhd::ModelDims dims;
  dims.d_model = s.d_model;
  at::manual_seed(seed);
  auto block = mhd::PluginRegistry::global().make<mhd::Backbone>("retnet", params, dims);
  block->to(dtype);
  // Non-trivial norm affines, so the reference checks they are used.
  torch::NoGradGuard no_grad;
  for (auto& p : block->named_parameters()) {
    if (p.key().find("norm") != std::string::npos) p.value().add_(at::randn(p.value().sizes(), p.value().options()) * 0.3);
  }
  return block;
}

std::map<std::string, at::Tensor> params_of(mhd::Backbone& block) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : block.named_parameters()) out[p.key()] = p.value();
  return out;
}

// The paper's rotation of one head vector v: [dk] at position n: pairs (j, j + dk/2) rotated by
// n * 10000^(-2j / dk).
at::Tensor rotate_ref(const at::Tensor& v, std::int64_t n) {
  const std::int64_t dk = v.size(0), half = dk / 2;
  std::vector<at::Tensor> a(dk);
  for (std::int64_t j = 0; j < dk; ++j) a[j] = v[j];
  for (std::int64_t j = 0; j < half; ++j) {
    const double th = static_cast<double>(n) * std::pow(10000.0, -2.0 * j / (2.0 * half));
    a[j] = v[j] * std::cos(th) - v[j + half] * std::sin(th);
    a[j + half] = v[j + half] * std::cos(th) + v[j] * std::sin(th);
  }
  return at::stack(a);
}

// The layer one position at a time (retnet_block.h), from its named parameters. x: [B, L, D].
at::Tensor reference_forward(mhd::Backbone& block, const Shape& s, const at::Tensor& x) {
  auto P = params_of(block);
  const std::int64_t batch = x.size(0), len = x.size(1), H = s.n_heads, dk = s.d_model / H,
                     dv = s.value_factor * s.d_model / H;
  std::vector<at::Tensor> rows;
  for (std::int64_t b = 0; b < batch; ++b) {
    std::vector<at::Tensor> S(H, at::zeros({dk, dv}, x.options()));
    std::vector<at::Tensor> ys;
    for (std::int64_t n = 0; n < len; ++n) {
      const at::Tensor h = x[b][n];
      const at::Tensor q = at::mv(P["q_proj.weight"], h), k = at::mv(P["k_proj.weight"], h), v = at::mv(P["v_proj.weight"], h);
      std::vector<at::Tensor> heads;
      for (std::int64_t i = 0; i < H; ++i) {
        const double gamma = 1.0 - std::pow(2.0, -5.0 - static_cast<double>(i));
        const at::Tensor qi = rotate_ref(q.narrow(0, i * dk, dk), n);
        const at::Tensor ki = rotate_ref(k.narrow(0, i * dk, dk), n) / std::sqrt(static_cast<double>(dk));
        S[i] = gamma * S[i] + at::outer(ki, v.narrow(0, i * dv, dv));
        const at::Tensor o = at::mv(S[i].t(), qi);  // [dv]
        heads.push_back((o - o.mean()) / at::sqrt(o.var(false) + 1e-5));
      }
      const at::Tensor y = at::cat(heads) * P["norm_weight"] + P["norm_bias"];
      const at::Tensor g = at::mv(P["g_proj.weight"], h);
      at::Tensor a = at::mv(P["o_proj.weight"], g * at::sigmoid(g) * y);
      if (s.ffn_ratio > 0) {
        const at::Tensor r = h + a;
        const at::Tensor ln = (r - r.mean()) / at::sqrt(r.var(false) + 1e-5) * P["ffn_norm.weight"] + P["ffn_norm.bias"];
        a = a + at::mv(P["ffn_out.weight"], at::gelu(at::mv(P["ffn_in.weight"], ln) + P["ffn_in.bias"])) + P["ffn_out.bias"];
      }
      ys.push_back(a);
    }
    rows.push_back(at::stack(ys));
  }
  return at::stack(rows);
}

TEST(RetNetPlugin, ManifestDeclaresTheSchema) {
  const mhd::Manifest& m = *plugin().manifest;
  EXPECT_EQ(m.name, "retnet");
  EXPECT_EQ(m.kind, mhd::PluginKind::Backbone);
  const mhd::Params d = mhd::Params::defaults(m.params);
  EXPECT_EQ(d.integer("n_heads"), 4);
  EXPECT_EQ(d.integer("value_factor"), 2);
  EXPECT_EQ(d.text("form"), "chunkwise");
  EXPECT_EQ(d.integer("chunk_size"), 64);
}

TEST(RetNetBlock, DecaysAreOneMinusTwoToTheMinusFiveMinusH) {
  auto block = make(Shape{16, 4}, 1);
  const at::Tensor lg = block->named_buffers()["log_gamma"];
  ASSERT_EQ(lg.numel(), 4);
  for (std::int64_t h = 0; h < 4; ++h) EXPECT_NEAR(std::exp(lg[h].item<double>()), 1.0 - std::pow(2.0, -5.0 - h), 1e-15);
}

// The three forms compute one function: outputs and final states agree to 1e-5 in float32 and
// float64 at several lengths and chunk sizes (chunks longer than, dividing and not dividing L).
TEST(RetNetBlock, ParallelChunkwiseAndRecurrentFormsAgree) {
  for (const at::ScalarType dtype : {at::kDouble, at::kFloat}) {
    for (const std::int64_t len : {1, 7, 64, 100}) {
      for (const std::int64_t chunk : {1, 5, 16, 64}) {
        Shape s{16, 4, 2, 2};
        s.chunk = chunk;
        s.form = "parallel";
        auto parallel = make(s, 11, dtype);
        s.form = "chunkwise";
        auto chunkwise = make(s, 11, dtype);
        s.form = "recurrent";
        auto recurrent = make(s, 11, dtype);
        at::manual_seed(12);
        const at::Tensor x = at::randn({2, len, 16}, at::TensorOptions().dtype(dtype));
        torch::NoGradGuard no_grad;
        const auto [yp, sp] = parallel->forward_with_state(x);
        const auto [yc, sc] = chunkwise->forward_with_state(x);
        const auto [yr, sr] = recurrent->forward_with_state(x);
        const std::string where = std::string(c10::toString(dtype)) + " L=" + std::to_string(len) +
                                  " chunk=" + std::to_string(chunk);
        EXPECT_LT(max_abs_diff(yp, yr), 1e-5) << where;
        EXPECT_LT(max_abs_diff(yc, yr), 1e-5) << where;
        EXPECT_LT(max_abs_diff(sp.tensors[0], sr.tensors[0]), 1e-5) << where;
        EXPECT_LT(max_abs_diff(sc.tensors[0], sr.tensors[0]), 1e-5) << where;
        if (dtype == at::kDouble) EXPECT_LT(max_abs_diff(yc, yr), 1e-12) << where;
      }
    }
  }
}

TEST(RetNetBlock, ForwardAndGradientsEqualNaiveReference) {
  for (const std::string form : {"parallel", "chunkwise", "recurrent"}) {
    for (const Shape& base : {Shape{8, 2, 2, 2}, Shape{6, 2, 1, 0}, Shape{12, 3, 2, 1}}) {
      Shape s = base;
      s.form = form;
      s.chunk = 3;
      auto block = make(s, 4);
      at::manual_seed(5);
      const at::Tensor x = at::randn({2, 7, s.d_model}, at::kDouble);
      const at::Tensor w = at::randn({2, 7, s.d_model}, at::kDouble);  // loss = sum(y * w)
      const at::Tensor y = block->forward(x);
      const at::Tensor y_ref = reference_forward(*block, s, x);
      EXPECT_LT(max_abs_diff(y, y_ref), 1e-12) << form << " d_model=" << s.d_model;
      const auto params = block->parameters();
      const auto g = torch::autograd::grad({(y * w).sum()}, params);
      const auto g_ref = torch::autograd::grad({(y_ref * w).sum()}, params);
      for (std::size_t i = 0; i < params.size(); ++i) EXPECT_LT(max_abs_diff(g[i], g_ref[i]), 1e-11) << form << " param " << i;
    }
  }
}

TEST(RetNetBlock, DecodeEqualsForward) {
  for (const std::string form : {"parallel", "chunkwise"}) {
    Shape s{16, 4};
    s.form = form;
    auto block = make(s, 6);
    at::manual_seed(7);
    backbone_checks::expect_decode_equals_forward(*block, at::randn({3, 20, 16}, at::kDouble), 9, 1e-10);
    auto f32 = make(s, 6, at::kFloat);
    backbone_checks::expect_decode_equals_forward(*f32, at::randn({2, 40, 16}), 17, 1e-4);
  }
}

TEST(RetNetBlock, IsCausal) {
  for (const std::string form : {"parallel", "chunkwise", "recurrent"}) {
    Shape s{8, 2};
    s.form = form;
    auto block = make(s, 2);
    at::manual_seed(3);
    backbone_checks::expect_causal(*block, at::randn({2, 9, 8}, at::kDouble));
  }
}

TEST(RetNetBlock, StepLeavesItsInputStateUnchanged) {
  auto block = make(Shape{}, 8);
  at::manual_seed(9);
  backbone_checks::expect_step_pure(*block, at::randn({2, 5, 8}, at::kDouble));
}

TEST(RetNetBlock, GradientsReachEveryParameter) {
  auto block = make(Shape{}, 10);
  at::manual_seed(11);
  backbone_checks::expect_gradients_reach_everything(*block, at::randn({2, 6, 8}, at::kDouble));
}

TEST(RetNetBlock, BadValuesGiveOneLineErrorsNamingTheKey) {
  mhd::Params params = mhd::Params::defaults(plugin().manifest->params);
  params.set("n_heads", std::int64_t{3});
  mhd::ModelDims dims;
  dims.d_model = 8;
  backbone_checks::expect_error([&] { mhd::PluginRegistry::global().make<mhd::Backbone>("retnet", params, dims); },
                                "retnet: n_heads (3) must divide d_model (8)");
  auto block = make(Shape{}, 1);
  backbone_checks::expect_error([&] { block->forward(at::randn({2, 3, 5}, at::kDouble)); }, "retnet: x must be [B, L, d_model=8]");
  backbone_checks::expect_error([&] { block->step(at::randn({2, 8}, at::kDouble), block->initial_state(3)); },
                                "retnet: step: S must be");
}

}  // namespace
