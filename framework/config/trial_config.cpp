// TrialConfig's serialised forms (canonical JSON, hash, labels) and validate_params.
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "mhd/error.h"
#include "config/trial_config.h"
#include "config/format.h"

namespace mhd {

namespace detail {

std::string format_number(double value) {
  char buf[40];
  // Whole numbers read best without an exponent: 1000, not 1e+03.
  if (std::isfinite(value) && value == std::trunc(value) && std::fabs(value) < 1e15) {
    std::snprintf(buf, sizeof buf, "%.0f", value);
    return buf;
  }
  // Try increasing precision until the text reads back exactly: 0.001 stays "0.001", not
  // "0.0010000000000000000208".
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, value);
    if (std::strtod(buf, nullptr) == value) break;
  }
  return buf;
}

std::string format_plain(const ParamValue& value) {
  if (const auto* b = std::get_if<bool>(&value)) return *b ? "true" : "false";
  if (const auto* i = std::get_if<std::int64_t>(&value)) return std::to_string(*i);
  if (const auto* d = std::get_if<double>(&value)) return format_number(*d);
  return std::get<std::string>(value);
}

}  // namespace detail

namespace {

using nlohmann::json;

json value_json(const ParamValue& value) {
  return std::visit([](const auto& v) { return json(v); }, value);
}

json params_json(const Params& params) {
  json out = json::object();
  for (const auto& [name, value] : params.values()) out[name] = value_json(value);
  return out;
}

json component_json(const ComponentConfig& c) { return json{{"plugin", c.plugin}, {"params", params_json(c.params)}}; }

// --- reading back -----------------------------------------------------------------------

[[noreturn]] void bad_config(const std::string& what) {
  throw Error("not a trial configuration (" + what + ")");
}

const json& field(const json& object, const char* name) {
  if (!object.is_object()) bad_config(std::string("expected an object holding '") + name + "'");
  auto it = object.find(name);
  if (it == object.end()) bad_config(std::string("missing '") + name + "'");
  return *it;
}

ParamValue value_from_json(const json& j, const std::string& name) {
  // nlohmann keeps 3 and 3.0 apart, so integers stay integers and floats stay floats.
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_number_integer()) return j.get<std::int64_t>();
  if (j.is_number_float()) return j.get<double>();
  if (j.is_string()) return j.get<std::string>();
  bad_config("'" + name + "' is not a bool, number or string");
}

Params params_from_json(const json& j, const char* name) {
  if (!j.is_object()) bad_config(std::string("'") + name + "' is not an object");
  Params p;
  for (auto it = j.begin(); it != j.end(); ++it) p.set(it.key(), value_from_json(it.value(), it.key()));
  return p;
}

ComponentConfig component_from_json(const json& j, const char* name) {
  ComponentConfig c;
  const json& plugin = field(j, "plugin");
  if (!plugin.is_string()) bad_config(std::string(name) + ".plugin is not a string");
  c.plugin = plugin.get<std::string>();
  c.params = params_from_json(field(j, "params"), name);
  return c;
}

std::string string_field(const json& j, const char* name) {
  const json& v = field(j, name);
  if (!v.is_string()) bad_config(std::string("'") + name + "' is not a string");
  return v.get<std::string>();
}

}  // namespace

std::string TrialConfig::to_json() const {
  // nlohmann's default object is a std::map, so keys come out sorted: equal configurations give
  // equal text, which is what hash() relies on.
  json sweep = json::array();
  for (const auto& [axis, value] : sweep_point) sweep.push_back(json::array({axis, value_json(value)}));
  json optimization_list = json::array();
  for (const auto& o : optimizations) optimization_list.push_back(component_json(o));
  const json j{
      {"study", study},
      {"variant", variant},
      {"seed", seed},
      {"sweep", sweep},  // an array: the axis order is part of the configuration's identity
      {"run", params_json(run)},
      {"task_kind", task_kind},
      {"task", params_json(task)},
      {"model", params_json(model)},
      {"energy", params_json(energy)},
      {"backbone", component_json(backbone)},
      {"memory", component_json(memory)},
      {"solver", component_json(solver)},
      {"solve", params_json(solve)},
      {"backward", params_json(backward)},
      {"backward_solver", component_json(backward_solver)},
      {"train", params_json(train)},
      {"objective", params_json(objective)},
      {"optimizations", optimization_list},
  };
  // Written only when a probe is enabled, so configurations without probes keep the JSON and hash
  // they had before probes existed (results files stay resumable).
  if (!probes.empty()) {
    json probe_list = json::array();
    for (const auto& p : probes) probe_list.push_back(component_json(p));
    json with_probes = j;
    with_probes["probes"] = probe_list;
    return with_probes.dump();
  }
  return j.dump();
}

