// The model is causal (docs/design.md §4): the logits at positions <= t do not change when only
// tokens after t change. One test body runs over every backbone and every memory plugin this build
// makes, with each memory source, and a deliberately leaky model (the pooled form, which gives every
// position the state solved from the whole sequence) shows the check can fail.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "config/model_options.h"
#include "core/model.h"
#include "mhd/plugin.h"
#include "plugin_host/registry.h"
#include "study/study.h"

namespace {

constexpr std::int64_t kVocab = 16, kLength = 12;

// Every plugin of this build (tests/causality.cmake makes this test depend on each plugin target).
mhd::PluginRegistry& registry() {
  auto& registry = mhd::PluginRegistry::global();
  registry.scan_directory(std::string(MHD_BINARY_DIR) + "/plugins");
  return registry;
}

std::vector<std::string> names(mhd::PluginKind kind) {
  std::vector<std::string> out;
  for (const auto* plugin : registry().plugins(kind)) out.push_back(plugin->manifest->name);
  return out;
}

// Plain fixed-point iteration for a fixed number of steps, returning the last iterate (the unrolled
// mode, tol = 0): every iterate of a causal f is causal, so the result is causal bit for bit. What
// solvers decide over a whole row — the stopping rule, Anderson's mixing weights, the best iterate
// every solver returns — is causal only up to the residual; AndersonIsCausalUpToItsTolerance checks
// that.
std::string study(const std::string& backbone, const std::string& memory, const std::string& source,
                  const std::string& solver = "plugin = \"fixed_point\"\nmax_iter = 6\ntol = 0.0\n",
                  const std::string& backward = "mode = \"unrolled\"\n") {
  return "[study]\nname = \"causality\"\n"
         "[task]\nkind = \"associative_recall\"\nvocab_size = 16\nnum_pairs = 2\nseq_len = 12\n"
         "[model]\nd_model = 16\nn_layers = 1\nmemory_source = \"" + source + "\"\n"
         "[backbone]\nplugin = \"" + backbone + "\"\n"
         "[memory]\nplugin = \"" + memory + "\"\n"
         "[solver]\n" + solver +
         "[backward]\n" + backward +
         "[train]\nsteps = 1\n";
}

mhd::TrialConfig trial(const std::string& text) {
  return mhd::parse_study(text, "causality.toml", registry()).trials.front();
}

// How much the logits at positions <= t move when every token after t is redrawn. [B, t + 1, V]
struct Change {
  bool identical = true;
  double max_abs = 0.0;
  bool deterministic = true;  // the same input twice gives the same logits (else a change means nothing)
};

Change prefix_change(mhd::UnifiedModel& model, std::int64_t t) {
  at::NoGradGuard no_grad;
  at::manual_seed(11);
  const auto a = at::randint(kVocab, {2, kLength}, at::kLong);
  auto b = a.clone();
  b.narrow(1, t + 1, kLength - t - 1).copy_(at::randint(kVocab, {2, kLength - t - 1}, at::kLong));
  const auto la = model.forward(a).logits.narrow(1, 0, t + 1);
  const auto lb = model.forward(b).logits.narrow(1, 0, t + 1);
  const auto again = model.forward(a).logits.narrow(1, 0, t + 1);
  return {at::equal(la, lb), (la - lb).abs().max().item<double>(), at::equal(la, again)};
}

class Causality : public ::testing::Test {
 protected:
  void SetUp() override {
    threads_ = at::get_num_threads();
    at::set_num_threads(1);  // bit-for-bit: one thread, so no reduction order depends on the split
  }
  void TearDown() override { at::set_num_threads(threads_); }
  int threads_ = 1;
};

TEST_F(Causality, EveryBackboneAndMemoryWithEachSourceIsCausal) {
  const auto backbones = names(mhd::PluginKind::Backbone), memories = names(mhd::PluginKind::Memory);
  ASSERT_GE(backbones.size(), 2u) << "mamba and attention at least";
  ASSERT_GE(memories.size(), 2u) << "hopfield and dense_am at least";
  std::size_t checked = 0;
  for (const auto& backbone : backbones)
    for (const auto& memory : memories)
      for (const std::string source : {"bank", "context", "both"}) {
        SCOPED_TRACE(backbone + " + " + memory + " (" + source + ")");
        torch::manual_seed(0);
        mhd::UnifiedModel model(mhd::model_options(trial(study(backbone, memory, source)), kVocab), registry());
        model.eval();
        for (std::int64_t t : {kLength / 4, kLength / 2, kLength - 2}) {
          const Change c = prefix_change(model, t);
          EXPECT_TRUE(c.deterministic) << "t = " << t << ": the same tokens twice gave different logits";
          EXPECT_TRUE(c.identical) << "t = " << t << ": logits at positions <= t moved by " << c.max_abs;
        }
        ++checked;
      }
  EXPECT_EQ(checked, backbones.size() * memories.size() * 3);
}

// With a converging solver (Anderson, tol 1e-10 in float64) the joint solve is causal up to its
// tolerance: its mixing weights and stopping rule read the whole row.
TEST_F(Causality, AndersonIsCausalUpToItsTolerance) {
  torch::manual_seed(0);
  const auto config = trial(study("mamba", "hopfield", "both", "plugin = \"anderson\"\nmax_iter = 200\ntol = 1e-10\n",
                                  "mode = \"implicit\"\n"));
  mhd::UnifiedModel model(mhd::model_options(config, kVocab), registry());
  model.to(at::kDouble);
  model.eval();
  const Change c = prefix_change(model, kLength / 2);
  EXPECT_LT(c.max_abs, 1e-7);
}

// The negative control: the pooled form solves one state from the whole sequence and adds it at
// every position, so early positions see late tokens. The same check must catch it.
TEST_F(Causality, ALeakyModelIsCaught) {
  torch::manual_seed(0);
  auto config = trial(study("mamba", "hopfield", "bank"));
  config.model.set("equilibrium", std::string("pooled"));  // the validator refuses this pairing
  mhd::UnifiedModel model(mhd::model_options(config, kVocab), registry());
  model.eval();
  const Change c = prefix_change(model, kLength / 2);
  EXPECT_FALSE(c.identical);
  EXPECT_GT(c.max_abs, 1e-6);
}

}  // namespace
