// Study files (DESIGN.md §5): TOML in, a fully resolved list of trials out.
//
// The file is read into "raw" tables that keep each value's TOML node (and so its file position)
// and the layer it came from: the base configuration, a [[variant]]'s override, or a [sweep]
// point. Layers are merged key by key, then each merged configuration is resolved against the
// framework schemas (config_schema.h), the task schemas and the plugins' manifests. Every problem
// is reported at the node that caused it, so a user sees FILE:LINE:COL and can fix it.
#include "study/study.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <toml++/toml.h>

#include "config/sections.h"
#include "mhd/error.h"
#include "mhd/plugin.h"
#include "probes/probe.h"
#include "plugin_host/registry.h"
#include "tasks/task.h"
#include "train/trainer.h"
#include "config/format.h"

namespace fs = std::filesystem;

namespace mhd {

namespace {

// ---------------------------------------------------------------------------------------------
// Positions and value descriptions

struct Pos {
  long line = 1;
  long column = 1;
};

// Implicit tables (e.g. `optimizations` made by [optimizations.contractive]) have no position of
// their own; point at the start of the file rather than at line 0.
Pos pos_of(const toml::source_region& region) {
  if (!region.begin) return {};
  return {static_cast<long>(region.begin.line), static_cast<long>(region.begin.column)};
}
Pos pos_of(const toml::node& node) { return pos_of(node.source()); }

bool before(const toml::source_region& a, const toml::source_region& b) {
  return std::make_pair(a.begin.line, a.begin.column) < std::make_pair(b.begin.line, b.begin.column);
}

std::string join(const std::vector<std::string>& items, const char* separator = ", ") {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : separator) + item;
  return out;
}

std::string quoted_list(const std::vector<std::string>& items) {
  std::vector<std::string> q;
  for (const auto& item : items) q.push_back("'" + item + "'");
  return join(q);
}

std::optional<ParamValue> scalar_of(const toml::node& node) {
  if (const auto* v = node.as_integer()) return ParamValue(static_cast<std::int64_t>(v->get()));
  if (const auto* v = node.as_floating_point()) return ParamValue(v->get());
  if (const auto* v = node.as_boolean()) return ParamValue(v->get());
  if (const auto* v = node.as_string()) return ParamValue(std::string(v->get()));
  return std::nullopt;
}

// "integer 3", "float 2.5", "string \"x\"", "an array": what the user wrote, for messages.
std::string describe(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::integer: return "integer " + std::to_string(node.as_integer()->get());
    case toml::node_type::floating_point: {
      std::string text = detail::format_number(node.as_floating_point()->get());
      if (text.find_first_of(".einf") == std::string::npos) text += ".0";  // show it is a float
      return "float " + text;
    }
    case toml::node_type::boolean: return std::string("bool ") + (node.as_boolean()->get() ? "true" : "false");
    case toml::node_type::string: return "string \"" + std::string(node.as_string()->get()) + "\"";
    default: return "nothing";
  }
}

std::vector<std::string> schema_names(const ParamSchema& schema) {
  std::vector<std::string> names;
  for (const auto& spec : schema) names.push_back(spec.name);
  return names;
}

// ---------------------------------------------------------------------------------------------
// Raw (unresolved) configuration

// Later layers override earlier ones. A key written at a lower layer than the one that chose the
// section's plugin is dropped when the new plugin does not declare it (switching plugins in a
// variant must not make the base's plugin-specific keys errors).
enum class Layer { Base = 0, Variant = 1, Sweep = 2 };

struct Entry {
  const toml::node* node = nullptr;
  Layer layer = Layer::Base;
};

struct RawTable {
  std::map<std::string, Entry> keys;
  Pos pos;  // where the table was first written; missing-key errors point here
  bool written = false;
};