std::string TrialConfig::hash() const {
  // FNV-1a, 64 bits: enough to notice a changed configuration; not a security property.
  std::uint64_t h = 14695981039346656037ULL;
  for (const unsigned char c : to_json()) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, h);
  return buf;
}

std::string TrialConfig::sweep_label() const {
  std::string out;
  for (const auto& [axis, value] : sweep_point) {
    if (!out.empty()) out += ' ';
    out += axis + "=" + detail::format_plain(value);
  }
  return out;
}

std::string TrialConfig::label() const {
  const std::string sweep = sweep_label();
  return variant + (sweep.empty() ? "" : " " + sweep) + " seed=" + std::to_string(seed);
}

std::string TrialConfig::sweep_json() const {
  json j = json::object();
  for (const auto& [axis, value] : sweep_point) j[axis] = value_json(value);
  return j.dump();
}

TrialConfig TrialConfig::from_json(const std::string& text) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    bad_config(std::string("invalid JSON: ") + e.what());
  }
  TrialConfig c;
  c.study = string_field(j, "study");
  c.variant = string_field(j, "variant");
  const json& seed = field(j, "seed");
  if (!seed.is_number_integer()) bad_config("'seed' is not an integer");
  c.seed = seed.get<std::int64_t>();
  const json& sweep = field(j, "sweep");
  if (!sweep.is_array()) bad_config("'sweep' is not an array");
  for (const json& point : sweep) {
    if (!point.is_array() || point.size() != 2 || !point[0].is_string()) bad_config("'sweep' entries are not [axis, value]");
    const auto axis = point[0].get<std::string>();
    c.sweep_point.emplace_back(axis, value_from_json(point[1], axis));
  }
  c.run = params_from_json(field(j, "run"), "run");
  c.task_kind = string_field(j, "task_kind");
  c.task = params_from_json(field(j, "task"), "task");
  c.model = params_from_json(field(j, "model"), "model");
  c.energy = params_from_json(field(j, "energy"), "energy");
  c.backbone = component_from_json(field(j, "backbone"), "backbone");
  c.memory = component_from_json(field(j, "memory"), "memory");
  c.solver = component_from_json(field(j, "solver"), "solver");
  c.solve = params_from_json(field(j, "solve"), "solve");
  c.backward = params_from_json(field(j, "backward"), "backward");
  c.backward_solver = component_from_json(field(j, "backward_solver"), "backward_solver");
  c.train = params_from_json(field(j, "train"), "train");
  c.objective = params_from_json(field(j, "objective"), "objective");
  const json& optimization_list = field(j, "optimizations");
  if (!optimization_list.is_array()) bad_config("'optimizations' is not an array");
  for (const json& o : optimization_list) c.optimizations.push_back(component_from_json(o, "optimizations"));
  if (auto it = j.find("probes"); it != j.end()) {  // absent: no probes (see to_json)
    if (!it->is_array()) bad_config("'probes' is not an array");
    for (const json& p : *it) c.probes.push_back(component_from_json(p, "probes"));
  }
  return c;
}

Params validate_params(const ParamSchema& schema, const std::map<std::string, ParamValue>& values,
                       const std::string& section) {
  Params out = Params::defaults(schema);
  for (const auto& [name, value] : values) {
    const std::string dotted = section.empty() ? name : section + "." + name;
    const ParamSpec* spec = find_param(schema, name);
    if (spec == nullptr) {
      std::vector<std::string> names;
      for (const auto& s : schema) names.push_back(s.name);
      std::string msg = "unknown key '" + dotted + "'";
      if (auto hint = closest_name(name, names)) msg += "; did you mean '" + *hint + "'?";
      throw Error(msg);
    }
    if (auto why = check_param_value(*spec, value)) throw Error(dotted + ": " + *why);
    const bool widen = spec->type == ParamType::Float && std::holds_alternative<std::int64_t>(value);
    out.set(name, widen ? ParamValue(static_cast<double>(std::get<std::int64_t>(value))) : value);
  }
  return out;
}

}  // namespace mhd
