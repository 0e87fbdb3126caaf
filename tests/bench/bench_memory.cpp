// Memory at scale (docs/benchmarks.md, "Memory at scale"): per-query retrieval time, batched and one
// query at a time, and recall@1 of stored patterns from noisy queries, for the memory plugins at
// K = 1K, 10K, 100K and 1M patterns, d = 64, all in one run, loaded through the registry.
//
//   ninja -C build bench_memory && OMP_NUM_THREADS=2 ./build/bin/bench_memory [max_K [min_K]]
//
// Patterns: K unit vectors in random directions, written into an empty memory of K slots (K a
// perfect square for product_key: 1024, 10000, 102400, 1048576). Queries: 256 stored patterns with
// 10% of their components (6 of 64) replaced by fresh values of the same scale (cosine ~0.9 to the
// original). recall@1: the stored pattern most similar (cosine) to the retrieval is the original.
// Every plugin retrieves with beta = 32, which keeps dense retrieval exact up to 1M unit patterns.
// Times: the median of repeated calls without autograd; batched = a [256, 64] query batch divided by
// 256, single = [1, 64] queries one after another. speedup = hopfield's time / the plugin's at the
// same K, measured in the same run. bytes/pattern: what the memory holds (bank, index, router)
// divided by K, against 256 raw bytes (64 floats).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cctype>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "mhd/memory.h"
#include "mhd/params.h"
#include "mhd/plugin.h"
#include "plugin_host/registry.h"