struct RawConfig {
  std::map<std::string, RawTable> tables;  // by dotted section name, "train.objective" included
  std::vector<std::string> optimization_order;  // file order, base first
  std::map<std::string, RawTable> optimizations;
  std::vector<std::string> probe_order;  // [probes.NAME], file order, base first
  std::map<std::string, RawTable> probes;
};

// Sections made of one named table per plugin or probe: [optimizations.NAME], [probes.NAME].
bool is_named_section(const std::string& section) { return section == "optimizations" || section == "probes"; }

// More trials than this in one study is almost certainly a mistake in [sweep].
constexpr std::size_t kMaxTrials = 100000;

// The tables a variant or a sweep may change, in file order ([study] applies to the whole study).
const std::vector<std::string>& config_sections() {
  static const std::vector<std::string> names = {"task",   "model",    "energy", "backbone",     "memory",
                                                  "solver", "backward", "train",  "optimizations",
                                                  "probes"};
  return names;
}

bool is_config_section(const std::string& name) {
  const auto& names = config_sections();
  return std::find(names.begin(), names.end(), name) != names.end();
}

const SectionSchema& framework_schema(const std::string& section) {
  if (section == "model") return model_section();
  if (section == "energy") return energy_section();
  if (section == "backbone") return backbone_section();
  if (section == "memory") return memory_section();
  if (section == "solver") return solver_section();
  if (section == "backward") return backward_section();
  if (section == "train") return train_section();
  if (section == "train.objective") return objective_section();
  throw Error("internal: no framework schema for [" + section + "]");
}

// The plugin (or task kind) whose schema applies to a table, and the layer that chose it.
struct PluginChoice {
  std::string name;
  std::string what;  // "solver plugin 'anderson'", "task kind 'copy'"
  const ParamSchema* schema = nullptr;
  Layer layer = Layer::Base;
};

struct ResolvedTable {
  Params framework;  // the section's own keys
  Params plugin;     // the plugin's (or task kind's) keys
};

// An axis of [sweep]: "memory.size" = [1024, 4096].
struct SweepAxis {
  std::string path;
  std::vector<std::string> parts;
  Pos pos;
  const toml::array* values = nullptr;
  toml::source_region region;  // of the key, for file order
};

struct VariantSpec {
  std::string name;
  std::string description;
  RawConfig raw;
};

// ---------------------------------------------------------------------------------------------
// The parser

class StudyParser {
 public:
  StudyParser(std::string path, PluginRegistry& registry) : path_(std::move(path)), registry_(registry) {}

  Study parse(const std::string& text) {
    parse_toml(text);
    check_top_level();
    Study study;
    study.path = path_;
    study.toml_text = text;
    parse_study_table(study);
    for (const auto& dir : study.plugin_path) registry_.scan_directory(dir);

    RawConfig base;
    for (const auto& section : config_sections())
      if (const toml::node* node = doc_.get(section)) overlay_section(base, section, *node->as_table(), Layer::Base);
    require_task_kind(base);
    resolve(base, "");  // the base must be valid on its own, whether or not it runs

    const std::vector<VariantSpec> variants = parse_variants(base, study);
    const std::vector<SweepAxis> axes = parse_sweep();
    for (const auto& axis : axes) study.sweep_axes.push_back(axis.path);
    expand(study, variants, axes);
    return study;
  }

 private:
  [[noreturn]] void fail(Pos pos, const std::string& message) const {
    throw StudyError(path_, pos.line, pos.column, message);
  }
  [[noreturn]] void fail(const toml::node& node, const std::string& message) const { fail(pos_of(node), message); }

  // --- reading the file ------------------------------------------------------------------

  void parse_toml(const std::string& text) {
    try {
      doc_ = toml::parse(text, path_);
    } catch (const toml::parse_error& e) {
      fail(pos_of(e.source()), "TOML syntax error: " + std::string(e.description()));
    }
  }

