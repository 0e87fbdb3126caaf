// Study files (docs/design.md §5): parse, validate every key, expand into trials of TrialConfig
// (config/trial_config.h).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "config/trial_config.h"
#include "mhd/params.h"

namespace mhd {

class PluginRegistry;

struct Study {
  std::string path;       // as given
  std::string name;
  std::string description;
  std::string toml_text;  // verbatim
  std::string output;     // results file
  std::vector<std::string> plugin_path;
  std::vector<std::int64_t> seeds;
  std::vector<std::string> variants;     // in run order ("base" first when included)
  std::vector<std::string> variant_descriptions;  // parallel to `variants` ("" when none given)
  std::vector<std::string> sweep_axes;   // in file order
  std::vector<TrialConfig> trials;       // variants x sweep points x seeds, in that nesting order
};

// Reads, validates and expands a study file. Plugins named in the study are looked up in
// `registry` after scanning the study's plugin_path (relative to the study file's folder).
// Every problem throws mhd::StudyError "FILE:LINE:COL: error: ..." before anything runs.
Study load_study(const std::string& path, PluginRegistry& registry);
// The same from text; `path` is used for messages and to resolve relative paths.
Study parse_study(const std::string& toml_text, const std::string& path, PluginRegistry& registry);

}  // namespace mhd
