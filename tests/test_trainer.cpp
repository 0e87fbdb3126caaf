// The training loop: curriculum schedules, the memory switch, validation,
// the Lipschitz term by power iteration, exact resume from a checkpoint, continual learning.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <stdexcept>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "mhd/error.h"
#include "mhd/kits/jacobian.h"
#include "mhd/memory.h"
#include "config/model_options.h"
#include "core/model.h"
#include "study/study.h"
#include "tasks/task.h"
#include "train/divergence.h"
#include "train/trainer.h"
#include "test_plugins_loaded.h"

namespace {

namespace fs = std::filesystem;

const char* kStudy = R"(
[study]
name = "trainer_test"
threads = 1
[task]
kind = "associative_recall"
vocab_size = 32
num_pairs = 2
seq_len = 8
[model]
d_model = 8
n_layers = 1
[backbone]
plugin = "mamba"
d_state = 4
[memory]
plugin = "hopfield"
size = 8
[solver]
plugin = "anderson"
max_iter = 20
tol = 1e-4
)";

// `train` is the body of [train]; `model` more [model] keys; `tables` more tables before [train].
mhd::TrialConfig config(const std::string& train, const std::string& model = "", const std::string& tables = "") {
  std::string text = std::string(kStudy) + tables + "\n[train]\nbatch = 4\nlog_every = 0\n" + train;
  text.insert(text.find("n_layers = 1\n") + 13, model);
  return mhd::parse_study(text, "trainer_test.toml", registry_with_all_plugins()).trials.front();
}

// Every metric of a trial: name -> step -> value.
using Metrics = std::map<std::string, std::map<std::int64_t, double>>;

struct TrialRun {
  Metrics metrics;
  std::vector<mhd::ProbePoint> points;
  mhd::TrainResult result;
};

TrialRun train(const mhd::TrialConfig& c, const mhd::TrainOptions& options = {},
          const std::function<void(const mhd::TrainProgress&)>& on_progress = nullptr) {
  TrialRun run;
  mhd::MetricSink sink;
  sink.metric = [&](std::int64_t step, const std::string& name, double value) { run.metrics[name][step] = value; };
  sink.point = [&](const mhd::ProbePoint& p) { run.points.push_back(p); };
  run.result = mhd::train_trial(c, registry_with_all_plugins(), sink, on_progress, options);
  return run;
}

std::string study_error(const std::string& train, const std::string& model = "") {
  try {
    config(train, model);
  } catch (const mhd::Error& e) {
    return e.what();
  }
  return "";
}

// --- curriculum ------------------------------------------------------------------------------

TEST(Curriculum, SchedulesGiveTheExpectedValues) {
  const auto c = config(
      "lr = 1e-3\nwarmup_steps = 4\nschedule_steps = 5\nmax_iter_start = 4\ntol_start = 1e-2\nmemory_enable_step = 3\n"
      "steps = 10\n");
  auto at = [&](std::int64_t s) { return mhd::curriculum_at(c, s); };
  EXPECT_DOUBLE_EQ(at(1).lr, 2.5e-4);
  EXPECT_DOUBLE_EQ(at(3).lr, 7.5e-4);
  EXPECT_DOUBLE_EQ(at(4).lr, 1e-3);
  EXPECT_DOUBLE_EQ(at(9).lr, 1e-3);
  EXPECT_EQ(at(1).max_iter, 4);
  EXPECT_EQ(at(3).max_iter, 12);  // halfway from 4 to 20
  EXPECT_EQ(at(5).max_iter, 20);
  EXPECT_EQ(at(8).max_iter, 20);
  EXPECT_DOUBLE_EQ(at(1).tol, 1e-2);
  EXPECT_NEAR(at(3).tol, 1e-3, 1e-15);  // halfway in log from 1e-2 to 1e-4
  EXPECT_DOUBLE_EQ(at(5).tol, 1e-4);
  EXPECT_FALSE(at(1).memory_enabled);
  EXPECT_FALSE(at(2).memory_enabled);
  EXPECT_TRUE(at(3).memory_enabled);

  const auto none = config("lr = 1e-3\nsteps = 10\n");
  EXPECT_DOUBLE_EQ(mhd::curriculum_at(none, 1).lr, 1e-3);
  EXPECT_EQ(mhd::curriculum_at(none, 1).max_iter, 20);
  EXPECT_DOUBLE_EQ(mhd::curriculum_at(none, 1).tol, 1e-4);
  EXPECT_TRUE(mhd::curriculum_at(none, 1).memory_enabled);
}

TEST(Curriculum, ScheduledValuesAreLoggedAndUsed) {
  const auto c = config("steps = 4\neval_every = 0\nwarmup_steps = 2\nschedule_steps = 4\nmax_iter_start = 2\n"
                        "tol_start = 1e-12\n");
  const TrialRun run = train(c);
  ASSERT_EQ(run.result.status, mhd::TrialStatus::Done) << run.result.error;
  EXPECT_DOUBLE_EQ(run.metrics.at("lr").at(1), 5e-4);
  EXPECT_DOUBLE_EQ(run.metrics.at("lr").at(2), 1e-3);
  EXPECT_EQ(run.metrics.at("solver_max_iter").at(1), 2);
  EXPECT_EQ(run.metrics.at("solver_max_iter").at(4), 20);
  // tol 1e-12 cannot be reached in 2 iterations: the solve used the scheduled limit.
  EXPECT_EQ(run.metrics.at("solver_iters").at(1), 2);
  EXPECT_DOUBLE_EQ(run.metrics.at("solver_tol").at(4), 1e-4);
}

TEST(Curriculum, MemoryBranchIsOffBeforeTheEnableStep) {
  const auto c = config("steps = 4\neval_every = 1\nmemory_enable_step = 3\n");
  const TrialRun run = train(c);
  ASSERT_EQ(run.result.status, mhd::TrialStatus::Done) << run.result.error;
  const auto& enabled = run.metrics.at("memory_enabled");
  EXPECT_EQ(enabled.at(1), 0);
  EXPECT_EQ(enabled.at(2), 0);
  EXPECT_EQ(enabled.at(3), 1);
  // E_mem is exactly 0 without retrieval and the memory's statistics are not logged.
  EXPECT_EQ(run.metrics.at("energy_memory").at(1), 0.0);
  EXPECT_EQ(run.metrics.at("energy_memory").at(2), 0.0);
  EXPECT_NE(run.metrics.at("energy_memory").at(3), 0.0);
  bool stats_before = false, stats_after = false;
  for (const auto& [name, series] : run.metrics) {
    if (name.rfind("memory_", 0) != 0 || name == "memory_enabled") continue;
    stats_before |= series.count(1) + series.count(2) > 0;
    stats_after |= series.count(3) > 0;
  }
  EXPECT_FALSE(stats_before);
  EXPECT_TRUE(stats_after) << "the memory plugin reports statistics once retrieval is on";
}

TEST(Curriculum, WithoutRetrievalTheOutputIgnoresTheMemory) {
  const auto c = config("steps = 1\n");
  torch::manual_seed(3);
  mhd::UnifiedModel model(mhd::model_options(c, 32), registry_with_all_plugins());
  model.eval();
  torch::NoGradGuard no_grad;
  auto tokens = at::randint(32, {3, 8}, at::kLong);
  auto perturb_memory = [&] {
    for (auto& p : model.dynamics().memory()->parameters()) p.add_(at::randn_like(p));
    for (auto& b : model.dynamics().memory()->buffers())
      if (b.is_floating_point()) b.add_(at::randn_like(b));
  };
  model.set_memory_enabled(false);
  auto before = model.forward(tokens).logits;
  perturb_memory();
  EXPECT_TRUE(at::allclose(model.forward(tokens).logits, before, 0, 0)) << "retrieval off: the memory contributes nothing";
  model.set_memory_enabled(true);
  before = model.forward(tokens).logits;
  perturb_memory();
  EXPECT_FALSE(at::allclose(model.forward(tokens).logits, before)) << "retrieval on: the memory matters";
}

// --- validation ------------------------------------------------------------------------------

TEST(Validation, IterationStatisticsMatchAHandCount) {
  const auto even = mhd::iteration_stats({5, 1, 3, 9});
  EXPECT_DOUBLE_EQ(even.mean, 4.5);
  EXPECT_DOUBLE_EQ(even.median, 4.0);
  EXPECT_DOUBLE_EQ(even.max, 9.0);
  const auto odd = mhd::iteration_stats({7, 2, 3});
  EXPECT_DOUBLE_EQ(odd.median, 3.0);
  EXPECT_DOUBLE_EQ(odd.mean, 4.0);
}

