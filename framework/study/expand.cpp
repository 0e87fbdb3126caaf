// [[variant]] and [sweep]: variants x sweep points x seeds into trials (study/parser.h).
#include "study/parser.h"

namespace mhd::study_detail {

std::string StudyParser::variant_context(const std::string& variant, const std::string& sweep) {
  return " (in variant '" + variant + "'" + (sweep.empty() ? "" : " at sweep point " + sweep) + ")";
}

std::vector<SweepAxis> StudyParser::parse_sweep() const {
  std::vector<SweepAxis> axes;
  if (const toml::table* sweep = doc_["sweep"].as_table()) collect_axes(*sweep, "", axes);
  std::sort(axes.begin(), axes.end(), [](const SweepAxis& a, const SweepAxis& b) { return before(a.region, b.region); });
  std::set<std::string> seen;
  for (const auto& axis : axes) {
    if (!seen.insert(axis.path).second) fail(axis.pos, "sweep '" + axis.path + "' is given twice");
  }
  return axes;
}

void StudyParser::collect_axes(const toml::table& table, const std::string& prefix, std::vector<SweepAxis>& axes) const {
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

std::vector<std::string> StudyParser::split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::stringstream in(path);
  std::string part;
  while (std::getline(in, part, '.')) parts.push_back(part);
  if (!path.empty() && path.back() == '.') parts.emplace_back();
  return parts;
}

void StudyParser::check_sweep_path(const SweepAxis& axis) const {
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

void StudyParser::check_distinct(const SweepAxis& axis) const {
  std::vector<std::string> seen;
  for (const toml::node& element : *axis.values) {
    const std::string text = describe(element);
    if (std::find(seen.begin(), seen.end(), text) != seen.end()) {
      fail(element, "sweep '" + axis.path + "': " + text + " is listed twice");
    }
    seen.push_back(text);
  }
}

void StudyParser::apply_axis(RawConfig& config, const SweepAxis& axis, const toml::node& value) {
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

std::vector<std::vector<std::size_t>> StudyParser::sweep_points(const std::vector<SweepAxis>& axes) {
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

void StudyParser::expand(Study& study, const std::vector<VariantSpec>& variants, const std::vector<SweepAxis>& axes) const {
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

void StudyParser::check_trial_count(const Study& study, const std::vector<VariantSpec>& variants,
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

ParamValue StudyParser::resolved_value(const TrialConfig& c, const std::vector<std::string>& p, const toml::node& written) {
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

}  // namespace mhd::study_detail
