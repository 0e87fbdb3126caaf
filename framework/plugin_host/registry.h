// Plugin discovery and loading (docs/design.md §3).
//
// Libraries are loaded with RTLD_NOW | RTLD_LOCAL and never unloaded: objects made by a plugin
// (and LibTorch's own registrations) must never outlive their code, and the registry lives for the
// whole process.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mhd/plugin.h"

namespace mhd {

struct LoadedPlugin {
  std::string path;
  const Manifest* manifest = nullptr;  // owned by the plugin library, valid for the process
};

struct PluginLoadFailure {
  std::string path;
  std::string reason;
};

class PluginRegistry {
 public:
  // The process-wide registry.
  static PluginRegistry& global();

  // Loads one library. Throws mhd::Error naming the file when it cannot be opened, has no
  // mhd_plugin_entry, was built for another ABI or build, or is of another kind than `expected`
  // (when given). Loading the same file twice returns the first load. A second plugin of the same
  // kind and name from another file is an error naming both files.
  const LoadedPlugin& load_file(const std::string& path);
  const LoadedPlugin& load_file(const std::string& path, PluginKind expected);

  // Loads every lib*.so below each directory (recursively). Failures are recorded, not thrown.
  void scan_directory(const std::string& directory);
  // The default search path: MHD_PLUGIN_PATH (colon-separated), then the build tree's plugins/
  // directory next to the running executable's bin/, then extra_dirs. Each directory once.
  void scan_default_paths(const std::vector<std::string>& extra_dirs = {});

  // nullptr when unknown.
  const LoadedPlugin* find(PluginKind kind, const std::string& name) const;
  // Throws mhd::Error listing the known plugins of that kind (with a "did you mean").
  const LoadedPlugin& require(PluginKind kind, const std::string& name) const;

  std::vector<const LoadedPlugin*> plugins(PluginKind kind) const;
  std::vector<const LoadedPlugin*> all() const;
  const std::vector<PluginLoadFailure>& failures() const { return failures_; }
  std::vector<std::string> searched_directories() const { return searched_; }

  // Builds a component of the kind that makes `Interface` (PluginKindTraits in mhd/plugin.h), e.g.
  // make<Memory>(name, params, dims), make<Solver>(name, params). Params must have been validated
  // against the plugin's schema (validate_params). Exceptions from the plugin come back as
  // mhd::Error with the plugin's name.
  template <typename Interface, typename... Args>
  std::shared_ptr<Interface> make(const std::string& name, const Args&... args) const {
    using Traits = PluginKindTraits<Interface>;
    const Manifest& manifest = *require(Traits::kind, name).manifest;
    const auto& factory = manifest.*Traits::factory;
    std::shared_ptr<Interface> made;
    guard_factory(Traits::kind, name, [&] { made = factory(args...); });
    if (!made) throw_no_object(Traits::kind, name);
    return made;
  }

  // The same, named by kind.
  std::shared_ptr<Backbone> make_backbone(const std::string& name, const Params& params, const ModelDims& dims) const {
    return make<Backbone>(name, params, dims);
  }
  std::shared_ptr<Memory> make_memory(const std::string& name, const Params& params, const ModelDims& dims) const {
    return make<Memory>(name, params, dims);
  }
  std::shared_ptr<Solver> make_solver(const std::string& name, const Params& params) const {
    return make<Solver>(name, params);
  }
  std::shared_ptr<Optimization> make_optimization(const std::string& name, const Params& params) const {
    return make<Optimization>(name, params);
  }

 private:
  PluginRegistry() = default;
  // Runs a plugin's factory; its exceptions become mhd::Error naming the plugin.
  static void guard_factory(PluginKind kind, const std::string& name, const std::function<void()>& call);
  [[noreturn]] static void throw_no_object(PluginKind kind, const std::string& name);
  struct Impl;
  std::map<std::string, std::unique_ptr<LoadedPlugin>> by_path_;
  std::vector<PluginLoadFailure> failures_;
  std::vector<std::string> searched_;
};

}  // namespace mhd
