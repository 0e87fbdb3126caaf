// One test body over every backbone plugin this build makes (plugins/backbones/*), at its default
// parameters in float64: decoding with step() equals forward (from initial_state and after a prefix),
// outputs at t do not depend on inputs after t, step() leaves its state untouched, gradients reach
// every parameter (tests/backbone_checks.h). A new backbone is covered by building it.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "backbone_checks.h"
#include "mhd/plugin.h"
#include "plugin_host/registry.h"

namespace {

// Every backbone plugin of this build (tests/every_backbone.cmake makes the test depend on the
// in-tree ones; the scan finds any other the build made).
std::vector<std::string> backbones() {
  auto& registry = mhd::PluginRegistry::global();
  registry.scan_directory(std::string(MHD_BINARY_DIR) + "/plugins/backbone");
  std::vector<std::string> out;
  for (const auto* p : registry.plugins(mhd::PluginKind::Backbone)) out.push_back(p->manifest->name);
  return out;
}

std::shared_ptr<mhd::Backbone> make(const std::string& name, std::uint64_t seed) {
  auto& registry = mhd::PluginRegistry::global();
  mhd::ModelDims dims;
  dims.d_model = 16;
  at::manual_seed(seed);
  auto block = registry.make<mhd::Backbone>(name, mhd::Params::defaults(registry.require(mhd::PluginKind::Backbone, name).manifest->params), dims);
  block->to(at::kDouble);
  return block;
}

TEST(EveryBackbone, TheInTreeBackbonesAreFound) {
  const auto names = backbones();
  for (const char* name : {"mamba", "attention", "hybrid", "retnet", "rwkv"})
    EXPECT_NE(std::find(names.begin(), names.end(), name), names.end()) << name;
}

TEST(EveryBackbone, DecodeEqualsForward) {
  for (const auto& name : backbones()) {
    SCOPED_TRACE(name);
    auto block = make(name, 1);
    at::manual_seed(2);
    backbone_checks::expect_decode_equals_forward(*block, at::randn({2, 12, 16}, at::kDouble), 5, 1e-9);
  }
}

TEST(EveryBackbone, IsCausal) {
  for (const auto& name : backbones()) {
    SCOPED_TRACE(name);
    auto block = make(name, 3);
    at::manual_seed(4);
    backbone_checks::expect_causal(*block, at::randn({2, 10, 16}, at::kDouble));
  }
}

TEST(EveryBackbone, StepLeavesItsInputStateUnchanged) {
  for (const auto& name : backbones()) {
    SCOPED_TRACE(name);
    auto block = make(name, 5);
    at::manual_seed(6);
    backbone_checks::expect_step_pure(*block, at::randn({2, 6, 16}, at::kDouble));
  }
}

TEST(EveryBackbone, GradientsReachEveryParameter) {
  for (const auto& name : backbones()) {
    SCOPED_TRACE(name);
    auto block = make(name, 7);
    at::manual_seed(8);
    backbone_checks::expect_gradients_reach_everything(*block, at::randn({2, 6, 16}, at::kDouble));
  }
}

// The negative control: a backbone that mixes the whole sequence (y = x + mean over L) and whose
// step forgets the past fails the causality and the decode checks.
struct LeakyBackbone : mhd::Backbone {
  torch::Tensor forward(const torch::Tensor& x) override { return x + x.mean(1, true); }
  std::pair<torch::Tensor, mhd::RecurrentState> forward_with_state(const torch::Tensor& x) override {
    return {forward(x), initial_state(x.size(0))};
  }
  mhd::RecurrentState initial_state(std::int64_t) override { return {}; }
  std::pair<torch::Tensor, mhd::RecurrentState> step(const torch::Tensor& x_t, const mhd::RecurrentState& s) override {
    return {x_t, s};
  }
};

// How many non-fatal failures `check` reports (intercepted, so they do not fail this test).
template <typename Check>
int failures_of(Check check) {
  ::testing::TestPartResultArray results;
  {
    ::testing::ScopedFakeTestPartResultReporter reporter(
        ::testing::ScopedFakeTestPartResultReporter::INTERCEPT_ONLY_CURRENT_THREAD, &results);
    check();
  }
  return results.size();
}

TEST(EveryBackbone, TheChecksCatchALeakyBackbone) {
  LeakyBackbone leaky;
  at::manual_seed(9);
  const at::Tensor x = at::randn({2, 6, 4}, at::kDouble);
  EXPECT_GT(failures_of([&] { backbone_checks::expect_causal(leaky, x); }), 0);
  EXPECT_GT(failures_of([&] { backbone_checks::expect_decode_equals_forward(leaky, x, 3, 1e-9); }), 0);
}

}  // namespace
