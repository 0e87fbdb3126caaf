// A plugin built for another ABI version: the host must refuse it before calling anything else.
#include "mhd/plugin.h"

namespace {
const mhd::Manifest* never_called() { return nullptr; }
mhd::PluginEntry entry() {
  return {mhd::kPluginAbiVersion + 41, static_cast<std::uint32_t>(mhd::PluginKind::Solver), MHD_BUILD_FINGERPRINT,
          &never_called};
}
}  // namespace
BOOST_DLL_ALIAS(entry, mhd_plugin_entry)
