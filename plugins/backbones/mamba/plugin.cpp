// The plugin library's one export: the manifest of the "mamba" backbone (see mamba_block.h).
#include "mamba_block.h"
#include "mhd/plugin.h"

MHD_PLUGIN(mhd::PluginKind::Backbone, mhd::mamba::make_manifest)