  void check_top_level() const {
    std::vector<std::string> known = {"study", "variant", "sweep"};
    known.insert(known.end(), config_sections().begin(), config_sections().end());
    for (const auto& [key, node] : doc_) {
      const std::string name(key.str());
      if (std::find(known.begin(), known.end(), name) == known.end()) {
        // A bare key above every table (name = "x" before [study]) is a misplaced key, not a table.
        std::string msg = node.is_table() ? "unknown table '" + name + "'"
                                          : "unknown top-level key '" + name + "' (keys belong in a table such as [study])";
        if (auto hint = closest_name(name, known)) msg += "; did you mean '" + *hint + "'?";
        fail(pos_of(key.source()), msg + " (known tables: " + join(known) + ")");
      }
      if (name == "variant") continue;  // checked by parse_variants
      if (!node.is_table()) {
        fail(node, "'" + name + "' must be a table, written [" + name + "], got " + describe(node));
      }
    }
  }

  // --- [study] ---------------------------------------------------------------------------

  void parse_study_table(Study& study) {
    const toml::table* table = doc_["study"].as_table();
    if (table == nullptr) fail(Pos{}, "missing [study] table; a study needs at least [study] name = \"...\"");
    const SectionSchema& schema = study_section();
    RawTable raw;
    raw.pos = pos_of(*table);
    for (const auto& [key, node] : *table) {
      const std::string name(key.str());
      if (name == "seeds" || name == "plugin_path") continue;
      raw.keys[name] = Entry{&node, Layer::Base};
    }
    const ResolvedTable resolved = resolve_table(raw, "study", schema.keys, nullptr, {"seeds", "plugin_path"}, "");
    const Params& p = resolved.framework;

    study.name = p.text("name");
    if (study.name.empty()) {
      if (auto it = raw.keys.find("name"); it != raw.keys.end()) fail(*it->second.node, "study.name must not be empty");
      fail(raw.pos, "missing required key study.name (the study's name, e.g. name = \"solver_ablation\")");
    }
    if (study.name.find_first_of("/\\") != std::string::npos) {
      fail(*raw.keys.at("name").node,
           "study.name \"" + study.name + "\" must not contain '/' or '\\' (it names the default results file)");
    }
    study.description = p.text("description");
    study.output = p.text("output").empty() ? "results/" + study.name + ".sqlite" : p.text("output");
    run_.set("device", p.text("device"));
    run_.set("threads", p.integer("threads"));
    include_base_ = p.flag("include_base");
    study.seeds = parse_seeds(*table);
    study.plugin_path = parse_plugin_path(*table);
  }

  std::vector<std::int64_t> parse_seeds(const toml::table& table) const {
    const toml::node* node = table.get("seeds");
    if (node == nullptr) return {0};
    const toml::array* array = node->as_array();
    if (array == nullptr) fail(*node, "study.seeds: expected an array of integers, e.g. [0, 1, 2], got " + describe(*node));
    if (array->empty()) fail(*node, "study.seeds: must list at least one seed, e.g. [0]");
    std::vector<std::int64_t> seeds;
    for (const toml::node& element : *array) {
      const auto* value = element.as_integer();
      if (value == nullptr) fail(element, "study.seeds: expected integer, got " + describe(element));
      const std::int64_t seed = value->get();
      if (seed < 0) fail(element, "study.seeds: seeds must be >= 0, got " + std::to_string(seed));
      if (std::find(seeds.begin(), seeds.end(), seed) != seeds.end()) {
        fail(element, "study.seeds: seed " + std::to_string(seed) + " is listed twice");
      }
      seeds.push_back(seed);
    }
    return seeds;
  }

