// The "attention" backbone (plugins/backbones/attention), loaded as the host loads it: its schema,
// causality, a naive per-position reference written from the layer's own named parameters, the
// recurrent (KV-cache) form against the sequence form, purity of step(), gradients and errors.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "mhd/backbone.h"
#include "mhd/error.h"
#include "mhd/plugin.h"
#include "plugin_host/registry.h"
#include "backbone_checks.h"

namespace {

using backbone_checks::expect_error;
using backbone_checks::max_abs;
using backbone_checks::max_abs_diff;

const mhd::LoadedPlugin& plugin() {
  return mhd::PluginRegistry::global().load_file(MHD_PLUGIN_ATTENTION, mhd::PluginKind::Backbone);
}

struct Shape {
  std::int64_t d_model = 8, n_heads = 2, mlp_ratio = 2;
  double rope_base = 10000.0;
};

std::shared_ptr<mhd::Backbone> make(const Shape& s, std::uint64_t seed, at::ScalarType dtype = at::kDouble) {
  const mhd::LoadedPlugin& p = plugin();
  mhd::Params params = mhd::Params::defaults(p.manifest->params);
  params.set("n_heads", s.n_heads);
  params.set("mlp_ratio", s.mlp_ratio);
  params.set("rope_base", s.rope_base);
  mhd::ModelDims dims;
  dims.d_model = s.d_model;
  at::manual_seed(seed);
  auto block = mhd::PluginRegistry::global().make<mhd::Backbone>("attention", params, dims);
  block->to(dtype);
  // Non-trivial LayerNorm affine parameters, so the reference checks they are used.
  torch::NoGradGuard no_grad;
  for (auto& p : block->named_parameters())
    if (p.key().rfind("mlp_norm.", 0) == 0) p.value().add_(at::randn(p.value().sizes(), p.value().options()) * 0.3);
  return block;
}

// ---------------------------------------------------------------------------------------------
// A naive reference in plain doubles, one position at a time.
// ---------------------------------------------------------------------------------------------

using Vec = std::vector<double>;

struct Mat {
  std::int64_t rows = 0, cols = 0;
  Vec data;
  Vec apply(const Vec& x) const {  // W x
    Vec y(rows, 0.0);
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t c = 0; c < cols; ++c) y[r] += data[r * cols + c] * x[c];
    return y;
  }
};