namespace {

constexpr std::int64_t kDim = 64;
constexpr std::int64_t kQueries = 256;
constexpr std::int64_t kSingles = 32;
constexpr double kBeta = 32.0;

using Overrides = std::map<std::string, mhd::ParamValue>;

std::shared_ptr<mhd::Memory> make_memory(const std::string& name, const Overrides& overrides) {
  auto& reg = mhd::PluginRegistry::global();
  mhd::Params params = mhd::Params::defaults(reg.require(mhd::PluginKind::Memory, name).manifest->params);
  for (const auto& [key, value] : overrides) params.set(key, value);
  mhd::ModelDims dims;
  dims.d_model = kDim;
  return reg.make<mhd::Memory>(name, params, dims);
}

// The sparse memories' search sizes per K: about sqrt-scaled buckets, so candidates grow slowly.
Overrides config(const std::string& name, std::int64_t K) {
  const auto n = static_cast<std::int64_t>(std::llround(std::sqrt(static_cast<double>(K))));
  if (name == "hierarchical") {
    // Writes land in L1, so L1 holds the K patterns; L2 and L3 at their default share (dense levels).
    return {{"size", K}, {"l2_size", std::max<std::int64_t>(1024, K / 10)}, {"l3_size", std::int64_t{512}},
            {"l1_beta", kBeta}, {"l2_beta", kBeta}, {"l3_beta", kBeta}};
  }
  Overrides o{{"size", K}, {"beta", kBeta}, {"init", std::string("zeros")}};
  if (name == "sparse_hash") {
    // Search cost ~ rounds (buckets + 2 top_k K / buckets) dot products, the bucket scores being
    // dense (BLAS) and the candidates scattered rows: buckets above the sqrt optimum (4 sqrt K)
    // trade cheap scoring for fewer scattered reads; 4 rounds of 2 probes hold recall@1 >= 0.95.
    o["buckets"] = std::max<std::int64_t>(64, 4 * n);
    o["top_k"] = std::int64_t{2};
    o["rounds"] = std::int64_t{4};
  } else if (name == "product_key") {
    o["top_k"] = std::min<std::int64_t>(n, 16);
    o["cells"] = std::min<std::int64_t>(n, 16);
    o["heads"] = std::int64_t{6};
  }
  return o;
}

// MHD_BENCH_<KEY> (e.g. MHD_BENCH_SPARSE_HASH_ROUNDS=8) overrides a search size, for tuning.
void env_overrides(const std::string& name, Overrides& o) {
  for (const char* key : {"buckets", "top_k", "rounds", "cells", "heads"}) {
    std::string var = "MHD_BENCH_" + name + "_" + key;
    for (auto& c : var) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (const char* v = std::getenv(var.c_str())) o[key] = static_cast<std::int64_t>(std::atoll(v));
  }
}

std::string describe(const std::string& name, const Overrides& o) {
  std::string out;
  for (const char* key : {"buckets", "top_k", "rounds", "cells", "heads", "l2_size"}) {
    const auto it = o.find(key);
    if (it == o.end()) continue;
    out += (out.empty() ? "" : " ") + std::string(key) + "=" + mhd::format_param_value(it->second);
  }
  return out.empty() ? "-" : out;
}

double median_seconds(const std::function<void()>& fn, int repeats) {
  std::vector<double> times;
  for (int i = 0; i < repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Index of the most similar stored pattern (cosine) for each row of `out`, in chunks of the bank.
at::Tensor nearest(const at::Tensor& out, const at::Tensor& unit_patterns) {
  const at::Tensor o = out / out.norm(2, 1, true).clamp_min(1e-12);
  at::Tensor best_value = at::full({out.size(0)}, -2.0), best_index = at::zeros({out.size(0)}, at::kLong);
  const std::int64_t step = 1 << 16;
  for (std::int64_t start = 0; start < unit_patterns.size(0); start += step) {
    const std::int64_t n = std::min(step, unit_patterns.size(0) - start);
    const auto [value, index] = o.matmul(unit_patterns.narrow(0, start, n).t()).max(1);
    const at::Tensor better = value.gt(best_value);
    best_value = at::where(better, value, best_value);
    best_index = at::where(better, index + start, best_index);
  }
  return best_index;
}

std::int64_t held_bytes(mhd::Memory& memory, const at::Tensor& query) {
  const auto s = memory.stats(query);
  const auto it = s.find("memory_bytes");
  if (it != s.end()) return static_cast<std::int64_t>(it->second);
  std::int64_t bytes = 0;
  for (const auto& t : memory.buffers()) bytes += t.numel() * static_cast<std::int64_t>(t.element_size());
  for (const auto& t : memory.parameters()) bytes += t.numel() * static_cast<std::int64_t>(t.element_size());
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  const std::int64_t max_k = argc > 1 ? std::atoll(argv[1]) : 1048576;
  const std::int64_t min_k = argc > 2 ? std::atoll(argv[2]) : 0;
  if (const char* env = std::getenv("OMP_NUM_THREADS")) at::set_num_threads(std::max(1, std::atoi(env)));
  auto& reg = mhd::PluginRegistry::global();
  std::vector<std::string> names;
  for (const auto& [name, path] : std::vector<std::pair<std::string, const char*>>{
           {"hopfield", MHD_PLUGIN_HOPFIELD},
#ifdef MHD_PLUGIN_HIERARCHICAL
           {"hierarchical", MHD_PLUGIN_HIERARCHICAL},
#endif
           {"sparse_hash", MHD_PLUGIN_SPARSE_HASH},
           {"product_key", MHD_PLUGIN_PRODUCT_KEY}}) {
    reg.load_file(path, mhd::PluginKind::Memory);
    // MHD_BENCH_ONLY=a,b: hopfield (the baseline) and the named memories only.
    const char* only = std::getenv("MHD_BENCH_ONLY");
    if (name != "hopfield" && only && std::string(",") .append(only).append(",").find("," + name + ",") == std::string::npos)
      continue;
    names.push_back(name);
  }
  std::printf("bench_memory: d = %lld, %lld noisy queries (10%% of components replaced), beta = %g, threads = %d\n",
              static_cast<long long>(kDim), static_cast<long long>(kQueries), kBeta, at::get_num_threads());
  std::printf("%-9s %-13s %-38s %12s %12s %9s %9s %9s %9s %10s\n", "K", "memory", "search", "batched_us", "single_us",
              "speedup_b", "speedup_s", "recall@1", "cand/q", "bytes/pat");
  at::NoGradGuard no_grad;
  for (const std::int64_t K : {std::int64_t{1024}, std::int64_t{10000}, std::int64_t{102400}, std::int64_t{1048576}}) {
    if (K > max_k) break;
    if (K < min_k) continue;
    at::manual_seed(static_cast<std::uint64_t>(K));
    at::Tensor patterns = at::randn({K, kDim});
    patterns = patterns / patterns.norm(2, 1, true);                       // [K, D], unit rows
    const at::Tensor truth = at::randperm(K).narrow(0, 0, kQueries);     // [Q]
    const at::Tensor clean = patterns.index_select(0, truth);
    const at::Tensor replace = at::rand({kQueries, kDim}).argsort(std::int64_t{1}).argsort(std::int64_t{1}).lt(kDim / 10);
    const at::Tensor queries = at::where(replace, at::randn({kQueries, kDim}) / std::sqrt(double(kDim)), clean);
    double dense_batched = 0, dense_single = 0;
    for (const auto& name : names) {
      Overrides o = config(name, K);
      env_overrides(name, o);
      auto memory = make_memory(name, o);
      memory->write(patterns);
      memory->retrieve(queries.narrow(0, 0, 8));  // builds any index before timing
      const int repeats = K >= 1000000 ? 3 : 7;
      const double batched = median_seconds([&] { memory->retrieve(queries); }, repeats) / kQueries;
      const double single = median_seconds([&] {
        for (std::int64_t i = 0; i < kSingles; ++i) memory->retrieve(queries.narrow(0, i, 1));
      }, repeats) / kSingles;
      if (name == "hopfield") dense_batched = batched, dense_single = single;
      const double recall = nearest(memory->retrieve(queries), patterns).eq(truth).to(at::kDouble).mean().item<double>();
      const auto s = memory->stats(queries.narrow(0, 0, 64));
      const auto cand = s.find("candidates_per_query");
      const double candidates = cand != s.end() ? cand->second : static_cast<double>(K);
      const double bytes = static_cast<double>(held_bytes(*memory, queries.narrow(0, 0, 8))) / static_cast<double>(K);
      std::printf("%-9lld %-13s %-38s %12.2f %12.2f %9.1f %9.1f %9.3f %9.0f %10.1f\n", static_cast<long long>(K),
                  name.c_str(), describe(name, o).c_str(), batched * 1e6, single * 1e6, dense_batched / batched,
                  dense_single / single, recall, candidates, bytes);
      std::fflush(stdout);
    }
  }
  return 0;
}
