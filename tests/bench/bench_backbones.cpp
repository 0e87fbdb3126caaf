// One layer of every backbone plugin (mamba, attention, retnet, rwkv, hybrid), float32, at
// B = 2, d_model = 128, L = 1024 (and L = 4096 for the linear-time ones): forward, and forward +
// backward of sum(y * w) to the input and every parameter. Plugins are loaded as the host loads them,
// with their default parameters (hybrid: 3 Mamba sublayers + local attention, window 256; retnet:
// chunkwise, chunk 64; rwkv: static decay), so a row is what a study with that backbone runs.
//
//   ninja -C build bench_backbones && OMP_NUM_THREADS=2 ./build/bin/bench_backbones
//
// Rows are <Forward|ForwardBackward>/<plugin>/L:<L>; threads: whatever LibTorch starts with
// (OMP_NUM_THREADS). Each row runs for at least --benchmark_min_time and keeps its fastest iteration
// (counter ms), which is the robust statistic on a shared machine; after the table, a summary prints
// each row's fastest time and its ratio to mamba's at the same L.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include "mhd/backbone.h"
#include "mhd/plugin.h"
#include "plugin_host/registry.h"
#include "wkv.h"

namespace {

constexpr std::int64_t kBatch = 2, kDim = 128;

std::map<std::string, double>& row_ms() {
  static std::map<std::string, double> rows;
  return rows;
}

// "plugin" or "plugin:key=value" (one integer or text parameter overridden), e.g.
// "hybrid:attention_every=1": the hybrid layer's local attention alone.
std::shared_ptr<mhd::Backbone> make(const std::string& row_name) {
  auto& registry = mhd::PluginRegistry::global();
  const std::size_t colon = row_name.find(':');
  const std::string name = row_name.substr(0, colon);
  const mhd::LoadedPlugin& p = registry.require(mhd::PluginKind::Backbone, name);
  mhd::Params params = mhd::Params::defaults(p.manifest->params);
  if (colon != std::string::npos) {
    const std::string assignment = row_name.substr(colon + 1);
    const std::size_t eq = assignment.find('=');
    const std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
    if (std::isdigit(static_cast<unsigned char>(value[0]))) {
      params.set(key, std::int64_t{std::stoll(value)});
    } else {
      params.set(key, value);
    }
  }
  mhd::ModelDims dims;
  dims.d_model = kDim;
  at::manual_seed(0);
  return registry.make<mhd::Backbone>(name, params, dims);
}

std::string key(const std::string& kind, const std::string& name, std::int64_t len) {
  return kind + "/" + name + "/L:" + std::to_string(len);
}

void run_row(benchmark::State& state, const std::string& kind, const std::string& name, std::int64_t len) {
  auto block = make(name);
  const bool backward = kind == "ForwardBackward";
  at::manual_seed(1);
  const at::Tensor x = at::randn({kBatch, len, kDim}).requires_grad_(backward);
  const at::Tensor w = at::randn({kBatch, len, kDim});
  std::vector<at::Tensor> leaves = block->parameters();
  leaves.push_back(x);
  double best = 1e300;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    if (backward) {
      const at::Tensor y = block->forward(x);
      auto grads = torch::autograd::grad({(y * w).sum()}, leaves);
      benchmark::DoNotOptimize(grads.back().data_ptr());
    } else {
      torch::NoGradGuard no_grad;
      benchmark::DoNotOptimize(block->forward(x).data_ptr());
    }
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  const double ms = best;
  row_ms()[key(kind, name, len)] = ms;
  state.counters["ms"] = ms;
  state.SetItemsProcessed(state.iterations() * kBatch * len);  // tokens
}

// The fused WKV kernel alone (rwkv's recurrence, no projections), at the same B, L and D: how much of
// the rwkv row is the recurrence.
void wkv_row(benchmark::State& state, const std::string& kind, std::int64_t len) {
  const bool backward = kind == "ForwardBackward";
  at::manual_seed(1);
  const at::Tensor k = at::randn({kBatch, len, kDim}).requires_grad_(backward);
  const at::Tensor v = at::randn({kBatch, len, kDim}).requires_grad_(backward);
  const at::Tensor w = at::exp(at::randn({kBatch, len, kDim}) - 1.0).requires_grad_(backward);
  const at::Tensor u = at::randn({kDim}).requires_grad_(backward);
  const at::Tensor wy = at::randn({kBatch, len, kDim});
  double best = 1e300;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    if (backward) {
      const mhd::rwkv::WkvResult r = mhd::rwkv::wkv(k, v, w, u);
      auto grads = torch::autograd::grad({(r.y * wy).sum()}, {k, v, w, u});
      benchmark::DoNotOptimize(grads[0].data_ptr());
    } else {
      torch::NoGradGuard no_grad;
      benchmark::DoNotOptimize(mhd::rwkv::wkv(k, v, w, u).y.data_ptr());
    }
    best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  row_ms()[key(kind, "wkv-kernel", len)] = best;
  state.counters["ms"] = best;
}

}  // namespace

int main(int argc, char** argv) {
  auto& registry = mhd::PluginRegistry::global();
  for (const char* path : {MHD_PLUGIN_MAMBA, MHD_PLUGIN_ATTENTION, MHD_PLUGIN_RETNET, MHD_PLUGIN_RWKV,
                           MHD_PLUGIN_HYBRID_BACKBONE})
    registry.load_file(path, mhd::PluginKind::Backbone);
  const std::vector<std::string> names = {"mamba",  "attention", "retnet", "rwkv", "rwkv:decay=data",
                                          "hybrid", "hybrid:attention_every=1"};
  for (const std::int64_t len : {1024, 4096}) {
    for (const std::string kind : {"Forward", "ForwardBackward"}) {
      for (const std::string& name : names) {
        if (len > 1024 && name == "attention") continue;  // O(L^2): the L = 1024 row says enough
        benchmark::RegisterBenchmark(key(kind, name, len).c_str(),
                                     [kind, name, len](benchmark::State& s) { run_row(s, kind, name, len); })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime()
            ->MinTime(2.0);
      }
      benchmark::RegisterBenchmark(key(kind, "wkv-kernel", len).c_str(),
                                   [kind, len](benchmark::State& s) { wkv_row(s, kind, len); })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->MinTime(1.0);
    }
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  std::printf("\nthreads (at::get_num_threads): %d\n", at::get_num_threads());
  std::printf("%-36s %10s %10s\n", "row", "ms", "x mamba");
  for (const auto& [k, ms] : row_ms()) {
    const std::string kind = k.substr(0, k.find('/'));
    const std::string len = k.substr(k.rfind('/') + 1);
    const auto base = row_ms().find(kind + "/mamba/" + len);
    std::printf("%-36s %10.2f %10.2f\n", k.c_str(), ms, base == row_ms().end() ? 0.0 : ms / base->second);
  }
  return 0;
}
