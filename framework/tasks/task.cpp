#include "tasks/task.h"

namespace mhd {

Catalog<TaskDefinition>& task_catalog() {
  // Function-local so registrations from other translation units' static initialisers find it built.
  static Catalog<TaskDefinition> catalog("task kind");
  return catalog;
}

std::vector<std::string> task_kinds() { return task_catalog().names(); }

const ParamSchema& task_schema(const std::string& kind) { return task_catalog().require(kind).schema; }

std::unique_ptr<Task> make_task(const std::string& kind, const Params& params, std::uint64_t seed) {
  return task_catalog().require(kind).make(params, seed);
}

void check_task(const std::string& kind, const Params& params) {
  const TaskDefinition& definition = task_catalog().require(kind);
  if (definition.check) definition.check(params);
}

bool scores_last_position_only(const std::string& kind, const Params& params) {
  const TaskDefinition& definition = task_catalog().require(kind);
  return definition.last_position_only && definition.last_position_only(params);
}

}  // namespace mhd