TEST(Validation, EveryNStepsWithConvergenceAndIterations) {
  // tol 1e-12 in 3 iterations: no solve converges and each takes exactly 3 iterations.
  auto c = config("steps = 4\neval_every = 0\nvalidate_every = 2\nvalidate_batches = 3\n");
  c.solve.set("max_iter", std::int64_t{3});
  c.solve.set("tol", 1e-12);
  const TrialRun run = train(c);
  ASSERT_EQ(run.result.status, mhd::TrialStatus::Done) << run.result.error;
  for (const char* name : {"val_loss", "val_accuracy", "val_convergence_rate", "val_iters_mean", "val_iters_median",
                           "val_iters_max"}) {
    ASSERT_TRUE(run.metrics.count(name)) << name;
    EXPECT_EQ(run.metrics.at(name).size(), 2u) << name;
    EXPECT_TRUE(run.metrics.at(name).count(2) && run.metrics.at(name).count(4)) << name;
  }
  EXPECT_EQ(run.metrics.at("val_convergence_rate").at(4), 0.0);
  EXPECT_EQ(run.metrics.at("val_iters_mean").at(4), 3.0);
  EXPECT_EQ(run.metrics.at("val_iters_median").at(4), 3.0);
  EXPECT_EQ(run.metrics.at("val_iters_max").at(4), 3.0);

  // A loose tolerance: every validation solve converges, well before the cap of 50 (a count that
  // reported max_iter, or the training solves' limit of 3, would fail here).
  c.solve.set("max_iter", std::int64_t{50});
  c.solve.set("tol", 0.5);
  const TrialRun loose = train(c);
  EXPECT_EQ(loose.metrics.at("val_convergence_rate").at(4), 1.0);
  EXPECT_GE(loose.metrics.at("val_iters_max").at(4), 1.0);
  EXPECT_LT(loose.metrics.at("val_iters_max").at(4), 3.0);
  EXPECT_LE(loose.metrics.at("val_iters_mean").at(4), loose.metrics.at("val_iters_max").at(4));
}

// --- stability term --------------------------------------------------------------------------

TEST(Stability, PowerIterationSpectralNormHasTheSingularVectorGradient) {
  // f(z) = W z: ||J||_2 = sigma_max(W), d sigma / dW = u v^T (top singular vectors).
  torch::manual_seed(1);
  auto W = at::randn({5, 5}, at::kDouble).requires_grad_(true);
  mhd::TensorMap f = [&](const at::Tensor& z) { return at::matmul(z, W.t()); };
  auto z = at::randn({1, 5}, at::kDouble);
  auto sigma = mhd::jacobian_spectral_norm_trainable(f, z, 200);
  auto svd = at::linalg_svd(W.detach(), false);
  const double expected = std::get<1>(svd)[0].item<double>();
  EXPECT_NEAR(sigma.item<double>(), expected, 1e-8);
  sigma.sum().backward();
  auto u = std::get<0>(svd).select(1, 0), v = std::get<2>(svd).select(0, 0);
  auto grad = at::outer(u, v);
  // Singular vectors are defined up to a common sign; u v^T is not.
  EXPECT_TRUE(at::allclose(W.grad(), grad, 1e-6, 1e-6)) << W.grad() << "\n" << grad;
}

TEST(Stability, PowerIterationEstimateIsLoggedAndTrains) {
  const auto c = config("steps = 2\neval_every = 0\nobjective = { stability = 1.0, contraction_target = 0.0, "
                        "lipschitz = \"power_iteration\", lipschitz_iterations = 5 }\n");
  const TrialRun run = train(c);
  ASSERT_EQ(run.result.status, mhd::TrialStatus::Done) << run.result.error;
  ASSERT_TRUE(run.metrics.count("lipschitz_power"));
  EXPECT_FALSE(run.metrics.count("lipschitz_fd"));
  EXPECT_GT(run.metrics.at("lipschitz_power").at(1), 0.0);
  // contraction_target 0: the term is the estimate itself.
  EXPECT_NEAR(run.metrics.at("objective_stability").at(1), run.metrics.at("lipschitz_power").at(1), 1e-6);

  // And it trains: with the term at weight 1 the spectral norm of J_f(z*) ends lower than with it
  // at a weight too small to matter, from the same start (same seed, same value at step 1).
  const std::string keys = "steps = 12\neval_every = 0\nlr = 0.01\n";
  const auto trained = train(config(keys + "objective = { stability = 1.0, contraction_target = 0.0, "
                                           "lipschitz = \"power_iteration\", lipschitz_iterations = 5 }\n"));
  const auto control = train(config(keys + "objective = { stability = 1e-9, contraction_target = 0.0, "
                                           "lipschitz = \"power_iteration\", lipschitz_iterations = 5 }\n"));
  ASSERT_EQ(trained.result.status, mhd::TrialStatus::Done) << trained.result.error;
  ASSERT_EQ(control.result.status, mhd::TrialStatus::Done) << control.result.error;
  const auto& with = trained.metrics.at("lipschitz_power");
  const auto& without = control.metrics.at("lipschitz_power");
  EXPECT_NEAR(with.at(1), without.at(1), 1e-6);
  EXPECT_LT(with.at(12), 0.8 * without.at(12)) << "with " << with.at(12) << " without " << without.at(12);
  EXPECT_LT(with.at(12), with.at(1));
}

// --- exact resume ----------------------------------------------------------------------------

struct Interrupted : std::runtime_error {
  Interrupted() : std::runtime_error("interrupted") {}
};

TEST(Resume, ResumedMetricsEqualAnUninterruptedRun) {
  const auto dir = fs::temp_directory_path() / ("mhd_trainer_resume_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  // The stability and Jacobian terms draw from torch's generator; the memory bank is trained; the
  // curriculum's values depend on the step alone.
  const auto c = config("steps = 6\neval_every = 2\ncheckpoint_every = 3\nwarmup_steps = 2\nvalidate_every = 3\n"
                        "schedule_steps = 5\nmax_iter_start = 3\nmemory_enable_step = 5\n"
                        "objective = { stability = 0.1, jacobian = 0.01 }\n");
  mhd::TrainOptions uninterrupted{(dir / "a.ckpt").string(), false};
  const TrialRun full = train(c, uninterrupted);
  ASSERT_EQ(full.result.status, mhd::TrialStatus::Done) << full.result.error;

  mhd::TrainOptions options{(dir / "b.ckpt").string(), true};
  EXPECT_THROW(train(c, options,
                     [](const mhd::TrainProgress& p) {
                       if (p.step == 4) throw Interrupted();  // killed after step 4, its checkpoint is step 3's
                     }),
               Interrupted);
  EXPECT_TRUE(fs::exists(dir / "b.ckpt.trainer"));
  const TrialRun resumed = train(c, options);
  ASSERT_EQ(resumed.result.status, mhd::TrialStatus::Done) << resumed.result.error;
  EXPECT_EQ(resumed.result.resumed_from_step, 3);
  EXPECT_EQ(resumed.metrics.at("resumed_from_step").at(3), 3.0);

  int compared = 0;
  for (const auto& [name, series] : full.metrics) {
    // wall time and resident memory differ between runs
    if (name == "step_ms" || name == "solver_ms" || name == "resumed_from_step" || name == "peak_rss_mb") continue;
    for (const auto& [step, value] : series) {
      if (step < 4) continue;
      ASSERT_TRUE(resumed.metrics.count(name) && resumed.metrics.at(name).count(step)) << name << " at " << step;
      EXPECT_EQ(resumed.metrics.at(name).at(step), value) << name << " at step " << step;
      ++compared;
    }
  }
  EXPECT_GT(compared, 40);
  for (const auto& [name, series] : resumed.metrics)
    for (const auto& [step, value] : series)
      EXPECT_TRUE(step == 0 || step >= 3) << name << " at step " << step << " logged again after resuming";
  fs::remove_all(dir);
}

TEST(Resume, TaskBatchesAreAFunctionOfSeedAndStep) {
  auto params = mhd::Params::defaults(mhd::task_schema("associative_recall"));
  auto a = mhd::make_task("associative_recall", params, 4);
  auto b = mhd::make_task("associative_recall", params, 4);
  a->seek(1);
  a->train_batch(8);
  a->seek(5);
  b->seek(5);
  EXPECT_TRUE(a->train_batch(8).inputs.equal(b->train_batch(8).inputs));
  b->seek(6);
  a->seek(5);
  EXPECT_FALSE(a->train_batch(8).inputs.equal(b->train_batch(8).inputs));
}

// --- continual learning ----------------------------------------------------------------------

TEST(Continual, ForgettingOfAKnownMatrix) {
  const std::vector<std::vector<double>> A{{0.9, 0.1, 0.2}, {0.5, 0.8, 0.1}, {0.3, 0.6, 0.7}};
  // j = 0: max(0.9, 0.5) - 0.3 = 0.6; j = 1: max(0.1, 0.8) - 0.6 = 0.2; mean 0.4.
  EXPECT_NEAR(mhd::average_forgetting(A), 0.4, 1e-12);
  EXPECT_NEAR(mhd::average_final_accuracy(A), (0.3 + 0.6 + 0.7) / 3, 1e-12);
  EXPECT_EQ(mhd::average_forgetting({{0.5}}), 0.0);
}

TEST(Continual, TaskPartsAreDisjointVocabularySlices) {
  auto params = mhd::Params::defaults(mhd::task_schema("associative_recall"));  // V = 64, 4 pairs
  auto task = mhd::make_task("associative_recall", params, 0);
  task->select_part(1, 3);  // keys: 31 / 3 = 10 per part -> [11, 21); values: 32 / 3 = 10 -> [42, 52)
  EXPECT_DOUBLE_EQ(task->chance_accuracy(), 0.1);
  for (const auto& batch : {task->train_batch(16), task->eval_batch(16, 0)}) {
    auto context = batch.inputs.slice(1, 0, 8);
    auto keys = context.slice(1, 0, 8, 2), values = context.slice(1, 1, 8, 2);
    EXPECT_GE(keys.min().item<std::int64_t>(), 11);
    EXPECT_LT(keys.max().item<std::int64_t>(), 21);
    EXPECT_GE(values.min().item<std::int64_t>(), 42);
    EXPECT_LT(values.max().item<std::int64_t>(), 52);
  }
  EXPECT_THROW(task->select_part(0, 9), mhd::Error);  // 3 keys per part < 4 pairs
}

TEST(Continual, AccuracyMatrixAndForgettingFromATrial) {
  // Enough steps at a high enough lr that the matrix is not all chance (a forgetting of 0 either way).
  const auto c = config("steps = 30\nlr = 0.03\neval_every = 0\neval_batches = 4\ncontinual_tasks = 3\n");
  const TrialRun run = train(c);
  ASSERT_EQ(run.result.status, mhd::TrialStatus::Done) << run.result.error;
  std::vector<std::vector<double>> A(3, std::vector<double>(3, -1));
  std::set<std::pair<std::int64_t, std::int64_t>> cells;
  for (const auto& p : run.points) {
    if (p.probe != "continual") continue;
    EXPECT_EQ(p.name, "accuracy_matrix");
    ASSERT_TRUE(p.i >= 0 && p.i < 3 && p.j >= 0 && p.j < 3);
    EXPECT_TRUE(cells.emplace(p.i, p.j).second) << "one entry per cell";
    A[p.i][p.j] = p.value;
  }
  EXPECT_EQ(cells.size(), 9u);
  // Rows after steps 10, 20, 30; the column series are the same numbers.
  for (std::int64_t j = 0; j < 3; ++j)
    for (std::int64_t i = 0; i < 3; ++i)
      EXPECT_EQ(run.metrics.at("continual_acc_task" + std::to_string(j)).at(10 * (i + 1)), A[i][j]);
  // Forgetting by hand (docs/studies.md): mean over j < K-1 of max_{i < K-1} A[i][j] - A[K-1][j];
  // the average accuracy is the mean of the last row. Not the trainer's own functions.
  const double forgetting =
      (std::max(A[0][0], A[1][0]) - A[2][0] + std::max(A[0][1], A[1][1]) - A[2][1]) / 2.0;
  EXPECT_NE(forgetting, 0.0) << "a matrix without forgetting would pass a trainer that logs 0";
  EXPECT_NEAR(run.metrics.at("continual_forgetting").at(30), forgetting, 1e-12);
  EXPECT_NEAR(run.metrics.at("continual_avg_accuracy").at(30), (A[2][0] + A[2][1] + A[2][2]) / 3.0, 1e-12);
  for (const auto& row : A)
    for (const double a : row) EXPECT_TRUE(a >= 0.0 && a <= 1.0) << a;
}

// --- divergence beyond non-finite values (train/divergence.h) --------------------------------

TEST(Divergence, LossFarAboveItsRunningMedianForPatienceStepsIsABlowUp) {
  mhd::DivergenceOptions o;
  o.loss_factor = 10;
  o.residual_factor = 0;
  o.window = 4;
  o.patience = 3;
  mhd::DivergenceMonitor monitor(o);
  std::int64_t step = 0;
  for (double loss : {2.0, 1.8, 1.9, 1.7}) EXPECT_FALSE(monitor.observe(++step, loss, std::nullopt)) << step;
  // Two spikes, then back: a spike is not a blow-up.
  EXPECT_FALSE(monitor.observe(++step, 500.0, std::nullopt));
  EXPECT_FALSE(monitor.observe(++step, 500.0, std::nullopt));
  EXPECT_FALSE(monitor.observe(++step, 1.6, std::nullopt));
  // Median of the window (1.8, 1.9, 1.7, 1.6) is 1.75: 17.6 is above 10 x, 17.4 is not.
  EXPECT_FALSE(monitor.observe(++step, 17.6, std::nullopt));
  EXPECT_FALSE(monitor.observe(++step, 17.4, std::nullopt));  // resets the run
  EXPECT_FALSE(monitor.observe(++step, 1e4, std::nullopt));
  EXPECT_FALSE(monitor.observe(++step, 2e4, std::nullopt));
  const auto why = monitor.observe(++step, 3e4, std::nullopt);
  ASSERT_TRUE(why);
  EXPECT_NE(why->find("loss 3e+04 above 10 x its running median"), std::string::npos) << *why;
  EXPECT_NE(why->find("for 3 steps (from step 10)"), std::string::npos) << *why;
}

TEST(Divergence, ExplodingForwardResidualIsABlowUpAndZeroFactorsAreOff) {
  mhd::DivergenceOptions o;
  o.loss_factor = 10;
  o.residual_factor = 1000;
  o.window = 3;
  o.patience = 2;
  mhd::DivergenceMonitor monitor(o), off(mhd::DivergenceOptions{0, 0, 3, 2});
  std::int64_t step = 0;
  for (double r : {1e-3, 2e-3, 1e-3}) EXPECT_FALSE(monitor.observe(++step, 1.0, r));
  EXPECT_FALSE(monitor.observe(++step, 1.0, 5.0));
  const auto why = monitor.observe(++step, 1.0, 8.0);
  ASSERT_TRUE(why);
  EXPECT_EQ(why->rfind("forward abs_residual 8 above 1000 x", 0), 0u) << *why;
  for (double loss : {1.0, 1.0, 1.0, 1e9, 1e9, 1e9}) EXPECT_FALSE(off.observe(++step, loss, loss));
}

// A planted blow-up: at lr 0.1 the forward residual of this model explodes from 1e-4 to 1e6 within
// a few steps while the loss stays finite (about 3) for many more; the non-finite check alone let it
// run on (the negative control, with the rule off). The same trial at the default lr is done.
TEST(Divergence, AHugeLearningRateEndsTheTrialDivergedANormalOneIsDone) {
  const std::string keys = "steps = 40\neval_every = 0\ndiverge_window = 5\ndiverge_patience = 3\n";
  const TrialRun blown = train(config(keys + "lr = 0.1\n"));
  ASSERT_EQ(blown.result.status, mhd::TrialStatus::Diverged) << blown.result.error;
  EXPECT_EQ(blown.result.error.rfind("forward abs_residual", 0), 0u) << blown.result.error;
  EXPECT_NE(blown.result.error.find("above 1000 x its running median"), std::string::npos) << blown.result.error;
  EXPECT_EQ(blown.metrics.at("diverged_step").begin()->first, blown.result.diverged_step);
  EXPECT_LT(blown.result.diverged_step, 40);

  // Without the rule only the non-finite check is left: the exploded trial runs on well past the step
  // where the rule stopped it, to its end or until the loss finally overflows (which step that is
  // depends on rounding, so both are accepted).
  const TrialRun unguarded = train(config(keys + "lr = 0.1\ndiverge_loss_factor = 0\ndiverge_residual_factor = 0\n"));
  if (unguarded.result.status == mhd::TrialStatus::Diverged) {
    EXPECT_EQ(unguarded.result.error.rfind("the loss became non-finite", 0), 0u) << unguarded.result.error;
    EXPECT_GT(unguarded.result.diverged_step, blown.result.diverged_step + 10);
  } else {
    EXPECT_EQ(unguarded.result.status, mhd::TrialStatus::Done) << unguarded.result.error;
  }
  double largest_residual = 0.0;
  for (const auto& [step, value] : unguarded.metrics.at("abs_residual"))
    if (std::isfinite(value)) largest_residual = std::max(largest_residual, value);
  EXPECT_GT(largest_residual, 1e3);

  const TrialRun normal = train(config(keys));
  EXPECT_EQ(normal.result.status, mhd::TrialStatus::Done) << normal.result.error;
  EXPECT_EQ(normal.metrics.count("diverged_step"), 0u);
}

// --- configuration errors --------------------------------------------------------------------

TEST(TrainKeys, BadKeysAreOneLineErrors) {
  auto one_line = [](const std::string& message, const std::string& must_contain) {
    EXPECT_NE(message.find(must_contain), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  };
  one_line(study_error("memory_enable_step = 2\nsteps = 5\n", "use_memory = false\n"),
           "train.memory_enable_step = 2 needs the memory branch");
  one_line(study_error("memory_enable_step = 20\nsteps = 5\n"), "is after the last step");
  one_line(study_error("continual_tasks = 1\n"), "train.continual_tasks = 1");
  one_line(study_error("continual_tasks = 20\n"), "train.continual_tasks = 20 leaves");
  one_line(study_error("tol_start = 1e-2\n"), "need train.schedule_steps > 0");
  one_line(study_error("warmup_step = 3\n"), "warmup_steps");  // did you mean
  one_line(study_error("validate_every = -1\n"), "train.validate_every");
  one_line(study_error("objective = { lipschitz = \"power\" }\n"), "train.objective.lipschitz");
  one_line(study_error("diverge_loss_factor = 0.5\n"), "train.diverge_loss_factor = 0.5");
  one_line(study_error("diverge_patience = 30\n"), "train.diverge_patience = 30 is longer than train.diverge_window = 20");
}

}  // namespace

namespace {

// Novelty-gated writes change the bank only after the step's backward pass has used it, so a
// trial with writes trains (an in-place write before backward broke the implicit gradient).
TEST(MemoryWrites, TrainingWithNoveltyGatedWritesCompletesAndFillsTheBank) {
  auto run = train(config("steps = 3\neval_every = 0\n", "memory_writes = true\nwrite_threshold = 0.999\n"));
  ASSERT_EQ(run.result.status, mhd::TrialStatus::Done) << run.result.error;
  ASSERT_EQ(run.metrics.count("memory_writes"), 1u);
  double written = 0;
  for (const auto& [step, n] : run.metrics.at("memory_writes")) written += n;
  EXPECT_GT(written, 0) << "a random bank holds nothing like the first queries";
}

}  // namespace

namespace {

// peak_rss_mb: the trial's peak resident memory, once per trial. A 256 MiB tensor touched inside
// the trial (the after_training hook, which the runner's probes use) raises it by about that much;
// the same trial without it (negative control), run afterwards in this process, reads the small peak
// again because the high-water mark is reset when a trainer starts.
TEST(PeakMemory, RisesWithABigTensorInTheTrialAndCountsPerTrial) {
  const auto c = config("steps = 2\neval_every = 0\n");
  auto peak = [](const TrialRun& run) {
    EXPECT_EQ(run.result.status, mhd::TrialStatus::Done) << run.result.error;
    EXPECT_EQ(run.metrics.count("peak_rss_mb"), 1u);
    return run.metrics.count("peak_rss_mb") ? run.metrics.at("peak_rss_mb").rbegin()->second : 0.0;
  };
  const double plain = peak(train(c));
  mhd::TrainOptions big;
  double sum = 0;
  big.after_training = [&](const mhd::TrainedModel&) {
    const at::Tensor t = at::ones({64 * 1024 * 1024});  // 256 MiB of float, every page written
    sum = t.sum().item<double>();
  };
  const double with_tensor = peak(train(c, big));
  const double plain_again = peak(train(c));
  EXPECT_EQ(sum, 64.0 * 1024 * 1024);
  EXPECT_GT(plain, 1.0);
  EXPECT_GT(with_tensor, plain + 200.0) << "256 MiB allocated inside the trial";
  EXPECT_LT(plain_again, with_tensor - 200.0) << "the peak must be the trial's own, not the process's so far";
  EXPECT_NEAR(plain_again, plain, 64.0);
}

}  // namespace
