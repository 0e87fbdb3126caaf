// The fused selective scan, every build of it (generic, avx2+fma, avx512) on 1 thread and on every
// core, against each other and against the naive per-timestep LibTorch loop
// (selective_scan_reference); and the Mamba block's recurrent step at the quickstart study's sizes.
// float32, N = 16, called as the Mamba block calls it (delta_bias + softplus, D skip, u a [B, L, D]
// view of the conv's [B, D, L] output). Shapes B / d_inner / L: 2 / 512 / {1024, 4096}, and
// 32 / 128 / 64, the quickstart study's scale.
//
//   cmake --build build --target bench_scan && ./build/bin/bench_scan
//
// Rows are named <Forward|ForwardBackward>/<build>/threads:<n>/B:../D:../L:..; each sets its build
// (mhd::mamba::set_scan_isa) and its thread count (at::set_num_threads, since LibTorch may start
// with fewer threads than cores) before timing, so one run holds every comparison. Times are wall
// time. Counters: ns_per_update = wall time / (B * L * d_inner * N) state updates; floor_frac = the
// floor of docs/benchmarks.md ("Selective scan": one exp and two FMAs per update, 16-wide, about
// 0.15 ns per update on one core) divided by the measured time, scaled by the threads used. After
// the table, a summary prints each build's speed-up over avx2+fma and the 2-thread scaling, from
// the same run. Kernel/avx512/<forward|backward> rows time the AVX-512 kernels alone (one thread, no
// autograd), to split ForwardBackward/avx512 into its kernels and what surrounds them.
#include <benchmark/benchmark.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include "mamba_block.h"
#include "mhd/runtime.h"
#include "scan_kernels.h"
#include "selective_scan.h"

namespace {

using mhd::mamba::ScanArgs;
using mhd::mamba::ScanIsa;
using mhd::mamba::ScanResult;

constexpr std::int64_t kState = 16;
constexpr double kFloorNsPerUpdate = 0.15;  // one core; see the header comment

struct Problem {
  ScanArgs args;
  at::Tensor wy, wh;  // loss = sum(y * wy) + sum(h_L * wh), so every output gets a gradient
};

Problem make_problem(std::int64_t batch, std::int64_t dim, std::int64_t len, bool requires_grad) {
  at::manual_seed(0);
  Problem p;
  // The block's regime: softplus(delta + bias) around 0.1, A = -(n + 1) (S4D-real init).
  // u as the block hands it over: a [B, L, D] view of the causal conv's [B, D, L] output.
  p.args.u = at::randn({batch, dim, len}).transpose(1, 2);
  p.args.delta = at::randn({batch, len, dim}) - 2.0;
  p.args.A = -at::arange(1, kState + 1, at::kFloat).expand({dim, kState}).contiguous();
  p.args.B = at::randn({batch, len, kState});
  p.args.C = at::randn({batch, len, kState});
  p.args.D = at::ones({dim});
  p.args.delta_bias = at::zeros({dim});
  p.args.delta_softplus = true;
  // Leaves (the transposed view of u included), so every input gets a gradient.
  for (at::Tensor* t : {&p.args.u, &p.args.delta, &p.args.A, &p.args.B, &p.args.C, &p.args.D, &p.args.delta_bias})
    *t = t->detach().requires_grad_(requires_grad);
  p.wy = at::randn({batch, len, dim});
  p.wh = at::randn({batch, dim, kState});
  return p;
}

// Mean wall milliseconds per iteration of each row, for the summary.
std::map<std::string, double>& row_ms() {
  static std::map<std::string, double> rows;
  return rows;
}

std::string row_key(const std::string& kind, const std::string& build, int threads, std::int64_t b, std::int64_t d,
                    std::int64_t l) {
  return kind + "/" + build + "/threads:" + std::to_string(threads) + "/B:" + std::to_string(b) +
         "/D:" + std::to_string(d) + "/L:" + std::to_string(l);
}

struct Row {
  std::string kind;   // "Forward" or "ForwardBackward"
  std::string build;  // "generic", "avx2+fma", "avx512" or "naive"
  ScanIsa isa;
  int threads;
  std::int64_t batch, dim, len;
};

void run_row(benchmark::State& state, const Row& row) {
  const bool naive = row.build == "naive";
  if (!naive) mhd::mamba::set_scan_isa(row.isa);
  at::set_num_threads(row.threads);
  const bool backward = row.kind == "ForwardBackward";
  const Problem p = make_problem(row.batch, row.dim, row.len, backward);
  const std::vector<at::Tensor> leaves = {p.args.u, p.args.delta, p.args.A, p.args.B,
                                          p.args.C, p.args.D,     p.args.delta_bias};
  auto scan = [&](const ScanArgs& a) {
    return naive ? mhd::mamba::selective_scan_reference(a) : mhd::mamba::selective_scan(a);
  };
  std::int64_t tasks = 0;
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    const ScanResult r = scan(p.args);
    if (!naive) tasks = mhd::mamba::last_scan_forward_tasks();
    if (backward) {
      const at::Tensor loss = (r.y * p.wy).sum() + (r.last_state * p.wh).sum();
      auto grads = torch::autograd::grad({loss}, leaves);
      benchmark::DoNotOptimize(grads[0].data_ptr());
    } else {
      benchmark::DoNotOptimize(r.y.data_ptr());
    }
  }
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / state.iterations();
  row_ms()[row_key(row.kind, row.build, row.threads, row.batch, row.dim, row.len)] = ms;
  const double updates = double(row.batch) * row.len * row.dim * kState;
  state.counters["ns_per_update"] = ms * 1e6 / updates;
  state.counters["floor_frac"] = kFloorNsPerUpdate * updates / row.threads / (ms * 1e6);
  if (!naive) state.counters["tasks"] = double(tasks);
  state.SetItemsProcessed(state.iterations() * row.batch * row.len);  // tokens
  mhd::mamba::set_scan_isa(ScanIsa::Auto);
}

