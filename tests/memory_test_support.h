// Shared by the memory-at-scale suites (test_memory_scale, test_memory_index): memories built from
// the registry with parameter overrides, their named tensors, unit-scale random patterns.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>

#include "mhd/error.h"
#include "mhd/memory.h"
#include "mhd/params.h"
#include "mhd/plugin.h"
#include "plugin_host/registry.h"

namespace {

using Overrides = std::map<std::string, mhd::ParamValue>;

mhd::PluginRegistry& registry() {
  auto& reg = mhd::PluginRegistry::global();
  for (const char* path : {MHD_PLUGIN_HOPFIELD, MHD_PLUGIN_SPARSE_HASH, MHD_PLUGIN_PRODUCT_KEY, MHD_PLUGIN_HIERARCHICAL})
    reg.load_file(path, mhd::PluginKind::Memory);
  return reg;
}

std::shared_ptr<mhd::Memory> make_memory(const std::string& name, std::int64_t dim, const Overrides& overrides) {
  auto& reg = registry();
  mhd::Params params = mhd::Params::defaults(reg.require(mhd::PluginKind::Memory, name).manifest->params);
  for (const auto& [key, value] : overrides) params.set(key, value);
  mhd::ModelDims dims;
  dims.d_model = dim;
  return reg.make<mhd::Memory>(name, params, dims);
}

std::string build_error(const std::string& name, std::int64_t dim, const Overrides& overrides) {
  try {
    make_memory(name, dim, overrides);
  } catch (const mhd::Error& e) {
    return e.what();
  }
  return "";
}

at::Tensor named_tensor(mhd::Memory& memory, const std::string& key) {
  for (const auto& item : memory.named_parameters())
    if (item.key() == key) return item.value();
  for (const auto& item : memory.named_buffers())
    if (item.key() == key) return item.value();
  return at::Tensor();
}

// Unit-scale random patterns: N(0, 1/D) entries.   [n, D]
at::Tensor random_patterns(std::int64_t n, std::int64_t dim) {
  return at::randn({n, dim}) / std::sqrt(static_cast<double>(dim));
}

// Each row with `share` of its components (a random subset per row) replaced by fresh values.
at::Tensor corrupt(const at::Tensor& patterns, double share) {
  const auto count = static_cast<std::int64_t>(share * static_cast<double>(patterns.size(1)));
  const at::Tensor rank = at::rand(patterns.sizes()).argsort(std::int64_t{1}).argsort(std::int64_t{1});
  const at::Tensor fresh = at::randn(patterns.sizes()) / std::sqrt(static_cast<double>(patterns.size(1)));
  return at::where(rank.lt(count), fresh, patterns);
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace
