// Running a study: every trial trained in turn, results written as they come (DESIGN.md §5-7).
#pragma once

#include <cstdint>
#include <ostream>
#include <string>

namespace mhd {

class PluginRegistry;
struct Study;

struct RunOptions {
  std::string output;        // overrides study.output when set
  std::string device;        // overrides study.device when set ("cpu" | "cuda" | "auto")
  std::string only_variant;  // run just this variant when set
};

struct RunSummary {
  std::int64_t study_id = 0;
  std::string output;
  int done = 0, failed = 0, diverged = 0;
};

// Runs the study's trials and prints progress and a closing summary table to `log`.
// A trial that throws is marked failed with the message and the study goes on.
RunSummary run_study(const Study& study, PluginRegistry& registry, const RunOptions& options, std::ostream& log);

}  // namespace mhd
