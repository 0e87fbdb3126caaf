// For tests that build whole models or studies: the registry with every in-tree plugin loaded from
// this build (the paths come from mhd_add_test(... PLUGINS mamba hopfield fixed_point anderson
// contractive)).
#pragma once

#include "plugin_host/registry.h"

inline mhd::PluginRegistry& registry_with_all_plugins() {
  auto& registry = mhd::PluginRegistry::global();
  for (const char* path : {MHD_PLUGIN_MAMBA, MHD_PLUGIN_HOPFIELD, MHD_PLUGIN_FIXED_POINT, MHD_PLUGIN_ANDERSON,
                           MHD_PLUGIN_CONTRACTIVE})
    registry.load_file(path);
  return registry;
}
