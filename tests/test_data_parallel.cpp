// Data-parallel training (data_parallel.h) with two processes on loopback: this binary is both the
// test (rank 0) and its own rank 1 (`dp-test-rank SCENARIO RENDEZVOUS`, or the framework's hidden
// `dp-worker` when train_trial starts it).
#include <gtest/gtest.h>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "distributed/data_parallel.h"
#include "run/dp_worker.h"
#include "mhd/error.h"
#include "config/model_options.h"
#include "core/model.h"
#include "study/study.h"
#include "tasks/task.h"
#include "train/trainer.h"
#include "test_plugins_loaded.h"

extern char** environ;

namespace fs = std::filesystem;

namespace {

mhd::PluginRegistry& registry() { return registry_with_all_plugins(); }

fs::path fresh_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("mhd_dp_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string file_rendezvous(const std::string& name) { return "file://" + (fresh_dir(name) / "store").string(); }

// Starts rank 1 of a scenario: this binary again.
pid_t spawn_rank1(const std::string& scenario, const std::string& rendezvous) {
  std::vector<std::string> args{"/proc/self/exe", "dp-test-rank", scenario, rendezvous};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  EXPECT_EQ(::posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv.data(), environ), 0);
  return pid;
}

int wait_exit(pid_t pid) {
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

mhd::DataParallelSpec spec(int rank, const std::string& rendezvous, const std::string& tag = "test") {
  mhd::DataParallelSpec s;
  s.rank = rank;
  s.world_size = 2;
  s.rendezvous = rendezvous;
  s.timeout = std::chrono::seconds(20);
  s.tag = tag;
  s.local = true;
  return s;
}

// Failures of a scenario, one per line ("" when every check held), so rank 0 reports through
// gtest and rank 1 through its exit code.
struct Checks {
  std::ostringstream failures;
  void near(const std::string& what, double got, double want, double tol = 1e-9) {
    if (!(std::abs(got - want) <= tol * std::max(1.0, std::abs(want))))
      failures << what << ": got " << got << ", want " << want << "\n";
  }
  void is(const std::string& what, bool ok) {
    if (!ok) failures << what << "\n";
  }
};

// (a) Collectives on known values: rank r contributes (r + 1) * [1, 2, 3] and so on.
std::string collectives_scenario(int rank, const std::string& rendezvous) {
  Checks c;
  mhd::DataParallel dp(spec(rank, rendezvous), c10::Device(c10::kCPU));
  const double r = rank;
  auto a = at::tensor({1.0f, 2.0f, 3.0f}) * (r + 1);  // float32
  auto b = at::full({2, 2}, r, at::kDouble);
  auto i = at::full({1}, rank + 10, at::kLong);
  dp.allreduce_sum({a, b, i});
  c.near("float sum[2]", a[2].item<double>(), 9.0);  // 3 * (1 + 2)
  c.near("double sum", b[1][1].item<double>(), 1.0);
  c.is("int64 sum", i.item<std::int64_t>() == 21);

  // Gradients: rank 0 has 1, rank 1 has 2 -> 1.5 on both; an undefined gradient counts as 0.
  auto p = at::zeros({3}).set_requires_grad(true);
  p.mutable_grad() = at::full({3}, r + 1);
  auto q = at::zeros({2}).set_requires_grad(true);
  if (rank == 1) q.mutable_grad() = at::full({2}, 4.0);
  dp.average_gradients({p, q});
  c.near("averaged grad", p.grad()[1].item<double>(), 1.5);
  c.is("grad undefined on rank 0 becomes defined", q.grad().defined());
  if (q.grad().defined()) c.near("half of rank 1's grad", q.grad()[0].item<double>(), 2.0);

  // Share of a mean: 3 and 1 labelled positions -> K * n / N = 1.5 and 0.5.
  c.near("mean_share", dp.mean_share(rank == 0 ? 3.0 : 1.0), rank == 0 ? 1.5 : 0.5);
  c.is("any(true on rank 1)", dp.any(rank == 1));
  c.is("any(false everywhere)", !dp.any(false));
  std::vector<double> values{r, 10 * r};
  c.is("mean_over_ranks counts", dp.mean_over_ranks(values));
  c.near("mean_over_ranks[1]", values[1], 5.0);
  std::vector<double> uneven(rank + 1, 1.0);
  c.is("uneven counts refused", !dp.mean_over_ranks(uneven));

  auto w = at::full({3}, r + 5).set_requires_grad(true);  // a parameter-like leaf
  c.near("drift before broadcast", dp.max_difference_from_rank0({w}), 1.0);
  dp.broadcast_from_rank0({w});
  c.near("broadcast", w[0].item<double>(), 5.0);
  c.near("drift after broadcast", dp.max_difference_from_rank0({w}), 0.0);
  c.is("slice of rows", dp.slice_rows(at::arange(8)).equal(at::arange(4) + 4 * rank));
  dp.barrier();
  return c.failures.str();
}

// The shell tests' tiny unified model (DEQ with Anderson, Hopfield memory). tol = 0 makes every
// solve run max_iter iterations whatever the batch, so a slice's z* rows equal the global batch's
// rows and the gradients can be compared to float precision.
mhd::TrialConfig tiny_config(int world_size, std::int64_t steps = 6) {
  std::ifstream in(std::string(MHD_SOURCE_DIR) + "/tests/data/studies/tiny_model.toml");
  std::stringstream model;
  model << in.rdbuf();
  const std::string toml = "[study]\nname = \"dp\"\nthreads = 1\n" + model.str() + R"(
[train]
steps = )" + std::to_string(steps) + R"(
batch = 8
eval_every = 3
eval_batches = 1
log_every = 0
trace_every = 0
world_size = )" + std::to_string(world_size) + R"(
objective = { energy = 0.1 }
)";
  auto config = mhd::parse_study(toml, "dp.toml", registry()).trials.front();
  config.solve.set("tol", 0.0);
  config.backward.set("tol", 0.0);
  return config;
}

// Mean cross-entropy over labelled positions, as the trainer scores the task. logits: [B, L, V]
at::Tensor task_loss(const at::Tensor& logits, const at::Tensor& targets) {
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(2)}), targets.reshape({-1}), {}, at::Reduction::Mean,
                                mhd::kIgnoreIndex);
}

