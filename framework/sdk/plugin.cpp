#include "mhd/plugin.h"

#include "mhd/error.h"

namespace mhd {

namespace {
// Indexed by the kind's value - 1.
constexpr const char* kPluginKindNames[kPluginKindCount] = {"backbone", "memory", "solver", "optimization"};
}  // namespace

const char* to_string(PluginKind kind) {
  const auto raw = static_cast<std::uint32_t>(kind);
  return raw >= 1 && raw <= kPluginKindCount ? kPluginKindNames[raw - 1] : "unknown kind";
}

PluginKind plugin_kind_from_string(const std::string& name) {
  std::string known;
  for (std::uint32_t raw = 1; raw <= kPluginKindCount; ++raw) {
    if (name == kPluginKindNames[raw - 1]) return static_cast<PluginKind>(raw);
    known += (known.empty() ? "" : ", ") + std::string(kPluginKindNames[raw - 1]);
  }
  throw Error("unknown plugin kind '" + name + "': expected one of " + known);
}

ParamCheck heads_divide_d_model(const std::string& plugin, const std::string& key) {
  return [plugin, key](const Params& params, const ModelDims& dims) {
    const std::int64_t heads = params.integer(key);
    if (heads >= 1 && dims.d_model % heads == 0) return;
    throw Error(plugin + ": " + key + " = " + std::to_string(heads) + " does not divide d_model = " +
                std::to_string(dims.d_model) + " (each head is d_model / " + key + " wide)");
  };
}

}  // namespace mhd
