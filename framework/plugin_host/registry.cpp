#include "plugin_host/registry.h"

#include "mhd/catalog.h"

#include <algorithm>
#include <cstdlib>
#include <dlfcn.h>
#include <filesystem>
#include <set>
#include <sstream>

#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>

#include "mhd/backbone.h"
#include "mhd/error.h"
#include "mhd/memory.h"
#include "mhd/optimization.h"
#include "mhd/solver.h"

namespace fs = std::filesystem;

namespace mhd {

namespace {

// Libraries are never unloaded (see registry.h); this keeps every handle alive for the process.
std::vector<boost::dll::shared_library>& loaded_libraries() {
  static auto* libs = new std::vector<boost::dll::shared_library>();
  return *libs;
}

std::string canonical_path(const std::string& path) {
  std::error_code ec;
  auto p = fs::weakly_canonical(fs::path(path), ec);
  return ec ? path : p.string();
}

bool is_plugin_file(const fs::path& p) {
  const auto name = p.filename().string();
  return p.extension() == ".so" && name.rfind("lib", 0) == 0;
}

}  // namespace

PluginRegistry& PluginRegistry::global() {
  static auto* registry = [] {
    auto* made = new PluginRegistry();  // never destroyed: plugin code outlives statics
    // Solvers that wrap another solver (mhd/solver.h) build it from this registry, at its defaults.
    install_solver_maker([made](const std::string& name) {
      return made->make<Solver>(name, Params::defaults(made->require(PluginKind::Solver, name).manifest->params));
    });
    return made;
  }();
  return *registry;
}

const LoadedPlugin& PluginRegistry::load_file(const std::string& path) {
  const std::string key = canonical_path(path);
  if (auto it = by_path_.find(key); it != by_path_.end()) return *it->second;

  if (!fs::exists(key)) throw Error(path + ": plugin file not found");
  boost::system::error_code ec;
  boost::dll::shared_library lib(key, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local, ec);
  if (ec) {
    // dlerror() names the missing symbol or dependency, which ec.message() does not.
    const char* detail = dlerror();
    throw Error(path + ": cannot load plugin: " + (detail ? std::string(detail) : ec.message()));
  }
  if (!lib.has("mhd_plugin_entry")) {
    throw Error(path + ": not an mhd plugin (no mhd_plugin_entry symbol; build it with mhd_add_plugin and MHD_PLUGIN)");
  }
  using EntryFn = PluginEntry();
  auto& entry_fn = lib.get_alias<EntryFn>("mhd_plugin_entry");
  const PluginEntry entry = entry_fn();
  if (entry.abi_version != kPluginAbiVersion) {
    std::ostringstream msg;
    msg << path << ": plugin ABI version " << entry.abi_version << " does not match the host's "
        << kPluginAbiVersion << "; rebuild the plugin against this framework";
    throw Error(msg.str());
  }
  if (entry.kind < 1 || entry.kind > kPluginKindCount) {
    throw Error(path + ": plugin declares an unknown kind (" + std::to_string(entry.kind) + ")");
  }
  const std::string host_fingerprint = MHD_BUILD_FINGERPRINT;
  if (entry.build_fingerprint == nullptr || host_fingerprint != entry.build_fingerprint) {
    throw Error(path + ": plugin was built with '" +
                std::string(entry.build_fingerprint ? entry.build_fingerprint : "?") + "' but the host with '" +
                host_fingerprint + "'; rebuild the plugin");
  }
  const Manifest* manifest = nullptr;
  try {
    manifest = entry.manifest();
  } catch (const std::exception& e) {
    throw Error(path + ": plugin manifest failed: " + std::string(e.what()));
  }
  if (manifest == nullptr || static_cast<std::uint32_t>(manifest->kind) != entry.kind) {
    throw Error(path + ": plugin manifest disagrees with its entry about its kind");
  }
  if (!sets_own_factory(*manifest)) throw Error(path + ": plugin '" + manifest->name + "' has no " + to_string(manifest->kind) + " factory");
  if (const LoadedPlugin* other = find(manifest->kind, manifest->name)) {
    throw Error(path + ": " + to_string(manifest->kind) + " plugin '" + manifest->name + "' is already loaded from " +
                other->path + "; remove one of them from the plugin path");
  }
  loaded_libraries().push_back(std::move(lib));
  auto plugin = std::make_unique<LoadedPlugin>();
  plugin->path = key;
  plugin->manifest = manifest;
  return *by_path_.emplace(key, std::move(plugin)).first->second;
}

const LoadedPlugin& PluginRegistry::load_file(const std::string& path, PluginKind expected) {
  // Check the kind from the entry before accepting the plugin, so a wrong-kind file is refused
  // whether or not it was loaded before.
  const LoadedPlugin& plugin = load_file(path);
  if (plugin.manifest->kind != expected) {
    throw Error(path + ": plugin '" + plugin.manifest->name + "' is a " + to_string(plugin.manifest->kind) +
                " plugin, expected a " + to_string(expected) + " plugin");
  }
  return plugin;
}

void PluginRegistry::scan_directory(const std::string& directory) {
  const std::string dir = canonical_path(directory);
  if (std::find(searched_.begin(), searched_.end(), dir) != searched_.end()) return;
  searched_.push_back(dir);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  std::vector<fs::path> files;
  for (fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end;
       !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec) && is_plugin_file(it->path())) files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());  // deterministic order, whatever the file system says
  for (const auto& file : files) {
    try {
      load_file(file.string());
    } catch (const Error& e) {
      failures_.push_back({file.string(), e.what()});
    }
  }
}

