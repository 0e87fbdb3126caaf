// Training one trial: AdamW on the study's objective, metrics and solver traces per step,
// held-out evaluation (DESIGN.md §4, issue "Foundation").
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "mhd/results.h"

namespace mhd {

class PluginRegistry;
struct TrialConfig;

// Where a trial's numbers go (the results file, or a test's capture).
struct MetricSink {
  std::function<void(std::int64_t step, const std::string& name, double value)> metric;
  std::function<void(const TracePoint& point)> trace;
  std::function<void(const ProbePoint& point)> point;  // probes' chart data (probe.h); may be empty
  std::function<void()> flush;  // a good moment to persist (after evaluations)
};

struct TrainProgress {
  std::int64_t step = 0, steps = 0;
  double loss = 0, accuracy = -1;  // accuracy < 0: no evaluation yet
  double solver_iters = 0, rel_residual = 0, seconds_per_step = 0;
};

struct TrainResult {
  TrialStatus status = TrialStatus::Done;
  std::string error;
  std::int64_t diverged_step = -1;
  std::int64_t parameter_count = 0;
  double chance_accuracy = 0;
  std::map<std::string, double> first_metrics;  // first value of each metric
  std::map<std::string, double> final_metrics;  // last value of each metric
};

// Trains the trial's model on its task. Never throws for numerical trouble: a non-finite loss or
// equilibrium ends the trial as Diverged with the step. Configuration errors throw mhd::Error.
TrainResult train_trial(const TrialConfig& config, PluginRegistry& registry, const MetricSink& sink,
                        const std::function<void(const TrainProgress&)>& on_progress = nullptr);

}  // namespace mhd
