// Recurrent decoding (UnifiedModel::step) against the full forward, and the samplers of generate.h.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "mhd/error.h"
#include "core/generate.h"
#include "config/model_options.h"
#include "core/model.h"
#include "study/study.h"
#include "test_plugins_loaded.h"

namespace {

mhd::PluginRegistry& registry() {
  auto& r = registry_with_all_plugins();
  r.load_file(MHD_PLUGIN_ATTENTION);
  return r;
}

// A tight solve, so the decode's equilibrium and the full forward's agree to far below 1e-4.
std::string study(const std::string& backbone, const std::string& model_keys, const std::string& task_keys) {
  return R"(
[study]
name = "generation_test"
[task]
kind = "associative_recall"
vocab_size = 16
num_pairs = 2
seq_len = 8
)" + task_keys + R"(
[model]
d_model = 16
n_layers = 2
)" + model_keys + R"(
[backbone]
plugin = ")" + backbone + R"("
[memory]
plugin = "hopfield"
size = 8
[solver]
plugin = "anderson"
max_iter = 200
tol = 1e-10
)";
}

std::shared_ptr<mhd::UnifiedModel> make_model(const std::string& backbone, bool deq = true,
                                              const std::string& model_keys = "", const std::string& task_keys = "") {
  auto config = mhd::parse_study(study(backbone, model_keys, task_keys), "generation_test.toml", registry()).trials.front();
  config.model.set("deq", deq);
  torch::manual_seed(3);
  auto model = std::make_shared<mhd::UnifiedModel>(mhd::model_options(config, 16), registry());
  model->to(at::kDouble);  // so the comparison measures the decode, not float32 rounding
  model->eval();
  return model;
}

// Every position t of the decode against the full forward's logits at t. The sequence form is
// causal, so one forward of all L tokens serves every position; the pooled form's state depends on
// the whole input, so it is compared with forward(tokens[:, :t+1]).logits[:, -1] instead.
void expect_decode_matches_forward(mhd::UnifiedModel& model, std::int64_t L, bool pooled = false) {
  at::manual_seed(11);
  const auto tokens = at::randint(16, {2, L}, at::kLong);  // [B, L]
  auto state = model.initial_decode_state(2);
  at::NoGradGuard no_grad;
  const auto all = model.forward(tokens).logits;  // [B, L, V]
  for (std::int64_t t = 0; t < L; ++t) {
    auto step = model.step(tokens.select(1, t), state);
    auto full = pooled ? model.forward(tokens.slice(1, 0, t + 1)).logits.select(1, t) : all.select(1, t);  // [B, V]
    EXPECT_LT((step.logits - full).abs().max().item<double>(), 1e-4) << "position " << t;
    if (model.deq_enabled()) EXPECT_TRUE(step.info.converged) << "position " << t;
  }
  EXPECT_EQ(state.position, L);
}

TEST(RecurrentDecode, MambaMatchesTheFullForwardAtEveryPosition) { expect_decode_matches_forward(*make_model("mamba"), 10); }

TEST(RecurrentDecode, AttentionMatchesTheFullForwardAtEveryPosition) {
  expect_decode_matches_forward(*make_model("attention"), 10);
}

TEST(RecurrentDecode, ContextMemoryMatchesTheFullForward) {
  expect_decode_matches_forward(*make_model("mamba", true, "memory_source = \"context\""), 10);
}

TEST(RecurrentDecode, BothMemorySourcesMatchTheFullForward) {
  expect_decode_matches_forward(*make_model("attention", true, "memory_source = \"both\""), 10);
}

TEST(RecurrentDecode, PooledFormMatchesTheForwardOfEachPrefix) {
  expect_decode_matches_forward(*make_model("mamba", true, "equilibrium = \"pooled\"", "query_at_end = true"), 8,
                                /*pooled=*/true);
}

TEST(RecurrentDecode, BackboneOnlyBaselineMatchesToo) {
  expect_decode_matches_forward(*make_model("mamba", /*deq=*/false), 10);
}

