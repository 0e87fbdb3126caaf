// The plugin ABI (docs/design.md §3).
//
// A plugin is a MODULE library that exports exactly one symbol, `mhd_plugin_entry`, made with
// MHD_PLUGIN(make_manifest). The host reads the plain-C header of that entry (ABI number, kind,
// build fingerprint) before it touches any C++ object, so a stale plugin is refused with both
// numbers in the message instead of crashing.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <boost/config.hpp>
#include <boost/dll/alias.hpp>
#include <torch/version.h>

#include "mhd/params.h"

namespace mhd {

// Bumped whenever an interface header, Manifest or Params changes layout.
constexpr std::uint32_t kPluginAbiVersion = 6;  // 2: Memory::max_similarity; 3: Memory::retrieve_context;
                                                // 4: FixedPointProblem::context;
                                                // 5: Optimization::wrap_solve, objective_term;
                                                // 6: Memory::begin_solve

enum class PluginKind : std::uint32_t { Backbone = 1, Memory = 2, Solver = 3, Optimization = 4 };

const char* to_string(PluginKind kind);
// "backbone" -> Backbone; throws mhd::Error listing the four kinds otherwise.
PluginKind plugin_kind_from_string(const std::string& name);

class Backbone;
class Memory;
class Solver;
class Optimization;

// Sizes every component is built for.
struct ModelDims {
  std::int64_t d_model = 64;
  std::int64_t vocab_size = 256;
};

using BackboneFactory = std::function<std::shared_ptr<Backbone>(const Params&, const ModelDims&)>;
using MemoryFactory = std::function<std::shared_ptr<Memory>(const Params&, const ModelDims&)>;
using SolverFactory = std::function<std::shared_ptr<Solver>(const Params&)>;
using OptimizationFactory = std::function<std::shared_ptr<Optimization>(const Params&)>;

// What a plugin declares about itself. Exactly the factory matching `kind` is set.
struct BOOST_SYMBOL_VISIBLE Manifest {
  PluginKind kind = PluginKind::Backbone;
  std::string name;
  std::string version;
  std::string description;  // one line
  ParamSchema params;
  BackboneFactory make_backbone;
  MemoryFactory make_memory;
  SolverFactory make_solver;
  OptimizationFactory make_optimization;
};

// The exported entry: plain data first so the host can check it without trusting the C++ layout.
struct PluginEntry {
  std::uint32_t abi_version;
  std::uint32_t kind;                // a PluginKind
  const char* build_fingerprint;     // compiler, C++ ABI flag, LibTorch version
  const Manifest* (*manifest)();     // only called after the checks pass
};

// The fingerprint of the code that includes this header; host and plugin must agree.
#define MHD_STRINGIFY_IMPL(x) #x
#define MHD_STRINGIFY(x) MHD_STRINGIFY_IMPL(x)
#define MHD_BUILD_FINGERPRINT                                                      \
  "gcc-" MHD_STRINGIFY(__GNUC__) " cxx11abi-" MHD_STRINGIFY(_GLIBCXX_USE_CXX11_ABI) \
  " torch-" MHD_STRINGIFY(TORCH_VERSION_MAJOR) "." MHD_STRINGIFY(TORCH_VERSION_MINOR)

}  // namespace mhd

// Declares the plugin entry. `make_manifest` is a function `mhd::Manifest make_manifest()`; it runs
// once, on first use, after the host has checked the ABI number and kind.
#define MHD_PLUGIN(KIND, make_manifest)                                                     \
  namespace mhd_plugin_detail {                                                            \
  static const ::mhd::Manifest* manifest_once() {                                          \
    static const ::mhd::Manifest m = make_manifest();                                      \
    return &m;                                                                              \
  }                                                                                         \
  static ::mhd::PluginEntry entry() {                                                      \
    return {::mhd::kPluginAbiVersion, static_cast<std::uint32_t>(KIND),                    \
            MHD_BUILD_FINGERPRINT, &manifest_once};                                         \
  }                                                                                         \
  }                                                                                         \
  BOOST_DLL_ALIAS(mhd_plugin_detail::entry, mhd_plugin_entry)