struct Grads {
  std::vector<at::Tensor> grads;
  double loss = 0;
};

// The gradient of the task loss on `batch` (all of it, or this rank's slice averaged over ranks).
Grads gradient(const mhd::TrialConfig& config, const mhd::Batch& batch, mhd::DataParallel* dp) {
  torch::manual_seed(static_cast<std::uint64_t>(config.seed));
  mhd::UnifiedModel model(mhd::model_options(config, mhd::make_task(config.task_kind, config.task, 0)->vocab_size()), registry());
  model.train();
  at::Tensor inputs = batch.inputs, targets = batch.targets;
  if (dp) {
    dp->broadcast_from_rank0(model.parameters());
    inputs = dp->slice_rows(inputs);
    targets = dp->slice_rows(targets);
  }
  auto loss = task_loss(model.forward(inputs).logits, targets);
  if (dp) loss = loss * dp->mean_share((targets != mhd::kIgnoreIndex).sum().item<double>());
  loss.backward();
  if (dp) dp->average_gradients(model.parameters());
  Grads g;
  for (const auto& p : model.parameters()) g.grads.push_back(p.grad().defined() ? p.grad().clone() : at::zeros_like(p));
  g.loss = loss.item<double>();
  return g;
}

// (b) Each rank's averaged gradient equals the single-process gradient of the global batch. One
// row of rank 1's half has no labels, so the halves hold different numbers of labelled positions
// and a plain average of the two means would be wrong.
std::string gradient_scenario(int rank, const std::string& rendezvous) {
  Checks c;
  const auto config = tiny_config(1);
  auto task = mhd::make_task(config.task_kind, config.task, 0);
  mhd::Batch batch = task->train_batch(8);
  batch.targets[6].fill_(mhd::kIgnoreIndex);
  const Grads single = gradient(config, batch, nullptr);
  mhd::DataParallel dp(spec(rank, rendezvous), c10::Device(c10::kCPU));
  const Grads averaged = gradient(config, batch, &dp);
  c.is("same parameter count", single.grads.size() == averaged.grads.size());
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < single.grads.size() && i < averaged.grads.size(); ++i) {
    worst = std::max(worst, (single.grads[i] - averaged.grads[i]).abs().max().item<double>());
    scale = std::max(scale, single.grads[i].abs().max().item<double>());
  }
  c.is("gradients are not all zero", scale > 1e-4);
  if (worst > 1e-5 * scale) c.failures << "max |g_dp - g_single| = " << worst << " vs max |g| = " << scale << "\n";
  return c.failures.str();
}

// (d) Rank 1 joins with another tag than rank 0: both must refuse.
std::string mismatch_scenario(int rank, const std::string& rendezvous) {
  try {
    mhd::DataParallel dp(spec(rank, rendezvous, rank == 0 ? "trial-a" : "trial-b"), c10::Device(c10::kCPU));
  } catch (const mhd::Error& e) {
    const std::string what = e.what();
    if (what.find("different trials") == std::string::npos) return "unexpected message: " + what;
    return "";
  }
  return "joined despite different tags";
}

using Scenario = std::string (*)(int, const std::string&);
const std::map<std::string, Scenario>& scenarios() {
  static const std::map<std::string, Scenario> s{
      {"collectives", collectives_scenario}, {"gradient", gradient_scenario}, {"mismatch", mismatch_scenario}};
  return s;
}

// Rank 0 here, rank 1 in a child process; both must pass.
void run_two_ranks(const std::string& scenario) {
  const std::string rendezvous = file_rendezvous(scenario);
  const pid_t child = spawn_rank1(scenario, rendezvous);
  const std::string failures = scenarios().at(scenario)(0, rendezvous);
  EXPECT_EQ(failures, "") << "rank 0";
  EXPECT_EQ(wait_exit(child), 0) << "rank 1 failed (its checks are on stderr)";
}

TEST(DataParallel, AllreduceOfKnownTensorsGivesTheirSumAndAverage) { run_two_ranks("collectives"); }

TEST(DataParallel, TcpStoreRendezvousWorks) {
  const std::string rendezvous = "tcp://127.0.0.1:" + std::to_string(mhd::free_local_port());
  const pid_t child = spawn_rank1("collectives", rendezvous);
  EXPECT_EQ(collectives_scenario(0, rendezvous), "");
  EXPECT_EQ(wait_exit(child), 0);
}

TEST(DataParallel, AveragedGradientsEqualTheSingleProcessGradientOfTheGlobalBatch) { run_two_ranks("gradient"); }

// (c) The trainer end to end: `train_trial` with world_size 2 starts rank 1 itself (this binary's
// dp-worker) and its loss curve matches the single-process run on the same global batches.
TEST(DataParallel, TwoRankTrainingMatchesSingleProcessLossCurve) {
  auto capture = [](std::map<std::string, std::map<std::int64_t, double>>& into) {
    mhd::MetricSink sink;
    sink.metric = [&into](std::int64_t step, const std::string& name, double value) { into[name][step] = value; };
    return sink;
  };
  std::map<std::string, std::map<std::int64_t, double>> single, parallel;
  const auto sink1 = capture(single), sink2 = capture(parallel);
  const auto r1 = mhd::train_trial(tiny_config(1), registry(), sink1);
  const auto r2 = mhd::train_trial(tiny_config(2), registry(), sink2);
  ASSERT_EQ(r1.status, mhd::TrialStatus::Done) << r1.error;
  ASSERT_EQ(r2.status, mhd::TrialStatus::Done) << r2.error;
  // .at(): a metric missing on one side is a failure, not 0 vs 0.
  ASSERT_EQ(parallel.at("loss").size(), 6u);
  ASSERT_EQ(single.at("loss").size(), 6u);
  for (const auto& [step, loss] : single.at("loss")) {
    ASSERT_EQ(parallel.at("loss").count(step), 1u) << "step " << step;
    EXPECT_NEAR(parallel.at("loss").at(step), loss, 1e-4 * std::abs(loss)) << "step " << step;
  }
  for (const auto& [name, tolerance] : std::map<std::string, double>{{"task_loss", 1e-4}, {"grad_norm", 1e-3}, {"eval_loss", 1e-3}}) {
    const double expected = single.at(name).at(6);
    EXPECT_GT(std::abs(expected), 0.0) << name << ": a zero would make the comparison vacuous";
    EXPECT_NEAR(parallel.at(name).at(6), expected, tolerance * std::abs(expected)) << name;
  }
  ASSERT_EQ(parallel.at("dp_param_drift").count(6), 1u);
  EXPECT_EQ(parallel.at("dp_param_drift").at(6), 0.0) << "the ranks' parameters drifted apart";
  EXPECT_EQ(single.count("dp_param_drift"), 0u);
}

