// The plugin library's one export: the manifest of the "rwkv" backbone (see rwkv_block.h).
#include "mhd/plugin.h"
#include "rwkv_block.h"

MHD_PLUGIN(mhd::PluginKind::Backbone, mhd::rwkv::make_manifest)