Vec to_vec(const at::Tensor& t) {
  const at::Tensor c = t.detach().to(at::kDouble).contiguous();
  return Vec(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}
Mat to_mat(const at::Tensor& t) { return {t.size(0), t.size(1), to_vec(t)}; }

Vec add(Vec a, const Vec& b) {
  for (std::size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

// Rotate-half RoPE of one head vector at position `pos`.
Vec rope_ref(const Vec& v, std::int64_t pos, double base) {
  const std::size_t dh = v.size(), half = dh / 2;
  Vec out = v;
  for (std::size_t j = 0; j < half; ++j) {
    const double theta = static_cast<double>(pos) * std::pow(base, -2.0 * static_cast<double>(j) / (2.0 * half));
    out[j] = v[j] * std::cos(theta) - v[j + half] * std::sin(theta);
    out[j + half] = v[j + half] * std::cos(theta) + v[j] * std::sin(theta);
  }
  return out;
}

// y = a + mlp_out(GELU(mlp_in(LN(h + a)))), a = o_proj(causal MHA with RoPE), for x: [B, L, D].
at::Tensor reference_forward(const mhd::Backbone& block, const Shape& s, const at::Tensor& x) {
  auto params = block.named_parameters();
  const Mat Wq = to_mat(params["q_proj.weight"]), Wk = to_mat(params["k_proj.weight"]),
            Wv = to_mat(params["v_proj.weight"]), Wo = to_mat(params["o_proj.weight"]);
  const std::int64_t B = x.size(0), L = x.size(1), D = s.d_model, H = s.n_heads, dh = D / H;
  at::Tensor out = at::empty_like(x);
  for (std::int64_t b = 0; b < B; ++b) {
    std::vector<Vec> xs, qs, ks, vs;
    for (std::int64_t i = 0; i < L; ++i) {
      xs.push_back(to_vec(x[b][i]));
      qs.push_back(Wq.apply(xs[i]));
      ks.push_back(Wk.apply(xs[i]));
      vs.push_back(Wv.apply(xs[i]));
    }
    for (std::int64_t i = 0; i < L; ++i) {
      Vec ctx(D, 0.0);
      for (std::int64_t hd = 0; hd < H; ++hd) {
        auto head = [&](const Vec& v) { return Vec(v.begin() + hd * dh, v.begin() + (hd + 1) * dh); };
        const Vec q = rope_ref(head(qs[i]), i, s.rope_base);
        Vec score(i + 1);
        double top = -1e300, total = 0;
        for (std::int64_t j = 0; j <= i; ++j) {
          const Vec k = rope_ref(head(ks[j]), j, s.rope_base);
          double dot = 0;
          for (std::int64_t c = 0; c < dh; ++c) dot += q[c] * k[c];
          score[j] = dot / std::sqrt(static_cast<double>(dh));
          top = std::max(top, score[j]);
        }
        for (std::int64_t j = 0; j <= i; ++j) total += (score[j] = std::exp(score[j] - top));
        for (std::int64_t j = 0; j <= i; ++j)
          for (std::int64_t c = 0; c < dh; ++c) ctx[hd * dh + c] += score[j] / total * vs[j][hd * dh + c];
      }
      Vec y = Wo.apply(ctx);
      if (s.mlp_ratio > 0) {
        const Vec r = add(xs[i], y);
        double mean = 0, var = 0;
        for (double v : r) mean += v / D;
        for (double v : r) var += (v - mean) * (v - mean) / D;
        const Vec g = to_vec(params["mlp_norm.weight"]), beta = to_vec(params["mlp_norm.bias"]);
        Vec n(D);
        for (std::int64_t c = 0; c < D; ++c) n[c] = (r[c] - mean) / std::sqrt(var + 1e-5) * g[c] + beta[c];
        Vec hid = add(to_mat(params["mlp_in.weight"]).apply(n), to_vec(params["mlp_in.bias"]));
        for (double& v : hid) v = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
        y = add(y, add(to_mat(params["mlp_out.weight"]).apply(hid), to_vec(params["mlp_out.bias"])));
      }
      for (std::int64_t c = 0; c < D; ++c) out[b][i][c] = y[c];
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

TEST(AttentionPlugin, ManifestDeclaresTheSchema) {
  const mhd::Manifest& m = *plugin().manifest;
  EXPECT_EQ(m.name, "attention");
  EXPECT_EQ(m.kind, mhd::PluginKind::Backbone);
  EXPECT_FALSE(m.description.empty());
  EXPECT_EQ(m.description.find('\n'), std::string::npos);
  ASSERT_TRUE(m.make_backbone);
  std::set<std::string> names;
  for (const auto& spec : m.params) {
    names.insert(spec.name);
    EXPECT_FALSE(spec.doc.empty()) << spec.name;
  }
  EXPECT_EQ(names, (std::set<std::string>{"n_heads", "mlp_ratio", "rope_base"}));
  const mhd::Params defaults = mhd::Params::defaults(m.params);
  EXPECT_EQ(defaults.integer("n_heads"), 4);
  EXPECT_EQ(defaults.integer("mlp_ratio"), 2);
  EXPECT_DOUBLE_EQ(defaults.real("rope_base"), 10000.0);
  auto rejects = [&](const char* name, mhd::ParamValue v) {
    return mhd::check_param_value(*mhd::find_param(m.params, name), v).has_value();
  };
  EXPECT_TRUE(rejects("n_heads", std::int64_t{0}));
  EXPECT_TRUE(rejects("n_heads", std::int64_t{65}));
  EXPECT_FALSE(rejects("n_heads", std::int64_t{64}));
  EXPECT_FALSE(rejects("mlp_ratio", std::int64_t{0}));
  EXPECT_TRUE(rejects("mlp_ratio", std::int64_t{17}));
  EXPECT_TRUE(rejects("mlp_ratio", std::int64_t{-1}));
  EXPECT_TRUE(rejects("rope_base", 0.5));
}

TEST(AttentionPlugin, ParametersAreNamedAndSized) {
  auto block = make({64, 4, 2}, 1, at::kFloat);
  std::set<std::string> names;
  std::int64_t count = 0;
  for (const auto& p : block->named_parameters()) {
    names.insert(p.key());
    count += p.value().numel();
  }
  EXPECT_EQ(names, (std::set<std::string>{"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                                          "mlp_norm.weight", "mlp_norm.bias", "mlp_in.weight", "mlp_in.bias",
                                          "mlp_out.weight", "mlp_out.bias"}));
  EXPECT_EQ(block->named_parameters()["mlp_in.weight"].sizes(), (std::vector<std::int64_t>{128, 64}));
  EXPECT_EQ(count, 4 * 64 * 64 + 2 * 64 + (128 * 64 + 128) + (64 * 128 + 64));
  // mlp_ratio = 0: attention only.
  auto bare = make({64, 4, 0}, 1, at::kFloat);
  EXPECT_EQ(bare->named_parameters().size(), 4u);
}

TEST(AttentionBlock, BadHeadCountGivesAClearError) {
  mhd::Params params = mhd::Params::defaults(plugin().manifest->params);
  params.set("n_heads", std::int64_t{5});
  mhd::ModelDims dims;
  dims.d_model = 64;
  expect_error([&] { mhd::PluginRegistry::global().make<mhd::Backbone>("attention", params, dims); },
               "attention: d_model (64) must be divisible by n_heads (5)");
}

TEST(AttentionBlock, IsCausal) {
  const Shape s;
  auto block = make(s, 2);
  at::manual_seed(3);
  const at::Tensor x = at::randn({2, 7, s.d_model}, at::kDouble);
  const at::Tensor y = block->forward(x);
  for (std::int64_t t : {0, 3, 6}) {
    at::Tensor x2 = x.clone();
    x2.select(1, t).add_(at::randn({2, s.d_model}, at::kDouble));
    const at::Tensor y2 = block->forward(x2);
    if (t > 0) EXPECT_TRUE(at::equal(y2.narrow(1, 0, t), y.narrow(1, 0, t))) << "t=" << t;
    EXPECT_GT(max_abs_diff(y2.select(1, t), y.select(1, t)), 1e-3) << "t=" << t;
    if (t + 1 < 7) EXPECT_GT(max_abs_diff(y2.select(1, t + 1), y.select(1, t + 1)), 1e-6) << "t=" << t;
  }
}

TEST(AttentionBlock, ForwardEqualsNaiveReference) {
  // Even head width, odd head width (last dimension unrotated), one head, no MLP, another RoPE base.
  for (const Shape& s : {Shape{8, 2, 2}, Shape{6, 2, 1}, Shape{6, 1, 3}, Shape{8, 4, 0}, Shape{8, 2, 2, 7.0}}) {
    auto block = make(s, 4);
    at::manual_seed(5);
    const at::Tensor x = at::randn({2, 6, s.d_model}, at::kDouble);
    const at::Tensor y = block->forward(x);
    EXPECT_LT(max_abs_diff(y, reference_forward(*block, s, x)), 1e-12)
        << "d_model=" << s.d_model << " n_heads=" << s.n_heads << " mlp_ratio=" << s.mlp_ratio;
  }
}

TEST(AttentionBlock, StepByStepEqualsForward) {
  const Shape s;
  auto block = make(s, 6);
  at::manual_seed(7);
  const at::Tensor x = at::randn({3, 9, s.d_model}, at::kDouble);
  const auto [y, state] = block->forward_with_state(x);
  EXPECT_LT(max_abs_diff(block->forward(x), y), 1e-14);
  ASSERT_EQ(state.tensors.size(), 3u);
  EXPECT_EQ(state.tensors[0].sizes(), (std::vector<std::int64_t>{3, 2, 9, 4}));
  EXPECT_EQ(state.tensors[1].sizes(), (std::vector<std::int64_t>{3, 2, 9, 4}));
  EXPECT_TRUE(at::equal(state.tensors[2], at::full({3}, 9, at::kLong)));

  mhd::RecurrentState st = block->initial_state(3);
  ASSERT_EQ(st.tensors.size(), 3u);
  EXPECT_EQ(st.tensors[0].size(2), 0);
  for (std::int64_t t = 0; t < x.size(1); ++t) {
    auto [y_t, next] = block->step(x.select(1, t), st);
    EXPECT_LT(max_abs_diff(y_t, y.select(1, t)), 1e-12) << "t=" << t;
    EXPECT_EQ(next.tensors[0].size(2), t + 1);
    st = next;
  }
  EXPECT_LT(max_abs_diff(st.tensors[0], state.tensors[0]), 1e-12);
  EXPECT_LT(max_abs_diff(st.tensors[1], state.tensors[1]), 1e-12);
  EXPECT_TRUE(at::equal(st.tensors[2], state.tensors[2]));

  // Continuing a prompt: forward_with_state on the first 4 positions, then step the rest.
  auto [y_prompt, s4] = block->forward_with_state(x.narrow(1, 0, 4));
  EXPECT_LT(max_abs_diff(y_prompt, y.narrow(1, 0, 4)), 1e-12);
  for (std::int64_t t = 4; t < x.size(1); ++t) {
    auto [y_t, next] = block->step(x.select(1, t), s4);
    EXPECT_LT(max_abs_diff(y_t, y.select(1, t)), 1e-12) << "t=" << t;
    s4 = next;
  }

  // An empty sequence gives the initial state.
  const auto [y0, s0] = block->forward_with_state(at::zeros({3, 0, s.d_model}, at::kDouble));
  EXPECT_EQ(y0.sizes(), (std::vector<std::int64_t>{3, 0, s.d_model}));
  const mhd::RecurrentState init = block->initial_state(3);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_TRUE(at::equal(s0.tensors[i], init.tensors[i])) << i;
}

TEST(AttentionBlock, Float32StepMatchesForward) {
  const Shape s{16, 4, 2};
  auto block = make(s, 8, at::kFloat);
  at::manual_seed(9);
  const at::Tensor x = at::randn({2, 12, s.d_model});
  const at::Tensor y = block->forward(x);
  mhd::RecurrentState st = block->initial_state(2);
  for (std::int64_t t = 0; t < 12; ++t) {
    auto [y_t, next] = block->step(x.select(1, t), st);
    EXPECT_LT(max_abs_diff(y_t, y.select(1, t)), 1e-5) << "t=" << t;
    st = next;
  }
}

TEST(AttentionBlock, StepLeavesItsInputStateUnchanged) {
  const Shape s;
  auto block = make(s, 10);
  at::manual_seed(11);
  const mhd::RecurrentState state = block->forward_with_state(at::randn({2, 5, s.d_model}, at::kDouble)).second;
  std::vector<at::Tensor> before;
  for (const auto& t : state.tensors) before.push_back(t.clone());
  const auto [y_t, next] = block->step(at::randn({2, s.d_model}, at::kDouble), state);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(at::equal(state.tensors[i], before[i])) << i;
    EXPECT_EQ(state.tensors[i].sizes(), before[i].sizes()) << i;
  }
  EXPECT_EQ(next.tensors[0].size(2), 6);
  EXPECT_TRUE(at::equal(next.tensors[2], at::full({2}, 6, at::kLong)));
  // Two candidates against one state (as the DEQ dynamics evaluates them) are consistent.
  const at::Tensor x_t = at::randn({2, s.d_model}, at::kDouble);
  EXPECT_TRUE(at::equal(block->step(x_t, state).first, block->step(x_t, state).first));
}

TEST(AttentionBlock, GradientsReachEveryParameter) {
  const Shape s;
  auto block = make(s, 12);
  at::manual_seed(13);
  const at::Tensor x = at::randn({2, 5, s.d_model}, at::kDouble).requires_grad_(true);
  (block->forward(x) * at::randn({2, 5, s.d_model}, at::kDouble)).sum().backward();
  for (const auto& p : block->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(max_abs(p.value().grad()), 0.0) << p.key();
  }
  EXPECT_GT(max_abs(x.grad()), 0.0);

  // Through step(): to the parameters, the input and the cached keys and values.
  block->zero_grad();
  const mhd::RecurrentState prefix = block->forward_with_state(x.detach()).second;
  at::Tensor k = prefix.tensors[0].detach().requires_grad_(true), v = prefix.tensors[1].detach().requires_grad_(true);
  at::Tensor x_t = at::randn({2, s.d_model}, at::kDouble).requires_grad_(true);
  const auto [y_t, next] = block->step(x_t, mhd::RecurrentState{{k, v, prefix.tensors[2]}});
  (y_t * at::randn({2, s.d_model}, at::kDouble)).sum().backward();
  for (const auto& p : block->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(max_abs(p.value().grad()), 0.0) << p.key();
  }
  for (const at::Tensor* t : {&k, &v, &x_t}) EXPECT_GT(max_abs(t->grad()), 0.0);
}

TEST(AttentionBlock, BadInputsGiveClearErrors) {
  const Shape s;
  auto block = make(s, 14);
  expect_error([&] { block->forward(at::randn({2, 5, 7}, at::kDouble)); },
               "attention: x must be [B, L, d_model=8], got [2, 5, 7]");
  expect_error([&] { block->forward(at::randn({2, 5, 8}, at::kFloat)); },
               "attention: x is Float but the block's parameters are Double");
  const mhd::RecurrentState st = block->initial_state(2);
  expect_error([&] { block->step(at::randn({2, 5, 8}, at::kDouble), st); }, "attention: step: x_t must be [B, d_model=8]");
  expect_error([&] { block->step(at::randn({2, 8}, at::kDouble), mhd::RecurrentState{{st.tensors[0]}}); },
               "state must hold {k, v, pos} (3 tensors), got 1");
  expect_error([&] { block->step(at::randn({3, 8}, at::kDouble), st); },
               "k cache must be [B, n_heads, T, head_dim] = [3, 2, T, 4], got [2, 2, 0, 4]");
  expect_error(
      [&] { block->step(at::randn({2, 8}, at::kDouble), {{st.tensors[0], st.tensors[1], st.tensors[2].to(at::kFloat)}}); },
      "pos must be an int64 tensor [B] = [2]");
}

}  // namespace
