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

namespace {

// Function-local so registrations from other translation units' static initialisers find it built.
std::map<std::string, ProbeDefinition>& probe_table() {
  static std::map<std::string, ProbeDefinition> table;
  return table;
}

}  // namespace

namespace detail {

bool register_probe(ProbeDefinition definition) {
  auto& table = probe_table();
  if (definition.name.empty()) throw Error("register_probe: a probe needs a name");
  if (!definition.make) throw Error("register_probe: probe '" + definition.name + "' has no factory");
  const std::string name = definition.name;
  if (!table.emplace(name, std::move(definition)).second) {
    throw Error("register_probe: probe '" + name + "' is registered twice");
  }
  return true;
}

}  // namespace detail

std::vector<const ProbeDefinition*> probe_definitions() {
  std::vector<const ProbeDefinition*> out;
  for (const auto& [name, definition] : probe_table()) out.push_back(&definition);
  return out;  // std::map: already sorted by name
}

const ProbeDefinition& probe_definition(const std::string& name) {
  const auto& table = probe_table();
  if (auto it = table.find(name); it != table.end()) return it->second;
  std::vector<std::string> known;
  std::string list;
  for (const auto& [n, definition] : table) {
    known.push_back(n);
    list += (list.empty() ? "'" : ", '") + n + "'";
  }
  std::string message = "unknown probe '" + name + "'";
  if (auto hint = closest_name(name, known)) message += "; did you mean '" + *hint + "'?";
  throw Error(message + " (known probes: " + (list.empty() ? "none" : list) + ")");
}

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
