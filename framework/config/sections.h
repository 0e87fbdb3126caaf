// The framework's own study tables (docs/design.md §5), declared with the same ParamSchema type the
// plugins use, so one validator serves every table and docs/studies.md can be generated from it.
#pragma once

#include <string>
#include <vector>

#include "mhd/params.h"

namespace mhd {

// A table of a study file and the schema of its scalar keys. `plugin_kind` is set for tables
// whose `plugin` key picks a plugin whose own schema also applies ([backbone], [memory], [solver]).
struct SectionSchema {
  std::string name;
  std::string doc;
  ParamSchema keys;
  std::string plugin_kind;  // "", "backbone", "memory" or "solver"
};

// [study] scalars (name, device, output, threads, include_base, description). Array keys
// `seeds` (integers) and `plugin_path` (strings) are handled by the study parser.
const SectionSchema& study_section();
const SectionSchema& model_section();     // [model]
const SectionSchema& energy_section();    // [energy]
const SectionSchema& backbone_section();  // [backbone]: plugin
const SectionSchema& memory_section();    // [memory]: plugin
const SectionSchema& solver_section();    // [solver]: plugin, max_iter, tol
const SectionSchema& backward_section();  // [backward]: mode, solver, max_iter, tol
const SectionSchema& train_section();     // [train] scalars; `objective` is its own table
const SectionSchema& objective_section(); // [train.objective]
// Keys every [optimizations.NAME] table has besides the plugin's own (enabled).
const SectionSchema& optimization_common_section();
// Keys every [probes.NAME] table has besides the probe's own (enabled); probes are in probe.h.
const SectionSchema& probe_common_section();

// Every table above in file order, for validation and for docs.
std::vector<const SectionSchema*> all_sections();

}  // namespace mhd
