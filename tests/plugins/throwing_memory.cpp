// A memory plugin whose factory throws, and whose schema has a bounded parameter: the host must
// report the plugin's message with its name.
#include <stdexcept>

#include "mhd/memory.h"
#include "mhd/plugin.h"

namespace {
mhd::Manifest make_manifest() {
  mhd::Manifest m;
  m.kind = mhd::PluginKind::Memory;
  m.name = "throwing_memory";
  m.version = "0.0.1";
  m.description = "Test plugin whose factory always throws.";
  m.params = {mhd::int_param("size", 4, "slots", 1, 8)};
  m.make_memory = [](const mhd::Params& p, const mhd::ModelDims&) -> std::shared_ptr<mhd::Memory> {
    throw std::runtime_error("cannot allocate " + std::to_string(p.integer("size")) + " slots");
  };
  return m;
}
}  // namespace
MHD_PLUGIN(mhd::PluginKind::Memory, make_manifest)
