// The fully resolved configuration of one trial (docs/design.md §5): what the study parser
// produces, what the trainer, the probes and the results file consume, and what a results row
// stores as JSON so any trial can be re-run alone.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "mhd/params.h"

namespace mhd {


// Everything one trial needs, fully resolved (defaults filled in). Serialised as JSON into the
// results so any trial can be re-run alone.
struct TrialConfig {
  std::string study;
  std::string variant;  // "base" or a [[variant]] name
  std::int64_t seed = 0;
  std::vector<std::pair<std::string, ParamValue>> sweep_point;  // axis ("memory.size") -> value

  Params run;        // [study] device, threads
  std::string task_kind;
  Params task;       // [task] without `kind`, validated against task_schema(kind)
  Params model;      // [model]
  Params energy;     // [energy]
  ComponentConfig backbone;         // [backbone]
  ComponentConfig memory;           // [memory]
  ComponentConfig solver;           // [solver] plugin params
  Params solve;                     // [solver] framework keys: max_iter, tol
  Params backward;                  // [backward]
  ComponentConfig backward_solver;  // backward.solver with its default parameters
  Params train;                     // [train]
  Params objective;                 // [train.objective]
  std::vector<ComponentConfig> optimizations;  // enabled [optimizations.NAME], in file order
  std::vector<ComponentConfig> probes;  // enabled [probes.NAME] (plugin = probe name), in file order

  // Canonical JSON (sorted keys), identical for identical configurations.
  std::string to_json() const;
  // Hex digest of to_json(), to detect a changed configuration.
  std::string hash() const;
  // "variant memory.size=1024 seed=0"
  std::string label() const;
  // "memory.size=1024 task.seq_len=64" ("" without a sweep)
  std::string sweep_label() const;
  // {"memory.size": 1024} (sorted keys; "{}" without a sweep), as stored in the results.
  std::string sweep_json() const;

  // Reads back to_json() (e.g. a trial's config_json from a results file) so a trial can be
  // re-run alone. Throws mhd::Error when the text is not such a configuration.
  static TrialConfig from_json(const std::string& json);
};

// Validates `values` against `schema` and fills in defaults. Unknown names (with a "did you mean"),
// wrong types and out-of-range values throw mhd::Error naming `section.name`; an Int value for a
// Float parameter is widened. For configurations built in code (tests, tools); study files get
// the same checks with file positions from load_study.
Params validate_params(const ParamSchema& schema, const std::map<std::string, ParamValue>& values,
                       const std::string& section);

}  // namespace mhd
