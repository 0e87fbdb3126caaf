// The unified model (docs/design.md §4) built from a study through the real plugins.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "core/dynamics.h"
#include "core/implicit.h"
#include "mhd/memory.h"
#include "config/model_options.h"
#include "core/model.h"
#include "plugin_host/registry.h"
#include "model_study.h"
#include "test_plugins_loaded.h"
#include "study/study.h"
#include "tasks/task.h"

namespace {

mhd::PluginRegistry& registry() { return registry_with_all_plugins(); }

const std::string kStudy = model_study("model_test", "plugin = \"anderson\"\nmax_iter = 60\ntol = 1e-9", "solver = \"anderson\"\nmax_iter = 100\ntol = 1e-11");

mhd::TrialConfig config_with(const std::string& extra = "") {
  auto study = mhd::parse_study(std::string(kStudy) + extra, "model_test.toml", registry());
  return study.trials.front();
}

at::Tensor tokens(std::int64_t B, std::int64_t L) {
  at::manual_seed(7);
  return at::randint(16, {B, L}, at::kLong);
}

TEST(UnifiedModel, LogitsHaveTheVocabularyAndPluginsAreSubmodules) {
  torch::manual_seed(0);
  mhd::UnifiedModel model(mhd::model_options(config_with(), 16), registry());
  auto out = model.forward(tokens(3, 8));
  EXPECT_EQ(out.logits.sizes(), (std::vector<std::int64_t>{3, 8, 16}));
  EXPECT_EQ(out.z_star.sizes(), (std::vector<std::int64_t>{3, 8 * 16})) << "one state per position, flattened";
  bool has_layer = false, has_block = false, has_w_out = false;
  for (const auto& item : model.named_parameters()) {
    has_layer |= item.key().rfind("layer0.", 0) == 0;
    has_block |= item.key().rfind("dynamics.block.", 0) == 0;
    has_w_out |= item.key() == "dynamics.W_out.weight";
  }
  EXPECT_TRUE(has_layer && has_block && has_w_out) << "backbone layers and the dynamics' block are registered";
  EXPECT_GT(out.forward_info.iterations, 0);
}

TEST(UnifiedModel, BackboneOnlyBaselineHasNoEquilibrium) {
  torch::manual_seed(0);
  mhd::UnifiedModel full(mhd::model_options(config_with(), 16), registry());
  auto baseline_config = config_with();
  baseline_config.model.set("deq", false);
  mhd::UnifiedModel baseline(mhd::model_options(baseline_config, 16), registry());
  EXPECT_LT(baseline.parameter_count(), full.parameter_count());
  auto out = baseline.forward(tokens(2, 8));
  EXPECT_FALSE(out.z_star.defined());
  EXPECT_EQ(out.logits.size(2), 16);
}

TEST(UnifiedModel, GradientsReachEveryComponent) {
  torch::manual_seed(0);
  mhd::UnifiedModel model(mhd::model_options(config_with(), 16), registry());
  auto out = model.forward(tokens(4, 8));
  (out.logits.pow(2).mean() + out.energy.total.mean()).backward();
  for (const auto& item : model.named_parameters()) {
    if (item.key().find("memory.") != std::string::npos) continue;  // the bank is a buffer unless learnable
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    EXPECT_GT(item.value().grad().abs().sum().item<double>(), 0.0) << item.key();
  }
  EXPECT_GT(out.backward_info->iterations, 0) << "the implicit backward solve ran";
}

// f is rebuilt here from the parts docs/design.md §4 names, with the model's own weights:
// f(Z) = W_out(g * S + (1 - g) * R), S = block(tanh(Z) + X), R = softmax(beta Q M^T) M, g = sigmoid(W_g [S ; R]).
TEST(UnifiedDynamics, ComponentsComposeAsDesigned) {
  torch::manual_seed(0);
  mhd::UnifiedModel model(mhd::model_options(config_with(), 16), registry());
  at::NoGradGuard no_grad;
  auto X = model.context(tokens(2, 8));  // [2, 8, 16]
  auto ctx = model.dynamics().prepare(X);
  auto z = at::randn({2, 8 * 16});
  auto p = model.named_parameters();
  auto bank = model.named_buffers()["dynamics.memory.patterns"];  // [8, 16]
  auto Z = z.view({2, 8, 16});
  auto S = model.dynamics().block().forward(at::tanh(Z) + X);
  auto Q = at::linear(Z, p["dynamics.W_q.weight"], p["dynamics.W_q.bias"]);
  auto R = at::softmax(1.0 * Q.matmul(bank.t()), -1).matmul(bank);  // beta = 1
  auto g = at::sigmoid(at::linear(at::cat({S, R}, -1), p["dynamics.W_g.weight"], p["dynamics.W_g.bias"]));
  auto expected = at::linear(g * S + (1 - g) * R, p["dynamics.W_out.weight"], p["dynamics.W_out.bias"]);
  EXPECT_TRUE(model.dynamics().forward(z, ctx).allclose(expected.reshape({2, -1}), 1e-5, 1e-6));
  // E = E_mem + alpha ||z - f(z)||^2 + lambda_l2 ||z||^2 with the defaults alpha = 1, lambda_l2 = 1e-3.
  auto e = model.dynamics().energy(z, ctx);
  EXPECT_TRUE(e.consistency.allclose((z - expected.reshape({2, -1})).pow(2).sum(1), 1e-4, 1e-5));
  EXPECT_TRUE(e.l2.allclose(1e-3 * z.pow(2).sum(1)));
  EXPECT_TRUE(e.total.allclose(e.memory + e.consistency + e.l2 + e.extra));
}

TEST(UnifiedDynamics, EnergyGradientIncludesTheConsistencyTermThroughF) {
  torch::manual_seed(0);
  mhd::UnifiedModel model(mhd::model_options(config_with(), 16), registry());
  model.to(at::kDouble);
  at::NoGradGuard no_grad;
  auto X = model.context(tokens(2, 8));
  auto ctx = model.dynamics().prepare(X);
  auto z = at::randn({2, 8 * 16}, at::kDouble);
  auto grad = model.dynamics().grad_energy(z, ctx);
  const double eps = 1e-6;
  for (std::int64_t i = 0; i < 8 * 16; i += 11) {
    auto up = z.clone(), down = z.clone();
    up[0][i] += eps;
    down[0][i] -= eps;
    const double numeric = (model.dynamics().energy(up, ctx).total[0] - model.dynamics().energy(down, ctx).total[0])
                               .item<double>() / (2 * eps);
    EXPECT_NEAR(grad[0][i].item<double>(), numeric, 1e-6 * std::max(1.0, std::abs(numeric)));
  }
}

TEST(UnifiedDynamics, SmoothnessTermIsTheSquaredMemoryEnergyGradient) {
  torch::manual_seed(0);
  auto config = config_with("[energy]\nlambda_smooth = 0.3\n");
  mhd::UnifiedModel model(mhd::model_options(config, 16), registry());
  model.to(at::kDouble);
  at::NoGradGuard no_grad;
  auto ctx = model.dynamics().prepare(model.context(tokens(2, 8)));
  auto z = at::randn({2, 8 * 16}, at::kDouble);
  auto e = model.dynamics().energy(z, ctx);
  // Central differences of E_mem give its gradient; the term is 0.3 ||grad||^2.
  const double eps = 1e-6;
  auto grad = at::zeros_like(z);
  for (std::int64_t i = 0; i < 8 * 16; ++i) {
    auto up = z.clone(), down = z.clone();
    up.select(1, i) += eps;
    down.select(1, i) -= eps;
    grad.select(1, i).copy_((model.dynamics().memory_energy(up, ctx) - model.dynamics().memory_energy(down, ctx)) / (2 * eps));
  }
  EXPECT_TRUE(e.smooth.allclose(0.3 * grad.pow(2).sum(1), 1e-6, 1e-9)) << e.smooth << 0.3 * grad.pow(2).sum(1);
  EXPECT_GT(e.smooth.min().item<double>(), 0.0);
  EXPECT_TRUE(e.total.allclose(e.memory + e.consistency + e.l2 + e.smooth + e.extra));
}

TEST(UnifiedModel, WarmStartResumesFromThePreviousEquilibrium) {
  torch::manual_seed(0);
  auto config = config_with("");
  config.solve.set("warm_start", true);
  config.solve.set("tol", 1e-6);
  mhd::UnifiedModel model(mhd::model_options(config, 16), registry());
  model.eval();
  at::NoGradGuard no_grad;
  auto input = tokens(3, 8);
  auto cold = model.forward(input);
  auto warm = model.forward(input);
  EXPECT_FALSE(cold.warm_started);
  EXPECT_TRUE(warm.warm_started);
  EXPECT_TRUE(cold.forward_info.converged);
  EXPECT_EQ(warm.forward_info.iterations, 1) << "already at the equilibrium: the first residual is below tol";
  EXPECT_GT(cold.forward_info.iterations, 1);
  EXPECT_LT((warm.z_star - cold.z_star).abs().max().item<double>(), 1e-4);
  model.reset_warm_start();
  EXPECT_FALSE(model.forward(input).warm_started);
}

TEST(UnifiedModel, NoveltyGatedWritesStoreOnlyWhatTheMemoryLacks) {
  torch::manual_seed(0);
  auto config = config_with("");
  config.model.set("memory_writes", true);
  config.model.set("write_threshold", 0.999);
  mhd::UnifiedModel model(mhd::model_options(config, 16), registry());
  model.train();
  auto input = tokens(3, 8);
  auto first = model.forward(input);
  EXPECT_EQ(first.memory_writes, 3) << "a random bank holds nothing like the three queries";
  EXPECT_EQ(model.commit_memory_writes(), 3);
  EXPECT_EQ(model.commit_memory_writes(), 0) << "a commit writes once";
  {
    at::NoGradGuard no_grad;
    // One query per sequence: its last position's W_q z*_{L-1}.
    auto last = first.z_star.detach().narrow(1, 7 * 16, 16);
    auto stored = model.dynamics().memory()->max_similarity(model.dynamics().query(last));
    EXPECT_TRUE(at::allclose(stored, at::ones_like(stored), 1e-5, 1e-5)) << "the queries W_q z* were stored";
  }
  auto never = config_with("");
  never.model.set("memory_writes", true);
  never.model.set("write_threshold", -1.0);  // cosine < -1 never holds
  mhd::UnifiedModel no_novelty(mhd::model_options(never, 16), registry());
  no_novelty.train();
  EXPECT_EQ(no_novelty.forward(input).memory_writes, 0);
  model.eval();
  EXPECT_EQ(model.forward(input).memory_writes, -1) << "no writes outside training";
}

// Implicit gradients of the whole model equal unrolled backprop through the same solve, in float64.
TEST(UnifiedModel, ImplicitGradientMatchesUnrolledBackprop) {
  torch::manual_seed(0);
  auto implicit_config = config_with();
  auto unrolled_config = config_with();
  unrolled_config.backward.set("mode", std::string("unrolled"));
  unrolled_config.solve.set("max_iter", std::int64_t{400});
  mhd::UnifiedModel implicit_model(mhd::model_options(implicit_config, 16), registry());
  mhd::UnifiedModel unrolled_model(mhd::model_options(unrolled_config, 16), registry());
  implicit_model.to(at::kDouble);
  unrolled_model.to(at::kDouble);
  {
    at::NoGradGuard no_grad;  // same weights in both
    auto src = implicit_model.named_parameters();
    for (auto& item : unrolled_model.named_parameters()) item.value().copy_(src[item.key()]);
    auto bufs = implicit_model.named_buffers();
    for (auto& item : unrolled_model.named_buffers()) item.value().copy_(bufs[item.key()]);
  }
  auto input = tokens(2, 8);
  auto a = implicit_model.forward(input);
  auto b = unrolled_model.forward(input);
  ASSERT_TRUE(a.forward_info.converged) << "final rel residual " << a.forward_info.rel_trace.back();
  ASSERT_TRUE(b.forward_info.converged) << "final rel residual " << b.forward_info.rel_trace.back();
  EXPECT_LT((a.z_star - b.z_star).abs().max().item<double>(), 1e-7);
  a.logits.pow(2).sum().backward();
  b.logits.pow(2).sum().backward();
  auto pa = implicit_model.named_parameters();
  std::size_t compared = 0;
  for (const auto& item : unrolled_model.named_parameters()) {
    const auto& ga = pa[item.key()].grad();
    ASSERT_EQ(ga.defined(), item.value().grad().defined()) << item.key() << ": a gradient in one mode only";
    if (!ga.defined()) continue;
    const double scale = std::max(item.value().grad().norm().item<double>(), 1e-8);
    EXPECT_LT((ga - item.value().grad()).norm().item<double>() / scale, 1e-4) << item.key();
    if (item.key().rfind("dynamics.", 0) == 0) ++compared;
  }
  // The dynamics' own maps (W_q, W_g, W_out, the block's weights) are where the two modes differ.
  EXPECT_GE(compared, 6u) << "too few dynamics parameters had gradients to compare";
}

}  // namespace

