// The plugin library's one export: the manifest of the "attention" backbone (see attention_block.h).
#include "attention_block.h"
#include "mhd/plugin.h"

MHD_PLUGIN(mhd::PluginKind::Backbone, mhd::attention::make_manifest)
