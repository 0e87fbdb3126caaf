// Resolving a merged configuration: every key checked against its schema, converted, defaults
// filled, plugins and task kinds chosen (study/parser.h).
#include "study/parser.h"

namespace mhd::study_detail {

ResolvedTable StudyParser::resolve_table(const RawTable& raw, const std::string& section, const ParamSchema& keys,
                            const PluginChoice* plugin, const std::vector<std::string>& extra_names,
                            const std::string& context) const {
  ResolvedTable out;
  out.framework = Params::defaults(keys);
  if (plugin != nullptr) out.plugin = Params::defaults(*plugin->schema);
  for (const auto& [name, entry] : raw.keys) {
    if (const ParamSpec* spec = find_param(keys, name)) {
      out.framework.set(name, convert(*entry.node, *spec, section + "." + name, context));
    } else if (const ParamSpec* pspec = plugin ? find_param(*plugin->schema, name) : nullptr) {
      out.plugin.set(name, convert(*entry.node, *pspec, section + "." + name, context));
    } else if (std::find(extra_names.begin(), extra_names.end(), name) != extra_names.end()) {
      continue;
    } else if (plugin != nullptr && entry.layer < plugin->layer) {
      continue;  // the base's key for the plugin a variant replaced; the new plugin lacks it
    } else {
      unknown_key(*entry.node, section, name, keys, plugin, extra_names, context);
    }
  }
  return out;
}

ParamValue StudyParser::convert(const toml::node& node, const ParamSpec& spec, const std::string& dotted,
                   const std::string& context) const {
  std::optional<ParamValue> value = scalar_of(node);
  const bool type_ok =
      value && ((spec.type == ParamType::Bool && std::holds_alternative<bool>(*value)) ||
                (spec.type == ParamType::Int && std::holds_alternative<std::int64_t>(*value)) ||
                (spec.type == ParamType::Float && (std::holds_alternative<double>(*value) ||
                                                   std::holds_alternative<std::int64_t>(*value))) ||
                (spec.type == ParamType::String && std::holds_alternative<std::string>(*value)));
  if (!type_ok) {
    std::string msg = dotted + ": expected " + to_string(spec.type) + ", got " + describe(node);
    if (spec.type == ParamType::Int && node.is_floating_point()) {
      msg += " (write integers without a decimal point or exponent)";
    }
    fail(node, msg + context);
  }
  if (spec.type == ParamType::Float && std::holds_alternative<std::int64_t>(*value)) {
    value = static_cast<double>(std::get<std::int64_t>(*value));
  }
  if (auto why = check_param_value(spec, *value)) fail(node, dotted + ": " + *why + context);
  return *value;
}

PluginChoice StudyParser::choose_plugin(const RawTable& raw, const std::string& section, PluginKind kind,
                           const std::string& context) const {
  const ParamSpec& spec = *find_param(framework_schema(section).keys, "plugin");
  PluginChoice choice;
  choice.name = std::get<std::string>(spec.default_value);
  Pos pos = raw.pos;
  std::string origin = " (the default)";
  if (auto it = raw.keys.find("plugin"); it != raw.keys.end()) {
    choice.name = std::get<std::string>(convert(*it->second.node, spec, section + ".plugin", context));
    choice.layer = it->second.layer;
    pos = pos_of(*it->second.node);
    origin.clear();
  }
  choice.schema = &find_plugin(kind, choice.name, pos, section + ".plugin" + origin, context).manifest->params;
  choice.what = std::string(to_string(kind)) + " plugin '" + choice.name + "'";
  return choice;
}

const LoadedPlugin& StudyParser::find_plugin(PluginKind kind, const std::string& name, Pos pos, const std::string& key,
                                const std::string& context) const {
  try {
    return registry_.require(kind, name);
  } catch (const StudyError&) {
    throw;
  } catch (const Error& e) {
    // require() lists the known plugins and a "did you mean"; add where the name was written.
    fail(pos, key + ": " + e.what() + context);
  }
}

PluginChoice StudyParser::choose_task_kind(const RawTable& raw, const std::string& context) const {
  const Entry& entry = raw.keys.at("kind");  // require_task_kind checked the base
  const ParamSpec spec = string_param("kind", "", "");
  PluginChoice choice;
  choice.name = std::get<std::string>(convert(*entry.node, spec, "task.kind", context));
  choice.layer = entry.layer;
  const std::vector<std::string> kinds = task_kinds();
  if (std::find(kinds.begin(), kinds.end(), choice.name) == kinds.end()) {
    std::string msg = "task.kind: unknown task kind '" + choice.name + "'";
    if (auto hint = closest_name(choice.name, kinds)) msg += "; did you mean '" + *hint + "'?";
    fail(*entry.node, msg + " (known: " + join(kinds) + ")" + context);
  }
  choice.schema = &task_schema(choice.name);
  choice.what = "task kind '" + choice.name + "'";
  return choice;
}

TrialConfig StudyParser::resolve(const RawConfig& raw, const std::string& context) const {
  auto table = [&](const std::string& name) -> const RawTable& {
    static const RawTable empty;
    auto it = raw.tables.find(name);
    return it == raw.tables.end() ? empty : it->second;
  };
  TrialConfig c;
  c.run = run_;

  const PluginChoice kind = choose_task_kind(table("task"), context);
  c.task_kind = kind.name;
  c.task = resolve_table(table("task"), "task", {string_param("kind", "", "")}, &kind, {}, context).plugin;
  resolve_task_file(c.task, table("task"), context);
  check_task_keys(c, table("task"), context);

  c.model = resolve_table(table("model"), "model", model_section().keys, nullptr, {}, context).framework;
  check_equilibrium_fits_task(c, table("model"), context);
  c.energy = resolve_table(table("energy"), "energy", energy_section().keys, nullptr, {}, context).framework;
  c.backbone = resolve_component(table("backbone"), "backbone", PluginKind::Backbone, context).second;
  c.memory = resolve_component(table("memory"), "memory", PluginKind::Memory, context).second;
  auto [solve, solver] = resolve_component(table("solver"), "solver", PluginKind::Solver, context);
  c.solver = solver;
  const ModelDims dims{c.model.integer("d_model"),
                       c.task.has("vocab_size") ? c.task.integer("vocab_size") : ModelDims{}.vocab_size};
  check_component(c.backbone, PluginKind::Backbone, dims, table("backbone"), "backbone", context);
  check_component(c.memory, PluginKind::Memory, dims, table("memory"), "memory", context);
  check_component(c.solver, PluginKind::Solver, dims, table("solver"), "solver", context);
  // Every framework key of [solver] but `plugin` (max_iter, tol, warm_start, ...).
  for (const auto& spec : solver_section().keys)
    if (spec.name != "plugin") c.solve.set(spec.name, solve.values().at(spec.name));

  c.backward = resolve_table(table("backward"), "backward", backward_section().keys, nullptr, {}, context).framework;
  c.backward_solver = resolve_backward_solver(table("backward"), c.backward.text("solver"), context);

  c.train = resolve_table(table("train"), "train", train_section().keys, nullptr, {"objective"}, context).framework;
  c.objective = resolve_table(table("train.objective"), "train.objective", objective_section().keys, nullptr, {},
                              context)
                    .framework;
  c.optimizations = resolve_optimizations(raw, context);
  for (const auto& optimization : c.optimizations)
    check_component(optimization, PluginKind::Optimization, dims, raw.optimizations.at(optimization.plugin),
                    "optimizations." + optimization.plugin, context);
  c.probes = resolve_probes(raw, context);
  try {
    check_training_config(c);  // [train] keys that depend on each other or on other tables
  } catch (const Error& e) {
    fail(table("train").pos, e.what() + context);
  }
  return c;
}

void StudyParser::resolve_task_file(Params& task, const RawTable& raw, const std::string& context) const {
  if (!task.has("path") || task.text("path").empty()) return;
  fs::path file(task.text("path"));
  if (file.is_relative()) file = fs::path(path_).parent_path() / file;
  file = file.lexically_normal();
  std::error_code ec;
  if (!fs::is_regular_file(file, ec)) {
    const std::string msg = "task.path: \"" + task.text("path") + "\" is not a file (looked for " + file.string() + ")";
    auto entry = raw.keys.find("path");
    if (entry != raw.keys.end()) fail(*entry->second.node, msg + context);
    fail(raw.pos, msg + context);
  }
  task.set("path", file.string());
}

void StudyParser::check_task_keys(const TrialConfig& c, const RawTable& raw, const std::string& context) const {
  try {
    check_task(c.task_kind, c.task);
  } catch (const StudyError&) {
    throw;
  } catch (const Error& e) {
    fail_at_named_key(e.what(), raw, "task.", context);
  }
}

void StudyParser::check_component(const ComponentConfig& component, PluginKind kind, const ModelDims& dims,
                                  const RawTable& raw, const std::string& section, const std::string& context) const {
  const LoadedPlugin& plugin = registry_.require(kind, component.plugin);
  if (!plugin.manifest->check) return;
  try {
    plugin.manifest->check(component.params, dims);
  } catch (const StudyError&) {
    throw;
  } catch (const Error& e) {
    fail_at_named_key(section + ": " + e.what(), raw, "", context);
  }
}

void StudyParser::fail_at_named_key(const std::string& message, const RawTable& raw, const std::string& prefix,
                                    const std::string& context) const {
  // The message names the key at fault first ("task.seq_len = 24 is too short ...", "size = 250 is
  // not a perfect square") and maybe others involved: point at the named key this trial wrote last (a
  // sweep's element over a variant's key over the base's), the first named on a tie, else at the table.
  const std::string ident = "abcdefghijklmnopqrstuvwxyz0123456789_.";
  auto first_mention = [&](const std::string& name) {
    const std::string word = prefix + name;
    for (auto at = message.find(word); at != std::string::npos; at = message.find(word, at + 1)) {
      const auto end = at + word.size();
      const bool starts = at == 0 || ident.find(message[at - 1]) == std::string::npos;
      const bool ends = end == message.size() || ident.find(message[end]) == std::string::npos;
      if (starts && ends) return at;
    }
    return std::string::npos;
  };
  const toml::node* node = nullptr;
  std::size_t best_at = std::string::npos;
  Layer best_layer = Layer::Base;
  for (const auto& [name, entry] : raw.keys) {
    const auto at = first_mention(name);
    if (at == std::string::npos) continue;
    if (node == nullptr || entry.layer > best_layer || (entry.layer == best_layer && at < best_at)) {
      node = entry.node;
      best_at = at;
      best_layer = entry.layer;
    }
  }
  if (node != nullptr) fail(*node, message + context);
  fail(raw.pos, message + context);
}

void StudyParser::check_equilibrium_fits_task(const TrialConfig& c, const RawTable& model,
                                              const std::string& context) const {
  if (!c.model.flag("deq") || c.model.text("equilibrium") != "pooled") return;
  if (scores_last_position_only(c.task_kind, c.task)) return;
  const std::string message =
      "model.equilibrium = \"pooled\" gives every position the state solved from the whole sequence, so position t "
      "would see tokens after t; task \"" + c.task_kind + "\" has targets before the last position: use "
      "equilibrium = \"sequence\" (or a task scored at the last position only)";
  if (auto entry = model.keys.find("equilibrium"); entry != model.keys.end()) fail(*entry->second.node, message + context);
  fail(model.pos, message + context);
}

std::pair<Params, ComponentConfig> StudyParser::resolve_component(const RawTable& raw, const std::string& section,
                                                     PluginKind kind, const std::string& context) const {
  const PluginChoice plugin = choose_plugin(raw, section, kind, context);
  ResolvedTable resolved = resolve_table(raw, section, framework_schema(section).keys, &plugin, {}, context);
  return {std::move(resolved.framework), ComponentConfig{plugin.name, std::move(resolved.plugin)}};
}

ComponentConfig StudyParser::resolve_backward_solver(const RawTable& backward, const std::string& name,
                                        const std::string& context) const {
  Pos pos = backward.pos;
  std::string key = "backward.solver (the default)";
  if (auto it = backward.keys.find("solver"); it != backward.keys.end()) {
    pos = pos_of(*it->second.node);
    key = "backward.solver";
  }
  const LoadedPlugin& plugin = find_plugin(PluginKind::Solver, name, pos, key, context);
  return ComponentConfig{name, Params::defaults(plugin.manifest->params)};
}

std::vector<ComponentConfig> StudyParser::resolve_optimizations(const RawConfig& raw, const std::string& context) const {
  std::vector<ComponentConfig> out;
  for (const auto& name : raw.optimization_order) {
    const RawTable& table = raw.optimizations.at(name);
    const LoadedPlugin& loaded = find_plugin(PluginKind::Optimization, name, table.pos, "optimizations." + name, context);
    PluginChoice plugin{name, "optimization plugin '" + name + "'", &loaded.manifest->params, Layer::Base};
    ResolvedTable resolved = resolve_table(table, "optimizations." + name, optimization_common_section().keys,
                                           &plugin, {}, context);
    if (resolved.framework.flag("enabled")) out.push_back(ComponentConfig{name, std::move(resolved.plugin)});
  }
  return out;
}

std::vector<ComponentConfig> StudyParser::resolve_probes(const RawConfig& raw, const std::string& context) const {
  std::vector<ComponentConfig> out;
  for (const auto& name : raw.probe_order) {
    const RawTable& table = raw.probes.at(name);
    const ProbeDefinition* definition = nullptr;
    try {
      definition = &probe_definition(name);
    } catch (const Error& e) {
      fail(table.pos, "probes." + name + ": " + e.what() + context);
    }
    PluginChoice probe{name, "probe '" + name + "'", &definition->schema, Layer::Base};
    ResolvedTable resolved =
        resolve_table(table, "probes." + name, probe_common_section().keys, &probe, {}, context);
    if (resolved.framework.flag("enabled")) out.push_back(ComponentConfig{name, std::move(resolved.plugin)});
  }
  return out;
}

void StudyParser::unknown_key(const toml::node& node, const std::string& section, const std::string& name,
                              const ParamSchema& keys, const PluginChoice* plugin,
                              const std::vector<std::string>& extra_names, const std::string& context) const {
  std::vector<std::string> valid = schema_names(keys);
  if (plugin != nullptr) {
    for (const auto& n : schema_names(*plugin->schema)) valid.push_back(n);
  }
  valid.insert(valid.end(), extra_names.begin(), extra_names.end());
  std::string msg = "unknown key '" + section + "." + name + "'";
  if (plugin != nullptr) msg += " for " + plugin->what;
  if (auto hint = closest_name(name, valid)) msg += "; did you mean '" + *hint + "'?";
  msg += valid.empty() ? " (this table takes no keys)" : " (valid keys: " + join(valid) + ")";
  fail(node, msg + context);
}

}  // namespace mhd::study_detail