namespace {

// The head runs only where a target exists (UnifiedModel::forward's `scored` mask): the loss, the
// accuracy and every gradient equal those of the full [B, L, V] logits with ignored positions.
TEST(UnifiedModel, HeadAtTheLabelledPositionsGivesTheFullLossAccuracyAndGradients) {
  const auto trial = config_with();
  auto task = mhd::make_task(trial.task_kind, trial.task, 3);
  const mhd::Batch batch = task->train_batch(5);
  const auto labelled = batch.targets != mhd::kIgnoreIndex;  // [B, L]
  ASSERT_GT(labelled.sum().item<std::int64_t>(), 0);
  ASSERT_LT(labelled.sum().item<std::int64_t>(), labelled.numel()) << "the task must leave positions unscored";

  torch::manual_seed(0);
  mhd::UnifiedModel model(mhd::model_options(trial, task->vocab_size()), registry());
  auto full = model.forward(batch.inputs);
  ASSERT_EQ(full.logits.dim(), 3);
  auto full_loss = at::cross_entropy_loss(full.logits.reshape({-1, full.logits.size(2)}), batch.targets.reshape({-1}),
                                          {}, at::Reduction::Mean, mhd::kIgnoreIndex);
  const auto full_right = (full.logits.argmax(2) == batch.targets).logical_and(labelled).sum().item<double>();
  model.zero_grad();
  full_loss.backward();
  std::vector<at::Tensor> full_grads;
  for (const auto& p : model.parameters()) full_grads.push_back(p.grad().defined() ? p.grad().clone() : at::Tensor());

  auto scored = model.forward(batch.inputs, false, labelled);
  ASSERT_EQ(scored.logits.dim(), 2);
  EXPECT_EQ(scored.logits.size(0), labelled.sum().item<std::int64_t>());
  const auto labels = batch.targets.masked_select(labelled);
  auto scored_loss = at::cross_entropy_loss(scored.logits, labels);
  const auto scored_right = (scored.logits.argmax(1) == labels).sum().item<double>();
  model.zero_grad();
  scored_loss.backward();

  EXPECT_NEAR(scored_loss.item<double>(), full_loss.item<double>(), 1e-6);
  EXPECT_EQ(scored_right, full_right);
  std::size_t compared = 0;
  const auto params = model.parameters();
  for (std::size_t i = 0; i < params.size(); ++i) {
    ASSERT_EQ(params[i].grad().defined(), full_grads[i].defined());
    if (!full_grads[i].defined()) continue;
    EXPECT_LT((params[i].grad() - full_grads[i]).abs().max().item<double>(), 1e-6) << "parameter " << i;
    ++compared;
  }
  EXPECT_GT(compared, params.size() / 2) << "most parameters must receive a gradient to compare";
}

}  // namespace