  // Directories are relative to the study file's folder, so a study and its plugins can move
  // together.
  std::vector<std::string> parse_plugin_path(const toml::table& table) const {
    const toml::node* node = table.get("plugin_path");
    if (node == nullptr) return {};
    const toml::array* array = node->as_array();
    if (array == nullptr) {
      fail(*node, "study.plugin_path: expected an array of directories, e.g. [\"plugins\"], got " + describe(*node));
    }
    const fs::path base = fs::path(path_).parent_path();
    std::vector<std::string> dirs;
    for (const toml::node& element : *array) {
      const auto* value = element.as_string();
      if (value == nullptr) fail(element, "study.plugin_path: expected string, got " + describe(element));
      fs::path dir(value->get());
      if (dir.is_relative()) dir = base / dir;
      std::error_code ec;
      if (!fs::is_directory(dir, ec)) {
        fail(element, "study.plugin_path: \"" + std::string(value->get()) + "\" is not a directory (looked for " +
                          dir.lexically_normal().string() + ")");
      }
      dirs.push_back(dir.lexically_normal().string());
    }
    return dirs;
  }

  // --- merging layers --------------------------------------------------------------------

  // Copies a section's keys into `config` at `layer`, replacing what lower layers wrote.
  void overlay_section(RawConfig& config, const std::string& section, const toml::table& table, Layer layer) const {
    if (is_named_section(section)) {
      overlay_named_tables(config, section, table, layer);
      return;
    }
    RawTable& raw = config.tables[section];
    mark_written(raw, table);
    for (const auto& [key, node] : table) {
      const std::string name(key.str());
      if (section == "train" && name == "objective") {
        const toml::table* objective = node.as_table();
        if (objective == nullptr) {
          fail(node, "train.objective: expected a table of loss weights, e.g. { energy = 0.1 }, got " + describe(node));
        }
        RawTable& target = config.tables["train.objective"];
        mark_written(target, *objective);
        for (const auto& [k, v] : *objective) target.keys[std::string(k.str())] = Entry{&v, layer};
        continue;
      }
      raw.keys[name] = Entry{&node, layer};
    }
  }

  static void mark_written(RawTable& raw, const toml::table& table) {
    if (raw.written) return;  // the base's position wins over a variant's
    raw.pos = pos_of(table);
    raw.written = true;
  }

  // [optimizations.NAME] or [probes.NAME] tables (`section`) at `layer`.
  void overlay_named_tables(RawConfig& config, const std::string& section, const toml::table& table,
                            Layer layer) const {
    // toml++ tables are sorted by key; the run order of optimizations and probes is the file's order.
    std::vector<std::pair<const toml::key*, const toml::node*>> entries;
    for (const auto& [key, node] : table) entries.emplace_back(&key, &node);
    std::sort(entries.begin(), entries.end(),
              [](const auto& a, const auto& b) { return before(a.first->source(), b.first->source()); });
    for (const auto& [key, node] : entries) {
      const std::string name(key->str());
      const toml::table* options = node->as_table();
      if (options == nullptr) {
        fail(*node, section + "." + name + ": expected a table, e.g. [" + section + "." + name + "] or " + name +
                        " = { enabled = true }, got " + describe(*node));
      }
      RawTable& raw = named_table(config, section, name, pos_of(key->source()));
      for (const auto& [k, v] : *options) raw.keys[std::string(k.str())] = Entry{&v, layer};
    }
  }

  static RawTable& named_table(RawConfig& config, const std::string& section, const std::string& name, Pos pos) {
    const bool probe = section == "probes";
    auto [it, inserted] = (probe ? config.probes : config.optimizations).try_emplace(name);
    if (inserted) {
      it->second.pos = pos;
      (probe ? config.probe_order : config.optimization_order).push_back(name);
    }
    return it->second;
  }

  void require_task_kind(const RawConfig& base) const {
    auto table = base.tables.find("task");
    if (table == base.tables.end()) {
      fail(Pos{}, "missing [task] table; it needs kind = one of " + quoted_list(task_kinds()));
    }
    if (table->second.keys.count("kind") == 0) {
      fail(table->second.pos, "missing required key task.kind (one of " + quoted_list(task_kinds()) + ")");
    }
  }

  // --- resolving ------------------------------------------------------------------------

