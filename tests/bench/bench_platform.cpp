// What the platform gives a training step (docs/benchmarks.md, "Platform: BLAS, threads, head"):
//   BM_Sgemm/N             N x N x N float32 matrix product through LibTorch (its BLAS), GFLOP/s
//   BM_RecallStep/<where>  one training step (forward solve, loss, implicit backward, AdamW) of the
//                          associative-recall model at vocabulary 8192, batch 64, length 64,
//                          d_model 64, attention backbone: the head at every position (0) vs only
//                          at the 4 labelled positions (1), the trainer's way
// Threads: every core (mhd's default) unless OMP_NUM_THREADS says otherwise; the first lines printed
// name the BLAS and the thread count.
#include <iostream>

#include <ATen/ATen.h>
#include <benchmark/benchmark.h>
#include <torch/autograd.h>
#include <torch/optim/adamw.h>

#include "config/model_options.h"
#include "core/model.h"
#include "plugin_host/registry.h"
#include "mhd/runtime.h"
#include "study/study.h"
#include "tasks/task.h"

namespace {

void BM_Sgemm(benchmark::State& state) {
  const auto n = state.range(0);
  auto a = at::randn({n, n}), b = at::randn({n, n});
  for (auto _ : state) benchmark::DoNotOptimize(at::mm(a, b));
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * n * n, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(BM_Sgemm)->Arg(256)->Arg(512)->Arg(1024)->Unit(benchmark::kMillisecond);

constexpr const char* kRecallStudy = R"(
[study]
name = "bench_recall_v8192"
[task]
kind = "associative_recall"
vocab_size = 8192
num_pairs = 4
seq_len = 64
[model]
d_model = 64
n_layers = 2
[backbone]
plugin = "attention"
[memory]
plugin = "hopfield"
size = 256
[solver]
plugin = "anderson"
max_iter = 20
tol = 1e-3
[train]
steps = 1
batch = 64
)";

void BM_RecallStep(benchmark::State& state) {
  const bool targets_only = state.range(0) == 1;
  auto& registry = mhd::PluginRegistry::global();
  registry.scan_default_paths();
  const auto trial = mhd::parse_study(kRecallStudy, "bench_recall_v8192.toml", registry).trials.front();
  auto task = mhd::make_task(trial.task_kind, trial.task, 0);
  torch::manual_seed(0);
  mhd::UnifiedModel model(mhd::model_options(trial, task->vocab_size()), registry);
  model.train();
  torch::optim::AdamW optimizer(model.parameters(), torch::optim::AdamWOptions(1e-3));
  const mhd::Batch batch = task->train_batch(64);
  const auto labelled = batch.targets != mhd::kIgnoreIndex;  // [B, L]
  for (auto _ : state) {
    at::Tensor loss;
    if (targets_only) {
      auto out = model.forward(batch.inputs, false, labelled);  // logits [N, V]
      loss = at::cross_entropy_loss(out.logits, batch.targets.masked_select(labelled));
    } else {
      auto out = model.forward(batch.inputs);  // logits [B, L, V]
      loss = at::cross_entropy_loss(out.logits.reshape({-1, out.logits.size(2)}), batch.targets.reshape({-1}), {},
                                    at::Reduction::Mean, mhd::kIgnoreIndex);
    }
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    benchmark::DoNotOptimize(loss);
  }
  state.SetLabel(targets_only ? "head at the labelled positions" : "head at every position");
}
BENCHMARK(BM_RecallStep)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->MinTime(3.0);

}  // namespace

int main(int argc, char** argv) {
  mhd::use_all_cores();
  std::cout << mhd::runtime_summary("cpu");
  if (const auto warning = mhd::reference_blas_warning(); !warning.empty()) std::cout << warning << "\n";
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
