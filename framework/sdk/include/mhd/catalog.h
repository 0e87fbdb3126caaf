// A catalogue of named definitions, the one registry pattern of the framework: tasks
// (tasks/task.h, MHD_REGISTER_TASK) and probes (probes/probe.h, MHD_REGISTER_PROBE) register a
// Definition with a `name`, a one-line `description`, a parameter `schema` and a factory `make`;
// lookups of an unknown name fail with a "did you mean" and the list of known names. Plugins are
// found on disk instead (plugin_host/registry.h) and report unknown names the same way
// (unknown_name_message).
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "mhd/error.h"
#include "mhd/params.h"

namespace mhd {

// "unknown probe 'landscpe'; did you mean 'landscape'? (known: capacity, convergence, landscape)"
inline std::string unknown_name_message(const std::string& what, const std::string& name,
                                        const std::vector<std::string>& known) {
  std::string message = "unknown " + what + " '" + name + "'";
  if (auto hint = closest_name(name, known)) message += "; did you mean '" + *hint + "'?";
  std::string list;
  for (const auto& n : known) list += (list.empty() ? "" : ", ") + n;
  return message + " (known: " + (list.empty() ? "none" : list) + ")";
}

template <typename Definition>
class Catalog {
 public:
  explicit Catalog(std::string what) : what_(std::move(what)) {}

  // Throws mhd::Error for a definition without a name or factory, or a name registered twice.
  bool add(Definition definition) {
    if (definition.name.empty()) throw Error("a " + what_ + " needs a name");
    if (!definition.make) throw Error(what_ + " '" + definition.name + "' has no factory");
    const std::string name = definition.name;
    if (!table_.emplace(name, std::move(definition)).second)
      throw Error(what_ + " '" + name + "' is registered twice");
    return true;
  }

  const Definition* find(const std::string& name) const {
    const auto it = table_.find(name);
    return it == table_.end() ? nullptr : &it->second;
  }

  const Definition& require(const std::string& name) const {
    if (const Definition* d = find(name)) return *d;
    throw Error(unknown_name_message(what_, name, names()));
  }

  std::vector<std::string> names() const {  // sorted
    std::vector<std::string> out;
    for (const auto& entry : table_) out.push_back(entry.first);
    return out;
  }

  std::vector<const Definition*> all() const {  // sorted by name
    std::vector<const Definition*> out;
    for (const auto& entry : table_) out.push_back(&entry.second);
    return out;
  }

 private:
  std::string what_;
  std::map<std::string, Definition> table_;
};

}  // namespace mhd
