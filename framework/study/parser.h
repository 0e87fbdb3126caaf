// The study-file parser's internals (study/study.h is its public face): raw tables that keep each
// value's TOML node (and so its file position) and the layer it came from, and the StudyParser,
// whose parts live in read_tables.cpp (reading and merging layers), resolve.cpp (checking every
// key against the framework's, the task's and the plugins' schemas), expand.cpp ([[variant]] and
// [sweep] into trials) and study.cpp (the whole parse).
#pragma once

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
#include "study/study.h"

namespace fs = std::filesystem;

namespace mhd::study_detail {


// ---------------------------------------------------------------------------------------------
// Positions and value descriptions

struct Pos {
  long line = 1;
  long column = 1;
};

// Implicit tables (e.g. `optimizations` made by [optimizations.contractive]) have no position of
// their own; point at the start of the file rather than at line 0.
inline Pos pos_of(const toml::source_region& region) {
  if (!region.begin) return {};
  return {static_cast<long>(region.begin.line), static_cast<long>(region.begin.column)};
}
inline Pos pos_of(const toml::node& node) { return pos_of(node.source()); }

inline bool before(const toml::source_region& a, const toml::source_region& b) {
  return std::make_pair(a.begin.line, a.begin.column) < std::make_pair(b.begin.line, b.begin.column);
}

inline std::string join(const std::vector<std::string>& items, const char* separator = ", ") {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : separator) + item;
  return out;
}

inline std::string quoted_list(const std::vector<std::string>& items) {
  std::vector<std::string> q;
  for (const auto& item : items) q.push_back("'" + item + "'");
  return join(q);
}

inline std::optional<ParamValue> scalar_of(const toml::node& node) {
  if (const auto* v = node.as_integer()) return ParamValue(static_cast<std::int64_t>(v->get()));
  if (const auto* v = node.as_floating_point()) return ParamValue(v->get());
  if (const auto* v = node.as_boolean()) return ParamValue(v->get());
  if (const auto* v = node.as_string()) return ParamValue(std::string(v->get()));
  return std::nullopt;
}

