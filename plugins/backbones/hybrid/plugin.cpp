// The plugin library's one export: the manifest of the "hybrid" backbone (see hybrid_block.h).
#include "hybrid_block.h"
#include "mhd/plugin.h"

MHD_PLUGIN(mhd::PluginKind::Backbone, mhd::hybrid::make_manifest)