  // Checks every key of `raw` against the section's keys and the plugin's, converting values to
  // the declared types; fills defaults. `extra_names` are keys handled elsewhere (valid, skipped).
  ResolvedTable resolve_table(const RawTable& raw, const std::string& section, const ParamSchema& keys,
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

  [[noreturn]] void unknown_key(const toml::node& node, const std::string& section, const std::string& name,
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

  // A TOML value as the declared type: integers widen to floats, nothing else is coerced.
  ParamValue convert(const toml::node& node, const ParamSpec& spec, const std::string& dotted,
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

  // The plugin named by a component table's `plugin` key (or the schema's default).
  PluginChoice choose_plugin(const RawTable& raw, const std::string& section, PluginKind kind,
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

  const LoadedPlugin& find_plugin(PluginKind kind, const std::string& name, Pos pos, const std::string& key,
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

  PluginChoice choose_task_kind(const RawTable& raw, const std::string& context) const {
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

  // Resolves one merged configuration; `context` (" (in variant 'x')") ends every message.
  TrialConfig resolve(const RawConfig& raw, const std::string& context) const {
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

    c.model = resolve_table(table("model"), "model", model_section().keys, nullptr, {}, context).framework;
    c.energy = resolve_table(table("energy"), "energy", energy_section().keys, nullptr, {}, context).framework;
    c.backbone = resolve_component(table("backbone"), "backbone", PluginKind::Backbone, context).second;
    c.memory = resolve_component(table("memory"), "memory", PluginKind::Memory, context).second;
    auto [solve, solver] = resolve_component(table("solver"), "solver", PluginKind::Solver, context);
    c.solver = solver;
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
    c.probes = resolve_probes(raw, context);
    try {
      check_training_config(c);  // [train] keys that depend on each other or on other tables
    } catch (const Error& e) {
      fail(table("train").pos, e.what() + context);
    }
    return c;
  }

  // A task's data file (task.path, e.g. lm_bytes's text) is relative to the study file's folder,
  // like plugin_path, and must exist before anything runs. Stored resolved, so a trial's
  // configuration alone finds it.
  void resolve_task_file(Params& task, const RawTable& raw, const std::string& context) const {
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

  // (framework keys, plugin) of a [backbone]/[memory]/[solver] table.
  std::pair<Params, ComponentConfig> resolve_component(const RawTable& raw, const std::string& section,
                                                       PluginKind kind, const std::string& context) const {
    const PluginChoice plugin = choose_plugin(raw, section, kind, context);
    ResolvedTable resolved = resolve_table(raw, section, framework_schema(section).keys, &plugin, {}, context);
    return {std::move(resolved.framework), ComponentConfig{plugin.name, std::move(resolved.plugin)}};
  }

  ComponentConfig resolve_backward_solver(const RawTable& backward, const std::string& name,
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

  std::vector<ComponentConfig> resolve_optimizations(const RawConfig& raw, const std::string& context) const {
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

  // Enabled [probes.NAME] in file order, each validated against its probe's schema.
  std::vector<ComponentConfig> resolve_probes(const RawConfig& raw, const std::string& context) const {
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

  // --- [[variant]] ----------------------------------------------------------------------

  std::vector<VariantSpec> parse_variants(const RawConfig& base, Study& study) const {
    std::vector<VariantSpec> out;
    const toml::node* node = doc_.get("variant");
    if (node != nullptr) {
      const toml::array* array = node->as_array();
      if (array == nullptr || !array->is_array_of_tables()) {
        fail(*node, "'variant' must be an array of tables: write each one as [[variant]] with name = \"...\"");
      }
      for (const toml::node& element : *array) out.push_back(parse_variant(*element.as_table(), base, out));
    }
    // With no [[variant]] the base is the only thing to run, whatever include_base says.
    if (include_base_ || out.empty()) out.insert(out.begin(), VariantSpec{"base", "", base});
    for (const auto& v : out) {
      study.variants.push_back(v.name);
      study.variant_descriptions.push_back(v.description);
    }
    return out;
  }

  VariantSpec parse_variant(const toml::table& table, const RawConfig& base,
                            const std::vector<VariantSpec>& earlier) const {
    VariantSpec v;
    const toml::node* name = table.get("name");
    if (name == nullptr) fail(table, "missing required key variant.name (each [[variant]] needs a unique name)");
    if (!name->is_string() || name->as_string()->get().empty()) {
      fail(*name, "variant.name: expected a non-empty string, got " + describe(*name));
    }
    v.name = name->as_string()->get();
    if (v.name == "base" && include_base_) {
      fail(*name, "variant.name: 'base' is the name of the base configuration; rename the variant or set "
                  "study.include_base = false");
    }
    for (const auto& other : earlier) {
      if (other.name == v.name) fail(*name, "variant.name: duplicate variant name '" + v.name + "'");
    }
    if (const toml::node* description = table.get("description")) {
      if (!description->is_string()) fail(*description, "variant.description: expected string, got " + describe(*description));
      v.description = description->as_string()->get();
    }
    v.raw = base;
    std::vector<std::string> valid = {"name", "description"};
    valid.insert(valid.end(), config_sections().begin(), config_sections().end());
    for (const auto& [key, node] : table) {
      const std::string section(key.str());
      if (section == "name" || section == "description") continue;
      if (!is_config_section(section)) {
        std::string msg = "unknown key 'variant." + section + "' in variant '" + v.name + "'";
        if (section == "study" || section == "sweep" || section == "variant") {
          msg += "; a variant cannot change [" + section + "], which applies to the whole study";
        } else if (auto hint = closest_name(section, valid)) {
          msg += "; did you mean '" + *hint + "'?";
        }
        fail(pos_of(key.source()), msg + " (a variant takes: " + join(valid) + ")");
      }
      const toml::table* overrides = node.as_table();
      if (overrides == nullptr) {
        fail(node, "variant." + section + ": expected a table of overrides, e.g. " + section +
                       " = { ... } or [variant." + section + "], got " + describe(node));
      }
      overlay_section(v.raw, section, *overrides, Layer::Variant);
    }
    resolve(v.raw, variant_context(v.name, ""));
    return v;
  }

  static std::string variant_context(const std::string& variant, const std::string& sweep) {
    return " (in variant '" + variant + "'" + (sweep.empty() ? "" : " at sweep point " + sweep) + ")";
  }

  // --- [sweep] --------------------------------------------------------------------------

  std::vector<SweepAxis> parse_sweep() const {
    std::vector<SweepAxis> axes;
    if (const toml::table* sweep = doc_["sweep"].as_table()) collect_axes(*sweep, "", axes);
    std::sort(axes.begin(), axes.end(), [](const SweepAxis& a, const SweepAxis& b) { return before(a.region, b.region); });
    std::set<std::string> seen;
    for (const auto& axis : axes) {
      if (!seen.insert(axis.path).second) fail(axis.pos, "sweep '" + axis.path + "' is given twice");
    }
    return axes;
  }

  // Accepts both "memory.size" = [...] and memory.size = [...] (a nested table in TOML).
  void collect_axes(const toml::table& table, const std::string& prefix, std::vector<SweepAxis>& axes) const {
    for (const auto& [key, node] : table) {
      const std::string path = prefix.empty() ? std::string(key.str()) : prefix + "." + std::string(key.str());
      if (const toml::table* nested = node.as_table()) {
        collect_axes(*nested, path, axes);
        continue;
      }
      SweepAxis axis;
      axis.path = path;
      axis.pos = pos_of(key.source());
      axis.region = key.source();
      axis.parts = split_path(path);
      check_sweep_path(axis);
      axis.values = node.as_array();
      if (axis.values == nullptr) {
        fail(node, "sweep '" + path + "': expected an array of values, e.g. [1, 2, 4], got " + describe(node));
      }
      if (axis.values->empty()) fail(node, "sweep '" + path + "': the array is empty; give at least one value");
      check_distinct(axis);
      axes.push_back(std::move(axis));
    }
  }

  static std::vector<std::string> split_path(const std::string& path) {
    std::vector<std::string> parts;
    std::stringstream in(path);
    std::string part;
    while (std::getline(in, part, '.')) parts.push_back(part);
    if (!path.empty() && path.back() == '.') parts.emplace_back();
    return parts;
  }

  // The shape of a path; whether the key exists is checked when each point is resolved, against
  // the plugin the variant uses.
  void check_sweep_path(const SweepAxis& axis) const {
    const auto& parts = axis.parts;
    const std::string bad = "bad sweep path '" + axis.path + "': ";
    const std::string examples = " (e.g. \"memory.size\", \"train.objective.energy\", \"optimizations.contractive.factor\")";
    if (std::any_of(parts.begin(), parts.end(), [](const std::string& p) { return p.empty(); }) || parts.size() < 2) {
      fail(axis.pos, bad + "expected section.key" + examples);
    }
    const std::string& section = parts[0];
    if (!is_config_section(section)) {
      std::string msg = bad + "unknown section '" + section + "'";
      if (section == "study") msg += "; [study] cannot be swept (seeds already are)";
      else if (auto hint = closest_name(section, config_sections())) msg += "; did you mean '" + *hint + "'?";
      fail(axis.pos, msg + " (sweepable: " + join(config_sections()) + ")");
    }
    const bool three_part = is_named_section(section) || (section == "train" && parts[1] == "objective");
    if (section == "optimizations" && parts.size() != 3) {
      fail(axis.pos, bad + "expected optimizations.NAME.key, e.g. \"optimizations.contractive.factor\"");
    }
    if (section == "probes" && parts.size() != 3) {
      fail(axis.pos, bad + "expected probes.NAME.key, e.g. \"probes.convergence.samples\"");
    }
    if (section == "train" && parts[1] == "objective" && parts.size() != 3) {
      fail(axis.pos, bad + "expected train.objective.key, e.g. \"train.objective.energy\"");
    }
    if (!three_part && parts.size() != 2) fail(axis.pos, bad + "expected section.key" + examples);
  }

  void check_distinct(const SweepAxis& axis) const {
    std::vector<std::string> seen;
    for (const toml::node& element : *axis.values) {
      const std::string text = describe(element);
      if (std::find(seen.begin(), seen.end(), text) != seen.end()) {
        fail(element, "sweep '" + axis.path + "': " + text + " is listed twice");
      }
      seen.push_back(text);
    }
  }

  // Writes one value of an axis into a merged configuration at the sweep layer.
  static void apply_axis(RawConfig& config, const SweepAxis& axis, const toml::node& value) {
    const auto& p = axis.parts;
    const Entry entry{&value, Layer::Sweep};
    if (is_named_section(p[0])) {
      named_table(config, p[0], p[1], axis.pos).keys[p[2]] = entry;
    } else if (p.size() == 3) {
      config.tables["train.objective"].keys[p[2]] = entry;
    } else {
      config.tables[p[0]].keys[p[1]] = entry;
    }
  }

  // Sweep points as index tuples, first axis outermost.
  static std::vector<std::vector<std::size_t>> sweep_points(const std::vector<SweepAxis>& axes) {
    std::vector<std::vector<std::size_t>> points = {{}};
    for (const auto& axis : axes) {
      std::vector<std::vector<std::size_t>> next;
      for (const auto& point : points) {
        for (std::size_t i = 0; i < axis.values->size(); ++i) {
          next.push_back(point);
          next.back().push_back(i);
        }
      }
      points = std::move(next);
    }
    return points;
  }

  // --- expansion ------------------------------------------------------------------------

  void expand(Study& study, const std::vector<VariantSpec>& variants, const std::vector<SweepAxis>& axes) const {
    check_trial_count(study, variants, axes);
    const auto points = sweep_points(axes);
    for (const auto& variant : variants) {
      for (const auto& point : points) {
        RawConfig raw = variant.raw;
        std::string point_text;
        for (std::size_t a = 0; a < axes.size(); ++a) {
          const toml::node& value = *axes[a].values->get(point[a]);
          apply_axis(raw, axes[a], value);
          if (auto scalar = scalar_of(value)) {
            point_text += (point_text.empty() ? "" : " ") + axes[a].path + "=" + detail::format_plain(*scalar);
          }
        }
        const std::string context =
            variant.name == "base" && axes.empty() ? "" : variant_context(variant.name, point_text);
        TrialConfig config = resolve(raw, context);
        config.study = study.name;
        config.variant = variant.name;
        for (std::size_t a = 0; a < axes.size(); ++a) {
          config.sweep_point.emplace_back(axes[a].path,
                                          resolved_value(config, axes[a].parts, *axes[a].values->get(point[a])));
        }
        for (const std::int64_t seed : study.seeds) {
          config.seed = seed;
          study.trials.push_back(config);
        }
      }
    }
  }

  // A typo such as an extra zero in a sweep can ask for millions of trials; say so before
  // allocating them.
  void check_trial_count(const Study& study, const std::vector<VariantSpec>& variants,
                         const std::vector<SweepAxis>& axes) const {
    double trials = static_cast<double>(variants.size()) * static_cast<double>(study.seeds.size());
    std::string shape = std::to_string(variants.size()) + " variant(s)";
    for (const auto& axis : axes) {
      trials *= static_cast<double>(axis.values->size());
      shape += " x " + std::to_string(axis.values->size()) + " (" + axis.path + ")";
    }
    shape += " x " + std::to_string(study.seeds.size()) + " seed(s)";
    if (trials > static_cast<double>(kMaxTrials)) {
      const toml::node* sweep = doc_.get("sweep");
      fail(sweep ? pos_of(*sweep) : Pos{}, "the study expands to " + detail::format_number(trials) + " trials (" +
                                               shape + "), more than the limit of " + std::to_string(kMaxTrials) +
                                               "; split it into several studies");
    }
  }

  // The value an axis took in the resolved configuration (so a float key swept with integers
  // reports floats), or the written value when the key is not kept (a disabled optimization).
  static ParamValue resolved_value(const TrialConfig& c, const std::vector<std::string>& p, const toml::node& written) {
    const std::string& section = p[0];
    const std::string& key = p.back();
    const Params* params = nullptr;
    if (section == "task") {
      if (key == "kind") return c.task_kind;
      params = &c.task;
    } else if (section == "model") params = &c.model;
    else if (section == "energy") params = &c.energy;
    else if (section == "backward") params = &c.backward;
    else if (section == "train") params = p.size() == 3 ? &c.objective : &c.train;
    else if (section == "backbone" || section == "memory" || section == "solver") {
      const ComponentConfig& component = section == "backbone" ? c.backbone : section == "memory" ? c.memory : c.solver;
      if (key == "plugin") return component.plugin;
      params = section == "solver" && c.solve.has(key) ? &c.solve : &component.params;
    } else if (section == "optimizations" || section == "probes") {
      for (const auto& o : section == "probes" ? c.probes : c.optimizations)
        if (o.plugin == p[1]) params = &o.params;
    }
    if (params != nullptr && params->has(key)) return params->values().at(key);
    return *scalar_of(written);
  }

  std::string path_;
  PluginRegistry& registry_;
  toml::table doc_;
  Params run_;  // [study] device and threads, shared by every trial
  bool include_base_ = true;
};

}  // namespace

Study parse_study(const std::string& toml_text, const std::string& path, PluginRegistry& registry) {
  return StudyParser(path, registry).parse(toml_text);
}

Study load_study(const std::string& path, PluginRegistry& registry) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot read study file: " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return parse_study(text.str(), path, registry);
}

}  // namespace mhd