// "integer 3", "float 2.5", "string \"x\"", "an array": what the user wrote, for messages.
inline std::string describe(const toml::node& node) {
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

inline std::vector<std::string> schema_names(const ParamSchema& schema) {
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
inline bool is_named_section(const std::string& section) { return section == "optimizations" || section == "probes"; }

// More trials than this in one study is almost certainly a mistake in [sweep].
inline constexpr std::size_t kMaxTrials = 100000;

// The tables a variant or a sweep may change, in file order ([study] applies to the whole study).
inline const std::vector<std::string>& config_sections() {
  static const std::vector<std::string> names = {"task",   "model",    "energy", "backbone",     "memory",
                                                  "solver", "backward", "train",  "optimizations",
                                                  "probes"};
  return names;
}

inline bool is_config_section(const std::string& name) {
  const auto& names = config_sections();
  return std::find(names.begin(), names.end(), name) != names.end();
}

inline const SectionSchema& framework_schema(const std::string& section) {
  for (const SectionSchema* s : all_sections())
    if (s->name == section) return *s;
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

  Study parse(const std::string& text);

 private:
  [[noreturn]] void fail(Pos pos, const std::string& message) const;
  [[noreturn]] void fail(const toml::node& node, const std::string& message) const { fail(pos_of(node), message); }

  // --- reading the file ------------------------------------------------------------------

  void parse_toml(const std::string& text);

  void check_top_level() const;

  // --- [study] ---------------------------------------------------------------------------

  void parse_study_table(Study& study);

  std::vector<std::int64_t> parse_seeds(const toml::table& table) const;

  // Directories are relative to the study file's folder, so a study and its plugins can move
  // together.
  std::vector<std::string> parse_plugin_path(const toml::table& table) const;

  // --- merging layers --------------------------------------------------------------------

  // Copies a section's keys into `config` at `layer`, replacing what lower layers wrote.
  void overlay_section(RawConfig& config, const std::string& section, const toml::table& table, Layer layer) const;

  static void mark_written(RawTable& raw, const toml::table& table);

  // [optimizations.NAME] or [probes.NAME] tables (`section`) at `layer`.
  void overlay_named_tables(RawConfig& config, const std::string& section, const toml::table& table,
                            Layer layer) const;

  static RawTable& named_table(RawConfig& config, const std::string& section, const std::string& name, Pos pos);

  void require_task_kind(const RawConfig& base) const;

  // --- resolving ------------------------------------------------------------------------

  // Checks every key of `raw` against the section's keys and the plugin's, converting values to
  // the declared types; fills defaults. `extra_names` are keys handled elsewhere (valid, skipped).
  ResolvedTable resolve_table(const RawTable& raw, const std::string& section, const ParamSchema& keys,
                              const PluginChoice* plugin, const std::vector<std::string>& extra_names,
                              const std::string& context) const;

  [[noreturn]] void unknown_key(const toml::node& node, const std::string& section, const std::string& name,
                                const ParamSchema& keys, const PluginChoice* plugin,
                                const std::vector<std::string>& extra_names, const std::string& context) const;

  // A TOML value as the declared type: integers widen to floats, nothing else is coerced.
  ParamValue convert(const toml::node& node, const ParamSpec& spec, const std::string& dotted,
                     const std::string& context) const;

  // The plugin named by a component table's `plugin` key (or the schema's default).
  PluginChoice choose_plugin(const RawTable& raw, const std::string& section, PluginKind kind,
                             const std::string& context) const;

  const LoadedPlugin& find_plugin(PluginKind kind, const std::string& name, Pos pos, const std::string& key,
                                  const std::string& context) const;

  PluginChoice choose_task_kind(const RawTable& raw, const std::string& context) const;

  // Resolves one merged configuration; `context` (" (in variant 'x')") ends every message.
  TrialConfig resolve(const RawConfig& raw, const std::string& context) const;

  // A task's data file (task.path, e.g. lm_bytes's text) is relative to the study file's folder,
  // like plugin_path, and must exist before anything runs. Stored resolved, so a trial's
  // configuration alone finds it.
  void resolve_task_file(Params& task, const RawTable& raw, const std::string& context) const;

  // Keys of [task] that are each valid but cannot go together (the kind's TaskDefinition::check),
  // reported at the key the message names as this trial wrote it.
  void check_task_keys(const TrialConfig& c, const RawTable& raw, const std::string& context) const;
  // A plugin's own cross-key constraints (Manifest::check), reported at the key its message names.
  void check_component(const ComponentConfig& component, PluginKind kind, const ModelDims& dims, const RawTable& raw,
                       const std::string& section, const std::string& context) const;
  // Fails at the key of `raw` that `message` names as prefix + key (the one this trial wrote last),
  // else at the table.
  [[noreturn]] void fail_at_named_key(const std::string& message, const RawTable& raw, const std::string& prefix,
                                      const std::string& context) const;
  // The pooled equilibrium only with a task scored at the last position (docs/design.md §4).
  void check_equilibrium_fits_task(const TrialConfig& c, const RawTable& model, const std::string& context) const;

  // (framework keys, plugin) of a [backbone]/[memory]/[solver] table.
  std::pair<Params, ComponentConfig> resolve_component(const RawTable& raw, const std::string& section,
                                                       PluginKind kind, const std::string& context) const;

  ComponentConfig resolve_backward_solver(const RawTable& backward, const std::string& name,
                                          const std::string& context) const;

  std::vector<ComponentConfig> resolve_optimizations(const RawConfig& raw, const std::string& context) const;

  // Enabled [probes.NAME] in file order, each validated against its probe's schema.
  std::vector<ComponentConfig> resolve_probes(const RawConfig& raw, const std::string& context) const;

  // --- [[variant]] ----------------------------------------------------------------------

  std::vector<VariantSpec> parse_variants(const RawConfig& base, Study& study) const;

  VariantSpec parse_variant(const toml::table& table, const RawConfig& base,
                            const std::vector<VariantSpec>& earlier) const;

  static std::string variant_context(const std::string& variant, const std::string& sweep);

  // --- [sweep] --------------------------------------------------------------------------

  std::vector<SweepAxis> parse_sweep() const;

  // Accepts both "memory.size" = [...] and memory.size = [...] (a nested table in TOML).
  void collect_axes(const toml::table& table, const std::string& prefix, std::vector<SweepAxis>& axes) const;

  static std::vector<std::string> split_path(const std::string& path);

  // The shape of a path; whether the key exists is checked when each point is resolved, against
  // the plugin the variant uses.
  void check_sweep_path(const SweepAxis& axis) const;

  void check_distinct(const SweepAxis& axis) const;

  // Writes one value of an axis into a merged configuration at the sweep layer.
  static void apply_axis(RawConfig& config, const SweepAxis& axis, const toml::node& value);

  // Sweep points as index tuples, first axis outermost.
  static std::vector<std::vector<std::size_t>> sweep_points(const std::vector<SweepAxis>& axes);

  // --- expansion ------------------------------------------------------------------------

  void expand(Study& study, const std::vector<VariantSpec>& variants, const std::vector<SweepAxis>& axes) const;

  // A typo such as an extra zero in a sweep can ask for millions of trials; say so before
  // allocating them.
  void check_trial_count(const Study& study, const std::vector<VariantSpec>& variants,
                         const std::vector<SweepAxis>& axes) const;

  // The value an axis took in the resolved configuration (so a float key swept with integers
  // reports floats), or the written value when the key is not kept (a disabled optimization).
  static ParamValue resolved_value(const TrialConfig& c, const std::vector<std::string>& p, const toml::node& written);

  std::string path_;
  PluginRegistry& registry_;
  toml::table doc_;
  Params run_;  // [study] device and threads, shared by every trial
  bool include_base_ = true;
};

}  // namespace mhd::study_detail