// The AVX-512 kernels alone (scan_kernels.h) on the calling thread, without the autograd, the
// allocations and the loss around them: the forward, keeping its checkpoints as under autograd, or
// the backward from them, over the whole B x blocks range. Splits "ForwardBackward/avx512" into its
// kernels and the rest (docs/benchmarks.md, "Selective scan").
void kernel_row(benchmark::State& state, bool backward, std::int64_t batch, std::int64_t dim, std::int64_t len) {
  namespace k = mhd::mamba::kernels;
  if (!k::cpu_has_avx512()) {
    state.SkipWithError("this CPU lacks AVX-512");
    return;
  }
  const Problem p = make_problem(batch, dim, len, false);
  const ScanArgs& a = p.args;
  k::Job job;
  job.u = {a.u.data_ptr(), a.u.stride(0), a.u.stride(1), a.u.stride(2)};
  job.delta = {a.delta.data_ptr(), a.delta.stride(0), a.delta.stride(1), a.delta.stride(2)};
  job.A = a.A.data_ptr<float>();
  job.B = a.B.data_ptr();
  job.B_sb = a.B.stride(0);
  job.B_st = a.B.stride(1);
  job.C = a.C.data_ptr();
  job.C_sb = a.C.stride(0);
  job.C_st = a.C.stride(1);
  job.D = a.D.data_ptr<float>();
  job.delta_bias = a.delta_bias.data_ptr<float>();
  job.softplus = true;
  job.batch = batch;
  job.dim = dim;
  job.len = len;
  job.nstate = kState;
  const std::int64_t blocks = k::channel_blocks(dim);
  const at::Tensor y = at::empty({batch, len, dim}), hL = at::empty({batch, dim, kState});
  const at::Tensor checkpoints = at::empty({batch, blocks, k::checkpoint_count(len), kState, k::kLanes});
  const k::ForwardOut fwd{y.data_ptr(), hL.data_ptr<float>(), checkpoints.data_ptr<float>()};
  const at::Tensor du = at::empty({batch, len, dim}), ddelta = at::empty({batch, len, dim});
  const at::Tensor dA = at::empty({batch, dim, kState}), dh0 = at::empty({batch, dim, kState});
  const at::Tensor dD = at::empty({batch, dim}), dbias = at::empty({batch, dim});
  const at::Tensor dB = at::zeros({batch, 1, len, kState}), dC = at::zeros({batch, 1, len, kState});
  k::BackwardOut bwd;
  bwd.checkpoints = checkpoints.data_ptr<float>();
  bwd.gy = {p.wy.data_ptr(), p.wy.stride(0), p.wy.stride(1), p.wy.stride(2)};
  bwd.ghL = p.wh.data_ptr<float>();
  bwd.du = du.data_ptr<float>();
  bwd.ddelta = ddelta.data_ptr<float>();
  bwd.dA_by_batch = dA.data_ptr<float>();
  bwd.dD_by_batch = dD.data_ptr<float>();
  bwd.dbias_by_batch = dbias.data_ptr<float>();
  bwd.dB_parts = dB.data_ptr<float>();
  bwd.dC_parts = dC.data_ptr<float>();
  bwd.dh0 = dh0.data_ptr<float>();
  k::avx512_forward(job, fwd, 0, batch * blocks);
  for (auto _ : state) {
    if (backward) {
      k::avx512_backward(job, bwd, 0, batch);
    } else {
      k::avx512_forward(job, fwd, 0, batch * blocks);
    }
  }
  state.counters["ns_per_update"] = benchmark::Counter(double(state.iterations()) * batch * len * dim * kState * 1e-9,
                                                       benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// The block's recurrent step at the quickstart study's sizes (d_model 64, expand 2, d_state 16,
// batch 32): per call, under autograd (as in the DEQ iterations while training) and without.
void step_row(benchmark::State& state, int threads, bool grad) {
  at::set_num_threads(threads);
  mhd::mamba::MambaConfig c;
  c.d_model = 64;
  c.d_state = 16;
  c.expand = 2;
  at::manual_seed(0);
  mhd::mamba::MambaBlock block(c);
  const std::int64_t batch = 32;
  const mhd::RecurrentState s0 = block.forward_with_state(at::randn({batch, 8, 64})).second;
  const at::Tensor x_t = at::randn({batch, 64});
  std::unique_ptr<torch::NoGradGuard> no_grad;
  if (!grad) no_grad = std::make_unique<torch::NoGradGuard>();
  for (auto _ : state) {
    auto [y, next] = block.step(x_t, s0);
    benchmark::DoNotOptimize(y.data_ptr());
  }
  state.counters["us_per_call"] = benchmark::Counter(double(state.iterations()) * 1e-6,
                                                     benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

void register_rows() {
  const int all = std::max(1, int(std::thread::hardware_concurrency()));
  std::vector<int> threads = {1};
  if (all > 1) threads.push_back(all);
  struct Build {
    std::string name;
    ScanIsa isa;
  };
  std::vector<Build> builds;
  for (ScanIsa isa : mhd::mamba::available_scan_isas()) builds.push_back({mhd::mamba::scan_isa_name(isa), isa});
  const std::vector<std::array<std::int64_t, 3>> shapes = {{2, 512, 1024}, {2, 512, 4096}, {32, 128, 64}};
  for (const std::string kind : {"Forward", "ForwardBackward"}) {
    for (const auto& shape : shapes) {
      for (int t : threads) {
        for (const Build& b : builds) {
          const Row row{kind, b.name, b.isa, t, shape[0], shape[1], shape[2]};
          benchmark::RegisterBenchmark(row_key(kind, b.name, t, shape[0], shape[1], shape[2]).c_str(),
                                       [row](benchmark::State& s) { run_row(s, row); })
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
        }
        // The naive loop once per shape and thread count, except at L = 4096 (seconds per iteration).
        if (shape[2] <= 1024) {
          const Row row{kind, "naive", ScanIsa::Auto, t, shape[0], shape[1], shape[2]};
          benchmark::RegisterBenchmark(row_key(kind, "naive", t, shape[0], shape[1], shape[2]).c_str(),
                                       [row](benchmark::State& s) { run_row(s, row); })
              ->Unit(benchmark::kMillisecond)
              ->UseRealTime();
        }
      }
    }
  }
  for (bool backward : {false, true}) {
    const std::string name = std::string("Kernel/avx512/") + (backward ? "backward" : "forward") +
                             "/threads:1/B:2/D:512/L:1024";
    benchmark::RegisterBenchmark(name.c_str(), [backward](benchmark::State& s) { kernel_row(s, backward, 2, 512, 1024); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  for (int t : threads) {
    for (bool grad : {false, true}) {
      const std::string name = std::string("Step/quickstart/") + (grad ? "autograd" : "no_grad") +
                               "/threads:" + std::to_string(t) + "/B:32/d_model:64/E:128/N:16";
      benchmark::RegisterBenchmark(name.c_str(), [t, grad](benchmark::State& s) { step_row(s, t, grad); })
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    }
  }
}

// Speed-ups from the same run: every build over avx2+fma at equal threads, and all threads over 1.
void print_summary() {
  const auto& rows = row_ms();
  const int all = std::max(1, int(std::thread::hardware_concurrency()));
  std::printf("\nSummary (mean wall ms per iteration; x = speed-up)\n");
  for (const auto& [key, ms] : rows) {
    // key = kind/build/threads:n/shape
    const auto p1 = key.find('/'), p2 = key.find('/', p1 + 1), p3 = key.find('/', p2 + 1);
    const std::string kind = key.substr(0, p1), build = key.substr(p1 + 1, p2 - p1 - 1);
    const std::string threads = key.substr(p2 + 1, p3 - p2 - 1), shape = key.substr(p3 + 1);
    std::string line = key + ": " + std::to_string(ms) + " ms";
    const auto base = rows.find(kind + "/avx2+fma/" + threads + "/" + shape);
    if (base != rows.end() && build != "avx2+fma") line += ", x" + std::to_string(base->second / ms) + " vs avx2+fma";
    if (threads != "threads:1") {
      const auto one = rows.find(kind + "/" + build + "/threads:1/" + shape);
      if (one != rows.end()) line += ", x" + std::to_string(one->second / ms) + " vs 1 thread";
    }
    std::printf("%s\n", line.c_str());
  }
  (void)all;
}

}  // namespace

int main(int argc, char** argv) {
  const bool kept = mhd::keep_freed_memory();  // as mhd does; MHD_MALLOC_DEFAULTS=1 measures glibc's defaults
  register_rows();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("torch_threads_at_start", std::to_string(at::get_num_threads()));
  benchmark::AddCustomContext("allocator", kept ? "freed memory kept (mhd::keep_freed_memory)" : "glibc defaults");
  benchmark::AddCustomContext("scan_isa_auto", mhd::mamba::active_scan_isa());
  std::string builds;
  for (ScanIsa isa : mhd::mamba::available_scan_isas()) builds += (builds.empty() ? "" : ",") + mhd::mamba::scan_isa_name(isa);
  benchmark::AddCustomContext("scan_builds", builds);
  benchmark::AddCustomContext("shape", "N=16 float32, B/D(d_inner)/L");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  print_summary();
  return 0;
}
