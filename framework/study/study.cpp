// Study files (docs/design.md §5): TOML in, a fully resolved list of trials out.
//
// The file is read into "raw" tables that keep each value's TOML node (and so its file position)
// and the layer it came from: the base configuration, a [[variant]]'s override, or a [sweep]
// point. Layers are merged key by key, then each merged configuration is resolved against the
// framework schemas (config/sections.h), the task schemas and the plugins' manifests. Every problem
// is reported at the node that caused it, so a user sees FILE:LINE:COL and can fix it.
#include "study/study.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "study/parser.h"

namespace mhd::study_detail {

Study StudyParser::parse(const std::string& text) {
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

void StudyParser::fail(Pos pos, const std::string& message) const {
  throw StudyError(path_, pos.line, pos.column, message);
}

}  // namespace mhd::study_detail

namespace mhd {

using study_detail::StudyParser;

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