// (d) Bad rendezvous: one-line errors within the timeout.
TEST(DataParallel, MissingRankTimesOutWithOneLineError) {
  auto s = spec(0, file_rendezvous("alone"));
  s.timeout = std::chrono::milliseconds(800);
  const auto start = std::chrono::steady_clock::now();
  try {
    mhd::DataParallel dp(s, c10::Device(c10::kCPU));
    FAIL() << "joined without rank 1";
  } catch (const mhd::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("timed out"), std::string::npos) << what;
    EXPECT_NE(what.find("rank(s) 1 to join"), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 5.0);
}

TEST(DataParallel, UnreachableTcpServerFailsWithinTheTimeout) {
  auto s = spec(1, "tcp://127.0.0.1:" + std::to_string(mhd::free_local_port()));
  s.timeout = std::chrono::milliseconds(800);
  const auto start = std::chrono::steady_clock::now();
  try {
    mhd::DataParallel dp(s, c10::Device(c10::kCPU));
    FAIL() << "joined without a server";
  } catch (const mhd::Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("rank 1 of 2"), std::string::npos) << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << what;
  }
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10.0);
}

TEST(DataParallel, RanksOfDifferentTrialsRefuseEachOther) { run_two_ranks("mismatch"); }

TEST(DataParallel, BadSpecsAreOneLineErrors) {
  EXPECT_THROW(mhd::Rendezvous::parse("udp://127.0.0.1:1"), mhd::Error);
  EXPECT_THROW(mhd::Rendezvous::parse("tcp://127.0.0.1:99999"), mhd::Error);
  EXPECT_THROW(mhd::Rendezvous::parse("file://relative/path"), mhd::Error);
  const auto tcp = mhd::Rendezvous::parse("tcp://10.0.0.7:29500");
  EXPECT_EQ(tcp.host, "10.0.0.7");
  EXPECT_EQ(tcp.port, 29500);
  try {
    mhd::Rendezvous::parse("udp://x");
    FAIL() << "udp://x accepted";
  } catch (const mhd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.rendezvous = \"udp://x\""), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
  auto config = tiny_config(2);
  config.train.set("batch", std::int64_t{7});
  try {
    mhd::join_trial_group(config, registry(), c10::Device(c10::kCPU));
    FAIL() << "batch 7 accepted for world_size 2";
  } catch (const mhd::Error& e) {
    EXPECT_STREQ(e.what(), "train.batch = 7 is not divisible by train.world_size = 2");
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Rank 1..K-1 of a trial that train_trial started (TwoRankTrainingMatchesSingleProcessLossCurve).
  if (const int code = mhd::data_parallel_worker_main(argc, argv); code >= 0) return code;
  if (argc == 4 && std::string(argv[1]) == "dp-test-rank") {
    try {
      const std::string failures = scenarios().at(argv[2])(1, argv[3]);
      if (failures.empty()) return 0;
      std::cerr << "rank 1 (" << argv[2] << "):\n" << failures;
    } catch (const std::exception& e) {
      std::cerr << "rank 1 (" << argv[2] << "): " << e.what() << "\n";
    }
    return 1;
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
