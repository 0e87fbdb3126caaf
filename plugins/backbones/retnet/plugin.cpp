// The plugin library's one export: the manifest of the "retnet" backbone (see retnet_block.h).
#include "mhd/plugin.h"
#include "retnet_block.h"

MHD_PLUGIN(mhd::PluginKind::Backbone, mhd::retnet::make_manifest)
