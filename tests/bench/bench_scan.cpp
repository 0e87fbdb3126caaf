// The fused selective scan against the naive per-timestep LibTorch loop (selective_scan_reference),
// float32, N = 16, as the Mamba block calls it (delta_bias + softplus, D skip). Arguments are
// B / d_inner / L: 2 / 512 / {1024, 4096}, and 32 / 128 / 64, the quickstart study's scale.
//
//   ninja -C build bench_scan && ./build/bin/bench_scan
//
// Each benchmark reports real (wall) time, since both implementations use the intra-op threads.
// The fused/naive ratio is read off one run of this binary (docs/benchmarks.md, "Selective scan").
#include <benchmark/benchmark.h>

#include <string>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include "selective_scan.h"

namespace {

using mhd::mamba::ScanArgs;
using mhd::mamba::ScanResult;

constexpr std::int64_t kState = 16;

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

using ScanFn = ScanResult (*)(const ScanArgs&);

template <ScanFn scan>
void forward_only(benchmark::State& state) {
  const Problem p = make_problem(state.range(0), state.range(1), state.range(2), false);
  for (auto _ : state) {
    ScanResult r = scan(p.args);
    benchmark::DoNotOptimize(r.y.data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0) * state.range(2));  // tokens
}

template <ScanFn scan>
void forward_backward(benchmark::State& state) {
  const Problem p = make_problem(state.range(0), state.range(1), state.range(2), true);
  const std::vector<at::Tensor> leaves = {p.args.u, p.args.delta, p.args.A, p.args.B,
                                          p.args.C, p.args.D,     p.args.delta_bias};
  for (auto _ : state) {
    const ScanResult r = scan(p.args);
    const at::Tensor loss = (r.y * p.wy).sum() + (r.last_state * p.wh).sum();
    auto grads = torch::autograd::grad({loss}, leaves);
    benchmark::DoNotOptimize(grads[0].data_ptr());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0) * state.range(2));
}

void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "D", "L"});
  b->Args({2, 512, 1024})->Args({2, 512, 4096})->Args({32, 128, 64});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(forward_only<&mhd::mamba::selective_scan>)->Name("Forward/fused")->Apply(shapes);
BENCHMARK(forward_only<&mhd::mamba::selective_scan_reference>)->Name("Forward/naive")->Apply(shapes);
BENCHMARK(forward_backward<&mhd::mamba::selective_scan>)->Name("ForwardBackward/fused")->Apply(shapes);
BENCHMARK(forward_backward<&mhd::mamba::selective_scan_reference>)->Name("ForwardBackward/naive")->Apply(shapes);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("torch_threads", std::to_string(at::get_num_threads()));
  benchmark::AddCustomContext("scan_isa", mhd::mamba::active_scan_isa());
  benchmark::AddCustomContext("shape", "N=16 float32, args B/D(d_inner)/L");
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