namespace {

std::string with(const std::string& anchor, const std::string& added) {
  std::string text = kStudy;
  const auto at = text.find(anchor);
  return text.insert(at + anchor.size(), "\n" + added);
}

// The pooled form gives every position the state of the whole sequence: the validator refuses it
// with a task scored before the last position, at the key, and accepts it with the seed's recall
// experiment (one query, at the end).
TEST(UnifiedModel, PooledFormOnlyWithTargetsAtTheLastPosition) {
  const std::string pooled = with("residual = false", "equilibrium = \"pooled\"");
  try {
    mhd::parse_study(pooled, "pooled.toml", registry());
    FAIL() << "pooled with targets at every query position must not validate";
  } catch (const mhd::Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("pooled.toml:"), std::string::npos) << message;
    EXPECT_NE(message.find("model.equilibrium"), std::string::npos) << message;
    EXPECT_NE(message.find("would see tokens after t"), std::string::npos) << message;
  }
  std::string text = with("seq_len = 8", "query_at_end = true");
  text.insert(text.find("residual = false") + 16, "\nequilibrium = \"pooled\"");
  auto trial = mhd::parse_study(text, "pooled_ok.toml", registry()).trials.front();
  torch::manual_seed(0);
  mhd::UnifiedModel model(mhd::model_options(trial, 16), registry());
  auto out = model.forward(tokens(3, 8));
  EXPECT_EQ(out.z_star.sizes(), (std::vector<std::int64_t>{3, 16})) << "one state per sequence";
  // Broadcast over L: every position's logits see the same z*, so they differ only through X.
  EXPECT_EQ(out.logits.sizes(), (std::vector<std::int64_t>{3, 8, 16}));
}

