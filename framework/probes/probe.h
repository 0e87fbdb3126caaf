// Probes: measurements of a trial's trained model, run after training (docs/design.md, "Probes").
// A study enables one with a [probes.NAME] table; its keys are validated against the probe's
// schema like every other table. Probes are part of the framework (like tasks), each in its own
// source file framework/probes/NAME_probe.cpp, registered with MHD_REGISTER_PROBE.
//
// What a probe measures goes to the results file: scalars as metrics named "NAME_..." at the
// trial's last step, and anything a chart draws (2-D grids, trajectories, matrices, curves) as
// ProbePoints (results.h), which `mhd-viewer` reads.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "mhd/catalog.h"
#include "mhd/params.h"

namespace mhd {

class PluginRegistry;
class Task;
class UnifiedModel;
struct MetricSink;
struct TrialConfig;

struct ProbeContext {
  const TrialConfig& config;
  PluginRegistry& registry;
  UnifiedModel& model;  // trained; in eval mode when the probe runs
  Task& task;           // the trial's task (held-out batches via eval_batch)
  c10::Device device;
  const MetricSink& sink;
  std::int64_t step;    // the trial's last training step: where the probe's metrics are recorded
};

class Probe {
 public:
  virtual ~Probe() = default;
  virtual void run(ProbeContext& context) = 0;
};

struct ProbeDefinition {
  std::string name;         // the table name in [probes.NAME]
  std::string description;  // one line, for docs and errors
  ParamSchema schema;
  std::function<std::unique_ptr<Probe>(const Params& params)> make;
};

// Every registered probe.
Catalog<ProbeDefinition>& probe_catalog();
// All registered probes, sorted by name.
std::vector<const ProbeDefinition*> probe_definitions();
// Throws mhd::Error listing the known probes (with a "did you mean").
const ProbeDefinition& probe_definition(const std::string& name);

// Runs the trial's enabled probes (config.probes, in file order) on the trained model: each sees
// the model in eval mode under a NoGradGuard (a probe may enable gradients locally) and writes
// metrics at `step` and points through `sink`. A probe that throws fails the trial: the error is
// rethrown as mhd::Error "probe NAME: message".
void run_probes(const TrialConfig& config, PluginRegistry& registry, UnifiedModel& model, Task& task,
                c10::Device device, const MetricSink& sink, std::int64_t step);

}  // namespace mhd

// In a probe's source file: MHD_REGISTER_PROBE(convergence, []{ return ProbeDefinition{...}; })
// (variadic: the lambda's commas are not macro argument separators).
#define MHD_REGISTER_PROBE(NAME, ...) \
  static const bool mhd_probe_registered_##NAME = ::mhd::probe_catalog().add((__VA_ARGS__)())
