// The sparse memories inside the model's forward solve (docs/design.md §3, "Memory at scale"):
// searched at every retrieval (memory.search = "per_call") a query's candidates change whenever an
// iterate crosses a bucket boundary, f jumps and the solve stalls above tol; fixed once per solve
// ("per_solve") the same model and batch reach tol, no retrieval of the solve searches afresh, and
// the next solve searches again (its candidates follow the new batch).
#include <gtest/gtest.h>

#include <string>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "config/model_options.h"
#include "core/model.h"
#include "mhd/memory.h"
#include "plugin_host/registry.h"
#include "study/study.h"
#include "tasks/task.h"

namespace {

mhd::PluginRegistry& registry() {
  auto& reg = mhd::PluginRegistry::global();
  for (const char* path : {MHD_PLUGIN_MAMBA, MHD_PLUGIN_ANDERSON, MHD_PLUGIN_SPARSE_HASH, MHD_PLUGIN_PRODUCT_KEY})
    reg.load_file(path);
  return reg;
}

// studies/memory_scaling.toml's model and task at 1K patterns, a tighter solve (tol 1e-4, 40 iterations).
std::string study(const std::string& memory) {
  return R"([study]
name = "sparse_solve"
[task]
kind = "associative_recall"
vocab_size = 32
num_pairs = 4
seq_len = 24
num_queries = 4
[model]
d_model = 64
n_layers = 1
residual = false
[backbone]
plugin = "mamba"
[memory]
)" + memory + R"(
[solver]
plugin = "anderson"
max_iter = 40
tol = 1e-4
[train]
steps = 1
)";
}

struct Solve {
  bool converged = false;
  double residual = 0;
  double searches = 0, fixed_reads = 0;  // the memory's stats of the solve
};

// Two forward solves (evaluation, no graph) of two batches; the second one's outcome and stats.
Solve forward_twice(const std::string& memory) {
  const auto trial = mhd::parse_study(study(memory), "sparse_solve.toml", registry()).trials.front();
  auto task = mhd::make_task(trial.task_kind, trial.task, 0);
  torch::manual_seed(0);
  mhd::UnifiedModel model(mhd::model_options(trial, task->vocab_size()), registry());
  model.eval();
  torch::NoGradGuard no_grad;
  model.forward(task->train_batch(16).inputs);
  const auto out = model.forward(task->train_batch(16).inputs);
  const auto stats = model.dynamics().memory()->stats(at::randn({2, 64}));
  return {out.forward_info.converged, out.forward_info.rel_trace.back(), stats.at("solve_searches"),
          stats.at("solve_fixed_reads")};
}

const char* kSparseHash = R"(plugin = "sparse_hash"
size = 1024
buckets = 512
top_k = 2
rounds = 4
beta = 2.0)";

const char* kProductKey = R"(plugin = "product_key"
size = 1024
top_k = 16
cells = 16
heads = 4
beta = 2.0)";

TEST(SparseSolve, CandidatesFixedPerSolveReachTolWhereSearchingPerCallDoesNot) {
  for (const std::string memory : {kSparseHash, kProductKey}) {
    const Solve per_call = forward_twice(memory + "\nsearch = \"per_call\"");
    const Solve per_solve = forward_twice(memory + "\nsearch = \"per_solve\"");
    ::testing::Test::RecordProperty(memory.substr(10, 11) + "_residual_per_call", std::to_string(per_call.residual));
    ::testing::Test::RecordProperty(memory.substr(10, 11) + "_residual_per_solve", std::to_string(per_solve.residual));
    EXPECT_FALSE(per_call.converged) << memory << "\nper call: residual " << per_call.residual;
    EXPECT_GT(per_call.searches, 10) << memory;  // every f evaluation searched
    EXPECT_TRUE(per_solve.converged) << memory << "\nper solve: residual " << per_solve.residual;
    EXPECT_EQ(per_solve.searches, 0) << memory;
    EXPECT_GT(per_solve.fixed_reads, 1) << memory;
  }
}

}  // namespace