// query_at_end: one query, its key the last token and its label there; nothing else is scored.
TEST(UnifiedModel, RecallWithTheQueryAtTheEndScoresOnlyTheLastPosition) {
  const auto trial = mhd::parse_study(with("seq_len = 8", "query_at_end = true"), "end.toml", registry()).trials.front();
  auto task = mhd::make_task(trial.task_kind, trial.task, 5);
  const mhd::Batch batch = task->train_batch(6);
  const auto labelled = batch.targets != mhd::kIgnoreIndex;  // [B, L]
  EXPECT_TRUE(labelled.select(1, 7).all().item<bool>());
  EXPECT_EQ(labelled.sum().item<std::int64_t>(), 6);
  // The query key is one of the row's context keys (positions 0, 2), and the label its value.
  for (std::int64_t b = 0; b < 6; ++b) {
    const auto row = batch.inputs[b];
    const auto key = row[7].item<std::int64_t>();
    const auto label = batch.targets[b][7].item<std::int64_t>();
    bool found = false;
    for (std::int64_t p = 0; p < 2; ++p)
      if (row[2 * p].item<std::int64_t>() == key) found = row[2 * p + 1].item<std::int64_t>() == label;
    EXPECT_TRUE(found) << "row " << b;
  }
}

// The context source adds W_k and W_v (keys and values from X); the bank source has neither.
TEST(UnifiedModel, ContextSourceReadsKeysAndValuesProjectedFromX) {
  auto has = [](mhd::UnifiedModel& m, const std::string& name) {
    for (const auto& item : m.named_parameters())
      if (item.key() == name) return true;
    return false;
  };
  torch::manual_seed(0);
  mhd::UnifiedModel bank(mhd::model_options(config_with(), 16), registry());
  auto context_trial = mhd::parse_study(with("residual = false", "memory_source = \"context\""), "c.toml", registry())
                           .trials.front();
  mhd::UnifiedModel context(mhd::model_options(context_trial, 16), registry());
  EXPECT_FALSE(has(bank, "dynamics.W_k.weight"));
  EXPECT_TRUE(has(context, "dynamics.W_k.weight") && has(context, "dynamics.W_v.weight"));
  auto out = context.forward(tokens(2, 8));
  out.logits.pow(2).mean().backward();
  EXPECT_GT(context.named_parameters()["dynamics.W_v.weight"].grad().abs().sum().item<double>(), 0.0);
}

}  // namespace

