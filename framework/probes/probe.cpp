// The probe registry and the post-training run of a trial's probes (probe.h).
#include "probes/probe.h"

#include <algorithm>
#include <map>

#include <ATen/core/grad_mode.h>

#include "mhd/error.h"
#include "core/model.h"
#include "config/trial_config.h"
#include "train/records.h"

namespace mhd {

Catalog<ProbeDefinition>& probe_catalog() {
  // Function-local so registrations from other translation units' static initialisers find it built.
  static Catalog<ProbeDefinition> catalog("probe");
  return catalog;
}

std::vector<const ProbeDefinition*> probe_definitions() { return probe_catalog().all(); }

const ProbeDefinition& probe_definition(const std::string& name) { return probe_catalog().require(name); }

void run_probes(const TrialConfig& config, PluginRegistry& registry, UnifiedModel& model, Task& task,
                c10::Device device, const MetricSink& sink, std::int64_t step) {
  if (config.probes.empty()) return;
  model.eval();
  at::NoGradGuard no_grad;
  for (const auto& enabled : config.probes) {
    try {
      const ProbeDefinition& definition = probe_definition(enabled.plugin);
      std::unique_ptr<Probe> probe = definition.make(enabled.params);
      ProbeContext context{config, registry, model, task, device, sink, step};
      probe->run(context);
    } catch (const std::exception& e) {
      throw Error("probe " + enabled.plugin + ": " + e.what());
    }
  }
  if (sink.flush) sink.flush();
}

}  // namespace mhd