TEST(RecurrentDecode, WarmStartNeedsFewerIterationsPerToken) {
  auto model = make_model("mamba");
  std::vector<std::int64_t> prompt;
  for (int i = 0; i < 24; ++i) prompt.push_back((5 * i + 3) % 16);
  mhd::GenerationOptions warm, cold;
  warm.max_new_tokens = cold.max_new_tokens = 8;
  warm.sampling.temperature = cold.sampling.temperature = 0.0;
  cold.warm_start = false;
  const auto a = mhd::generate(*model, prompt, warm), b = mhd::generate(*model, prompt, cold);
  EXPECT_EQ(a.iterations.size(), 24u + 7u) << "prompt positions + all generated tokens but the last";
  EXPECT_EQ(a.unconverged, 0);
  EXPECT_EQ(a.tokens, b.tokens) << "both starts reach the same equilibria, so greedy decoding agrees";
  EXPECT_LT(a.mean_iterations(), b.mean_iterations());
  std::cout << "mean solver iterations per token: warm " << a.mean_iterations() << ", cold " << b.mean_iterations()
            << "\n";
}

TEST(Sampling, TopKOneIsArgmax) {
  at::manual_seed(1);
  const auto logits = at::randn({6, 20});
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  mhd::SamplingOptions o;
  o.top_k = 1;
  o.temperature = 2.0;
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(mhd::sample_next(logits, o, gen).equal(logits.argmax(1)));
}

TEST(Sampling, TopKKeepsExactlyKTokens) {
  const auto logits = at::log(at::tensor({0.1, 0.4, 0.2, 0.3}, at::kDouble)).unsqueeze(0);
  mhd::SamplingOptions o;
  o.top_k = 2;
  auto p = mhd::sampling_distribution(logits, o);
  EXPECT_TRUE(p.allclose(at::tensor({0.0, 4.0 / 7, 0.0, 3.0 / 7}, at::kDouble).unsqueeze(0)));
}

TEST(Sampling, TopPKeepsTheSmallestSetReachingP) {
  // Probabilities 1/2, 1/4, 1/8, 1/8 at shuffled positions.
  const auto probs = at::tensor({0.125, 0.5, 0.125, 0.25}, at::kDouble);
  const auto logits = at::log(probs).unsqueeze(0);
  mhd::SamplingOptions o;
  o.top_p = 0.4;  // the top token alone has 0.5 >= 0.4
  EXPECT_TRUE(mhd::sampling_distribution(logits, o).allclose(at::tensor({0.0, 1.0, 0.0, 0.0}, at::kDouble).unsqueeze(0)));
  o.top_p = 0.7;  // 0.5 < 0.7, 0.75 >= 0.7: two tokens
  EXPECT_TRUE(
      mhd::sampling_distribution(logits, o).allclose(at::tensor({0.0, 2.0 / 3, 0.0, 1.0 / 3}, at::kDouble).unsqueeze(0)));
  o.top_p = 0.8;  // 0.75 < 0.8: three tokens (one of the two 1/8s)
  auto p = mhd::sampling_distribution(logits, o);
  EXPECT_EQ(p.gt(0).sum().item<std::int64_t>(), 3);
  EXPECT_NEAR(p[0][1].item<double>(), 0.5 / 0.875, 1e-12);
  o.top_p = 1.0;
  EXPECT_TRUE(mhd::sampling_distribution(logits, o).allclose(probs.unsqueeze(0)));
  o.top_p = 0.0;
  EXPECT_THROW(mhd::sampling_distribution(logits, o), mhd::Error);
}

TEST(Sampling, TemperatureTowardsZeroIsGreedy) {
  at::manual_seed(2);
  const auto logits = at::randn({4, 12}, at::kDouble);
  mhd::SamplingOptions o;
  o.temperature = 0.0;
  const auto one_hot = at::zeros({4, 12}, at::kDouble).scatter_(1, logits.argmax(1, true), 1.0);
  EXPECT_TRUE(mhd::sampling_distribution(logits, o).equal(one_hot));
  o.temperature = 1e-3;  // softmax(l / T) -> one-hot as T -> 0
  EXPECT_TRUE(mhd::sampling_distribution(logits, o).allclose(one_hot, 0.0, 1e-6));
  o.temperature = 1.0;  // and at T = 1 it is the softmax itself
  EXPECT_TRUE(mhd::sampling_distribution(logits, o).allclose(at::softmax(logits, 1)));
}

TEST(Sampling, SameSeedSameText) {
  auto model = make_model("mamba");
  mhd::GenerationOptions o;
  o.max_new_tokens = 12;
  o.seed = 9;
  const auto a = mhd::generate(*model, {1, 2, 3}, o), b = mhd::generate(*model, {1, 2, 3}, o);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.tokens.size(), 12u);
  EXPECT_THROW(mhd::generate(*model, {}, o), mhd::Error);
}

}  // namespace