void PluginRegistry::scan_default_paths(const std::vector<std::string>& extra_dirs) {
  if (const char* env = std::getenv("MHD_PLUGIN_PATH")) {
    std::stringstream paths(env);
    std::string dir;
    while (std::getline(paths, dir, ':'))
      if (!dir.empty()) scan_directory(dir);
  }
  // build/bin/mhd -> build/plugins
  boost::system::error_code ec;
  const auto exe = boost::dll::program_location(ec);
  if (!ec) scan_directory((exe.parent_path().parent_path() / "plugins").string());
  for (const auto& dir : extra_dirs) scan_directory(dir);
}

const LoadedPlugin* PluginRegistry::find(PluginKind kind, const std::string& name) const {
  for (const auto& [path, plugin] : by_path_)
    if (plugin->manifest->kind == kind && plugin->manifest->name == name) return plugin.get();
  return nullptr;
}

const LoadedPlugin& PluginRegistry::require(PluginKind kind, const std::string& name) const {
  if (const LoadedPlugin* p = find(kind, name)) return *p;
  std::vector<std::string> names;
  for (const auto* p : plugins(kind)) names.push_back(p->manifest->name);
  if (names.empty())
    throw Error(std::string("unknown ") + to_string(kind) + " plugin '" + name + "' (no " + to_string(kind) +
                " plugins found; is the plugin path right?)");
  const std::string msg = unknown_name_message(std::string(to_string(kind)) + " plugin", name, names);
  throw Error(msg);
}

std::vector<const LoadedPlugin*> PluginRegistry::plugins(PluginKind kind) const {
  std::vector<const LoadedPlugin*> out;
  for (const auto* p : all())
    if (p->manifest->kind == kind) out.push_back(p);
  return out;
}

std::vector<const LoadedPlugin*> PluginRegistry::all() const {
  std::vector<const LoadedPlugin*> out;
  for (const auto& [path, plugin] : by_path_) out.push_back(plugin.get());
  std::sort(out.begin(), out.end(), [](const LoadedPlugin* a, const LoadedPlugin* b) {
    return std::make_pair(a->manifest->kind, a->manifest->name) < std::make_pair(b->manifest->kind, b->manifest->name);
  });
  return out;
}

void PluginRegistry::guard_factory(PluginKind kind, const std::string& name, const std::function<void()>& call) {
  try {
    call();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    // Copy the message now: the exception object's type lives in the plugin.
    throw Error(std::string(to_string(kind)) + " plugin '" + name + "' failed to build: " + std::string(e.what()));
  }
}

void PluginRegistry::throw_no_object(PluginKind kind, const std::string& name) {
  throw Error(std::string(to_string(kind)) + " plugin '" + name + "' returned no object");
}

}  // namespace mhd