namespace {

// The implicit gradient of the whole sequence model against central finite differences of the
// loss, float64, for entries of the dynamics' maps and of the block (docs/design.md §4).
TEST(UnifiedModel, ImplicitGradientMatchesFiniteDifferences) {
  torch::manual_seed(0);
  mhd::UnifiedModel model(mhd::model_options(config_with(), 16), registry());
  model.to(at::kDouble);
  model.eval();  // no memory writes, no warm start: the loss is a function of the weights alone
  const auto input = tokens(2, 8);
  auto loss_of = [&] { return model.forward(input).logits.pow(2).mean(); };
  auto loss = loss_of();
  loss.backward();
  auto params = model.named_parameters();
  const double eps = 1e-6;
  std::size_t compared = 0;
  for (const std::string name : {"dynamics.W_q.weight", "dynamics.W_out.weight", "dynamics.W_g.bias",
                                 "dynamics.block.in_proj.weight"}) {
    if (!params.contains(name)) continue;
    auto p = params[name];
    const auto flat = p.view({-1});
    const auto grad = p.grad().view({-1});
    for (std::int64_t i : {std::int64_t{0}, flat.numel() / 3, flat.numel() - 1}) {
      at::NoGradGuard no_grad;
      const double saved = flat[i].item<double>();
      flat[i] = saved + eps;
      const double up = loss_of().item<double>();
      flat[i] = saved - eps;
      const double down = loss_of().item<double>();
      flat[i] = saved;
      const double numeric = (up - down) / (2 * eps);
      EXPECT_NEAR(grad[i].item<double>(), numeric, 1e-4 * std::max(1.0, std::abs(numeric))) << name << "[" << i << "]";
      ++compared;
    }
  }
  EXPECT_GE(compared, 9u) << "the named parameters must exist";
}

}  // namespace
