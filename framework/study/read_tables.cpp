// Reading a study file: the TOML document, [study], and the layers (base, [[variant]], [sweep])
// merged key by key (study/parser.h).
#include "study/parser.h"

namespace mhd::study_detail {

void StudyParser::parse_toml(const std::string& text) {
  try {
    doc_ = toml::parse(text, path_);
  } catch (const toml::parse_error& e) {
    fail(pos_of(e.source()), "TOML syntax error: " + std::string(e.description()));
  }
}

void StudyParser::check_top_level() const {
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

void StudyParser::parse_study_table(Study& study) {
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

std::vector<std::int64_t> StudyParser::parse_seeds(const toml::table& table) const {
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

std::vector<std::string> StudyParser::parse_plugin_path(const toml::table& table) const {
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

void StudyParser::overlay_section(RawConfig& config, const std::string& section, const toml::table& table, Layer layer) const {
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

void StudyParser::mark_written(RawTable& raw, const toml::table& table) {
  if (raw.written) return;  // the base's position wins over a variant's
  raw.pos = pos_of(table);
  raw.written = true;
}

void StudyParser::overlay_named_tables(RawConfig& config, const std::string& section, const toml::table& table,
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

RawTable& StudyParser::named_table(RawConfig& config, const std::string& section, const std::string& name, Pos pos) {
  const bool probe = section == "probes";
  auto [it, inserted] = (probe ? config.probes : config.optimizations).try_emplace(name);
  if (inserted) {
    it->second.pos = pos;
    (probe ? config.probe_order : config.optimization_order).push_back(name);
  }
  return it->second;
}

void StudyParser::require_task_kind(const RawConfig& base) const {
  auto table = base.tables.find("task");
  if (table == base.tables.end()) {
    fail(Pos{}, "missing [task] table; it needs kind = one of " + quoted_list(task_kinds()));
  }
  if (table->second.keys.count("kind") == 0) {
    fail(table->second.pos, "missing required key task.kind (one of " + quoted_list(task_kinds()) + ")");
  }
}

std::vector<VariantSpec> StudyParser::parse_variants(const RawConfig& base, Study& study) const {
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

VariantSpec StudyParser::parse_variant(const toml::table& table, const RawConfig& base,
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

}  // namespace mhd::study_detail
