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
constexpr std::uint32_t kPluginAbiVersion = 7;  // 2: Memory::max_similarity; 3: Memory::retrieve_context;
                                                // 4: (taken while FixedPointProblem::context was under way, see 7);
                                                // 5: Optimization::wrap_solve, objective_term;
                                                // 6: Memory::begin_solve; 7: FixedPointProblem::context,
                                                // Manifest::check

// Adding a kind: its interface header, a value here, its factory type and Manifest member below, a row
// in PluginKindTraits, a name in kPluginKindNames (plugin.cpp), and the place that builds it. The
// registry (plugin_host/registry.h) needs no edit: PluginRegistry::make<Interface> reads the traits.
enum class PluginKind : std::uint32_t { Backbone = 1, Memory = 2, Solver = 3, Optimization = 4 };
constexpr std::uint32_t kPluginKindCount = 4;  // the values run 1..kPluginKindCount

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
// Constraints between a plugin's own keys (or on what a key names, such as a file) that the schema's
// per-key ranges cannot say: throws mhd::Error whose message names the key ("size = 250 is not a
// perfect square ..."). The study validator runs it on every trial before anything runs, so such a
// study fails `mhd validate` at the key's file:line instead of failing each trial at its start.
using ParamCheck = std::function<void(const Params&, const ModelDims&)>;
// The check of a block whose `key` heads split d_model evenly ("attention: n_heads = 3 does not
// divide d_model = 64 ...").
ParamCheck heads_divide_d_model(const std::string& plugin, const std::string& key = "n_heads");
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
  ParamCheck check;  // optional
};

// Which PluginKind builds an Interface, and with which Manifest member.
template <typename Interface>
struct PluginKindTraits;
template <>
struct PluginKindTraits<Backbone> {
  static constexpr PluginKind kind = PluginKind::Backbone;
  static constexpr BackboneFactory Manifest::*factory = &Manifest::make_backbone;
};
template <>
struct PluginKindTraits<Memory> {
  static constexpr PluginKind kind = PluginKind::Memory;
  static constexpr MemoryFactory Manifest::*factory = &Manifest::make_memory;
};
template <>
struct PluginKindTraits<Solver> {
  static constexpr PluginKind kind = PluginKind::Solver;
  static constexpr SolverFactory Manifest::*factory = &Manifest::make_solver;
};
template <>
struct PluginKindTraits<Optimization> {
  static constexpr PluginKind kind = PluginKind::Optimization;
  static constexpr OptimizationFactory Manifest::*factory = &Manifest::make_optimization;
};

// True when the manifest sets the factory of its own kind.
template <typename... Interfaces>
bool sets_factory_of_kind(const Manifest& m) {
  return ((m.kind == PluginKindTraits<Interfaces>::kind && static_cast<bool>(m.*PluginKindTraits<Interfaces>::factory)) || ...);
}
inline bool sets_own_factory(const Manifest& m) {
  return sets_factory_of_kind<Backbone, Memory, Solver, Optimization>(m);
}

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
