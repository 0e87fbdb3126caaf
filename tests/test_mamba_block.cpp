// The "mamba" backbone's block and plugin: the block's recurrent form against its sequence form,
// its initialisation, its errors, and the plugin as the host loads it. The selective scan itself is
// tested in test_mamba.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "mamba_block.h"
#include "mhd/error.h"
#include "plugin_host/registry.h"
#include "backbone_checks.h"
#include "selective_scan.h"

namespace {

using mhd::mamba::MambaBlock;
using mhd::mamba::MambaConfig;


using backbone_checks::expect_error;
using backbone_checks::max_abs;
using backbone_checks::max_abs_diff;

// ---------------------------------------------------------------------------------------------
// The block
// ---------------------------------------------------------------------------------------------

MambaConfig small_config() {
  MambaConfig c;
  c.d_model = 8;
  c.d_state = 4;
  c.d_conv = 4;
  c.expand = 2;
  return c;
}

std::shared_ptr<MambaBlock> make_block(MambaConfig c, std::uint64_t seed, at::ScalarType dtype = at::kDouble) {
  at::manual_seed(seed);
  auto block = std::make_shared<MambaBlock>(c);
  block->to(dtype);
  return block;
}

TEST(MambaBlock, InitialisationFollowsMambaSsm) {
  MambaConfig c;  // defaults: d_model 64, N 16, K 4, expand 2
  at::manual_seed(18);
  MambaBlock block(c);
  const std::int64_t e = 128, n = 16;
  EXPECT_EQ(block.d_inner(), e);
  EXPECT_EQ(block.dt_rank(), 4);  // ceil(64 / 16)
  const at::Tensor expected_A_log = at::log(at::arange(1, n + 1, at::kFloat)).expand({e, n});
  EXPECT_LT(max_abs_diff(block.A_log, expected_A_log), 1e-7);
  EXPECT_LT(max_abs_diff(block.A(), -at::arange(1, n + 1, at::kFloat).expand({e, n})), 1e-5);
  EXPECT_EQ(max_abs_diff(block.D, at::ones({e})), 0.0);
  const at::Tensor dt = at::softplus(block.dt_proj->bias);
  EXPECT_GE(dt.min().item<double>(), c.dt_min * (1 - 1e-4));
  EXPECT_LE(dt.max().item<double>(), c.dt_max * (1 + 1e-4));
  // Log-uniform: both decades of [1e-3, 1e-1] are populated.
  EXPECT_GT((dt < 1e-2).sum().item<std::int64_t>(), 20);
  EXPECT_GT((dt > 1e-2).sum().item<std::int64_t>(), 20);
  EXPECT_LE(max_abs(block.dt_proj->weight), 1.0 / std::sqrt(4.0) + 1e-7);

  std::set<std::string> names;
  for (const auto& p : block.named_parameters()) names.insert(p.key());
  EXPECT_EQ(names, (std::set<std::string>{"in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
                                          "dt_proj.weight", "dt_proj.bias", "out_proj.weight", "A_log", "D"}));
  EXPECT_EQ(block.in_proj->weight.sizes(), (std::vector<std::int64_t>{2 * e, 64}));
  EXPECT_EQ(block.conv1d->weight.sizes(), (std::vector<std::int64_t>{e, 1, 4}));
  EXPECT_EQ(block.x_proj->weight.sizes(), (std::vector<std::int64_t>{4 + 2 * n, e}));
  EXPECT_EQ(block.out_proj->weight.sizes(), (std::vector<std::int64_t>{64, e}));
}

TEST(MambaBlock, DtFloorAndExplicitRank) {
  MambaConfig c = small_config();
  c.dt_min = 1e-6;
  c.dt_max = 2e-6;
  c.dt_init_floor = 1e-3;  // above the range: every step is the floor
  c.dt_rank = 3;
  MambaBlock block(c);
  EXPECT_EQ(block.dt_proj->weight.sizes(), (std::vector<std::int64_t>{16, 3}));
  EXPECT_LT(max_abs_diff(at::softplus(block.dt_proj->bias), at::full({16}, 1e-3)), 1e-8);
}

TEST(MambaBlock, FusedAndReferenceScansAgree) {
  MambaConfig fused_cfg = small_config(), ref_cfg = small_config();
  ref_cfg.scan = mhd::mamba::ScanImpl::Reference;
  auto fused = make_block(fused_cfg, 19), ref = make_block(ref_cfg, 19);
  at::manual_seed(20);
  const at::Tensor x = at::randn({2, 13, 8}, at::kDouble);
  const at::Tensor w = at::randn({2, 13, 8}, at::kDouble);
  const at::Tensor yf = fused->forward(x), yr = ref->forward(x);
  EXPECT_LT(max_abs_diff(yf, yr), 1e-10);
  (yf * w).sum().backward();
  (yr * w).sum().backward();
  const auto pf = fused->named_parameters(), pr = ref->named_parameters();
  for (const auto& p : pf) {
    const at::Tensor& gr = pr[p.key()].grad();
    EXPECT_LT(max_abs_diff(p.value().grad(), gr), 1e-9 * std::max(1.0, max_abs(gr))) << p.key();
    EXPECT_GT(max_abs(gr), 0.0) << p.key();
  }
}

// Running step() position by position reproduces forward() and forward_with_state()'s final state.
TEST(MambaBlock, StepByStepEqualsForward) {
  for (std::int64_t d_conv : {4, 1}) {
    MambaConfig c = small_config();
    c.d_conv = d_conv;
    auto block = make_block(c, 21);
    at::manual_seed(22);
    const at::Tensor x = at::randn({2, 9, 8}, at::kDouble);
    const auto [y, state] = block->forward_with_state(x);
    EXPECT_LT(max_abs_diff(block->forward(x), y), 1e-12);
    ASSERT_EQ(state.tensors.size(), 2u);
    EXPECT_EQ(state.tensors[0].sizes(), (std::vector<std::int64_t>{2, 16, d_conv - 1}));
    EXPECT_EQ(state.tensors[1].sizes(), (std::vector<std::int64_t>{2, 16, 4}));

    mhd::RecurrentState s = block->initial_state(2);
    for (std::int64_t t = 0; t < x.size(1); ++t) {
      auto [y_t, next] = block->step(x.select(1, t), s);
      EXPECT_LT(max_abs_diff(y_t, y.select(1, t)), 1e-10) << "t=" << t << " d_conv=" << d_conv;
      s = next;
    }
    EXPECT_LT(max_abs_diff(s.tensors[0], state.tensors[0]), 1e-12);
    EXPECT_LT(max_abs_diff(s.tensors[1], state.tensors[1]), 1e-10);
  }
}

// A prompt shorter than the conv window: the window is zero-padded, and step() continues the
// sequence exactly where forward_with_state() stopped.
TEST(MambaBlock, StepContinuesAShortPrompt) {
  auto block = make_block(small_config(), 23);
  at::manual_seed(24);
  const at::Tensor x = at::randn({3, 6, 8}, at::kDouble);
  const at::Tensor y = block->forward(x);
  auto [y_prompt, s] = block->forward_with_state(x.narrow(1, 0, 2));
  EXPECT_EQ(max_abs(s.tensors[0].select(2, 0)), 0.0);  // 3 slots, 2 inputs: the oldest is padding
  EXPECT_GT(max_abs(s.tensors[0].select(2, 2)), 0.0);
  EXPECT_LT(max_abs_diff(y_prompt, y.narrow(1, 0, 2)), 1e-12);
  for (std::int64_t t = 2; t < 6; ++t) {
    auto [y_t, next] = block->step(x.select(1, t), s);
    EXPECT_LT(max_abs_diff(y_t, y.select(1, t)), 1e-10) << "t=" << t;
    s = next;
  }
}

TEST(MambaBlock, EmptySequenceGivesTheInitialState) {
  auto block = make_block(small_config(), 31);
  const auto [y, state] = block->forward_with_state(at::zeros({2, 0, 8}, at::kDouble));
  EXPECT_EQ(y.sizes(), (std::vector<std::int64_t>{2, 0, 8}));
  const mhd::RecurrentState init = block->initial_state(2);
  ASSERT_EQ(state.tensors.size(), 2u);
  EXPECT_TRUE(at::equal(state.tensors[0], init.tensors[0]));
  EXPECT_TRUE(at::equal(state.tensors[1], init.tensors[1]));
}

TEST(MambaBlock, StepLeavesItsInputStateUnchanged) {
  auto block = make_block(small_config(), 25);
  at::manual_seed(26);
  const mhd::RecurrentState state = block->forward_with_state(at::randn({2, 5, 8}, at::kDouble)).second;
  const at::Tensor conv_before = state.tensors[0].clone(), ssm_before = state.tensors[1].clone();
  const auto [y_t, next] = block->step(at::randn({2, 8}, at::kDouble), state);
  EXPECT_TRUE(at::equal(state.tensors[0], conv_before));
  EXPECT_TRUE(at::equal(state.tensors[1], ssm_before));
  EXPECT_FALSE(at::equal(next.tensors[1], ssm_before));
  // Evaluating two candidates against one state (as the DEQ dynamics does) is consistent.
  const at::Tensor x_t = at::randn({2, 8}, at::kDouble);
  EXPECT_TRUE(at::equal(block->step(x_t, state).first, block->step(x_t, state).first));
}

// Gradients of one step reach the parameters, the input and both state tensors, and match finite
// differences.
TEST(MambaBlock, StepIsDifferentiable) {
  MambaConfig c = small_config();
  c.d_model = 4;
  c.d_conv = 3;
  c.d_state = 3;
  auto block = make_block(c, 27);
  at::manual_seed(28);
  const mhd::RecurrentState prefix = block->forward_with_state(at::randn({1, 4, 4}, at::kDouble)).second;
  at::Tensor x_t = at::randn({1, 4}, at::kDouble).requires_grad_(true);
  at::Tensor conv = prefix.tensors[0].detach().clone().requires_grad_(true);
  at::Tensor ssm = prefix.tensors[1].detach().clone().requires_grad_(true);
  const at::Tensor wy = at::randn({1, 4}, at::kDouble), wc = at::randn(conv.sizes(), at::kDouble),
                   ws = at::randn(ssm.sizes(), at::kDouble);
  auto loss_of = [&](const at::Tensor& x, const at::Tensor& cs, const at::Tensor& ss) {
    const auto [y, next] = block->step(x, mhd::RecurrentState{{cs, ss}});
    return (y * wy).sum() + (next.tensors[0] * wc).sum() + (next.tensors[1] * ws).sum();
  };
  const at::Tensor loss = loss_of(x_t, conv, ssm);
  loss.backward();
  for (const auto& p : block->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(max_abs(p.value().grad()), 0.0) << p.key();
  }
  const double eps = 1e-6;
  for (at::Tensor* leaf : {&x_t, &conv, &ssm}) {
    const at::Tensor analytic = leaf->grad().reshape({-1});
    ASSERT_GT(max_abs(analytic), 0.0);
    at::Tensor probe = leaf->detach().clone();
    at::Tensor flat = probe.view({-1});
    for (std::int64_t j = 0; j < flat.numel(); ++j) {
      const double x0 = flat[j].item<double>();
      auto eval = [&](double v) {
        flat[j] = v;
        torch::NoGradGuard no_grad;
        const at::Tensor& xa = leaf == &x_t ? probe : x_t.detach();
        const at::Tensor& ca = leaf == &conv ? probe : conv.detach();
        const at::Tensor& sa = leaf == &ssm ? probe : ssm.detach();
        return loss_of(xa, ca, sa).item<double>();
      };
      const double numeric = (eval(x0 + eps) - eval(x0 - eps)) / (2 * eps);
      flat[j] = x0;
      EXPECT_NEAR(analytic[j].item<double>(), numeric, 1e-6 * std::max(1.0, std::abs(numeric))) << j;
    }
  }
}

TEST(MambaBlock, BadInputsGiveClearErrors) {
  auto block = make_block(small_config(), 29);
  expect_error([&] { block->forward(at::randn({2, 5, 7}, at::kDouble)); },
               "mamba: x must be [B, L, d_model=8], got [2, 5, 7]");
  expect_error([&] { block->forward(at::randn({5, 8}, at::kDouble)); }, "mamba: x must be [B, L, d_model=8]");
  expect_error([&] { block->forward(at::randn({2, 5, 8}, at::kFloat)); },
               "mamba: x is Float but the block's parameters are Double");
  const mhd::RecurrentState s = block->initial_state(2);
  expect_error([&] { block->step(at::randn({2, 5, 8}, at::kDouble), s); }, "mamba: step: x_t must be [B, d_model=8]");
  expect_error([&] { block->step(at::randn({2, 8}, at::kDouble), mhd::RecurrentState{{s.tensors[0]}}); },
               "state must hold {conv_state, ssm_state} (2 tensors), got 1");
  expect_error([&] { block->step(at::randn({3, 8}, at::kDouble), s); },
               "conv_state must be [B, d_inner, d_conv - 1] = [3, 16, 3], got [2, 16, 3]");
  expect_error([&] { block->step(at::randn({2, 8}, at::kDouble), {{s.tensors[0], s.tensors[1].narrow(2, 0, 2)}}); },
               "ssm_state must be [B, d_inner, d_state] = [2, 16, 4], got [2, 16, 2]");
  MambaConfig bad = small_config();
  bad.dt_min = 0.5;
  bad.dt_max = 0.1;
  expect_error([&] { MambaBlock b(bad); }, "mamba: dt_min (0.5) must not exceed dt_max (0.1)");
}

// ---------------------------------------------------------------------------------------------
// The plugin as the host sees it
// ---------------------------------------------------------------------------------------------

TEST(MambaPlugin, ManifestDeclaresTheSchema) {
  const mhd::Manifest m = mhd::mamba::make_manifest();
  EXPECT_EQ(m.name, "mamba");
  EXPECT_EQ(m.kind, mhd::PluginKind::Backbone);
  EXPECT_FALSE(m.description.empty());
  EXPECT_EQ(m.description.find('\n'), std::string::npos);
  ASSERT_TRUE(m.make_backbone);
  const mhd::Params defaults = mhd::Params::defaults(m.params);
  EXPECT_EQ(defaults.integer("d_state"), 16);
  EXPECT_EQ(defaults.integer("d_conv"), 4);
  EXPECT_EQ(defaults.integer("expand"), 2);
  EXPECT_EQ(defaults.integer("dt_rank"), 0);
  EXPECT_DOUBLE_EQ(defaults.real("dt_min"), 1e-3);
  EXPECT_DOUBLE_EQ(defaults.real("dt_max"), 1e-1);
  EXPECT_DOUBLE_EQ(defaults.real("dt_init_floor"), 1e-4);
  EXPECT_EQ(defaults.text("scan"), "fused");
  for (const auto& spec : m.params) EXPECT_FALSE(spec.doc.empty()) << spec.name;
  EXPECT_TRUE(mhd::check_param_value(*mhd::find_param(m.params, "d_state"), std::int64_t{0}).has_value());
  EXPECT_TRUE(mhd::check_param_value(*mhd::find_param(m.params, "d_state"), std::int64_t{257}).has_value());
  EXPECT_FALSE(mhd::check_param_value(*mhd::find_param(m.params, "d_conv"), std::int64_t{16}).has_value());
  EXPECT_TRUE(mhd::check_param_value(*mhd::find_param(m.params, "scan"), std::string("cuda")).has_value());
}

// A study picks the scan's build with backbone.scan_build (process-wide), so builds can be compared
// in one study; "auto" goes back to the widest the CPU has.
TEST(MambaPlugin, ScanBuildParameterSelectsTheBuild) {
  const mhd::Manifest m = mhd::mamba::make_manifest();
  mhd::Params p = mhd::Params::defaults(m.params);
  EXPECT_EQ(p.text("scan_build"), "auto");
  const auto have = mhd::mamba::available_scan_isas();
  for (const auto isa : have) {
    if (isa == mhd::mamba::ScanIsa::Avx512) p.set("scan_build", std::string("avx512"));
    if (isa == mhd::mamba::ScanIsa::Avx2) p.set("scan_build", std::string("avx2"));
    if (isa == mhd::mamba::ScanIsa::Generic) p.set("scan_build", std::string("generic"));
    m.make_backbone(p, mhd::ModelDims{16, 32});
    EXPECT_EQ(mhd::mamba::active_scan_isa(), mhd::mamba::scan_isa_name(isa));
  }
  p.set("scan_build", std::string("auto"));
  m.make_backbone(p, mhd::ModelDims{16, 32});
  EXPECT_EQ(mhd::mamba::active_scan_isa(), mhd::mamba::scan_isa_name(have.back()));
}

TEST(MambaPlugin, LoadsThroughTheRegistryAndRuns) {
  auto& registry = mhd::PluginRegistry::global();
  const mhd::LoadedPlugin& plugin = registry.load_file(MHD_PLUGIN_MAMBA, mhd::PluginKind::Backbone);
  ASSERT_EQ(plugin.manifest->name, "mamba");
  mhd::Params params = mhd::Params::defaults(plugin.manifest->params);
  params.set("d_state", std::int64_t{4});
  params.set("expand", std::int64_t{1});
  mhd::ModelDims dims;
  dims.d_model = 16;
  at::manual_seed(30);
  const std::shared_ptr<mhd::Backbone> block = registry.make<mhd::Backbone>("mamba", params, dims);
  ASSERT_TRUE(block);
  EXPECT_EQ(block->named_parameters()["A_log"].sizes(), (std::vector<std::int64_t>{16, 4}));
  const at::Tensor x = at::randn({2, 5, 16});
  const auto [y, state] = block->forward_with_state(x);
  EXPECT_EQ(y.sizes(), x.sizes());
  const auto [y_t, next] = block->step(x.select(1, 0), block->initial_state(2));
  EXPECT_LT(max_abs_diff(y_t, y.select(1, 0)), 1e-5);

  params.set("dt_min", 0.5);
  expect_error([&] { registry.make<mhd::Backbone>("mamba", params, dims); }, "dt_min (0.5) must not exceed dt_max (0.1)");
}

}  // namespace
