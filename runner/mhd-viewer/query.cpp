#include "query.h"

#include <algorithm>
#include <cmath>
#include <set>

#include <nlohmann/json.hpp>

#include "mhd/error.h"

namespace mhd::viewer {
namespace {

// Adds `v` to `out` when it is not there yet (keeps first-seen order).
template <typename T>
void add_unique(std::vector<T>& out, const T& v) {
  if (std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
}

// sweep_json is an object {"axis": value} (docs/studies.md); the resolved configuration writes the
// same point as [[axis, value], ...], which is accepted too.
void parse_sweep(const std::string& text, Trial& t) {
  if (text.empty()) return;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    return;
  }
  auto add = [&](const std::string& axis, const nlohmann::json& v) {
    t.sweep_values.emplace_back(axis, v.is_string() ? v.get<std::string>() : v.dump());
    if (v.is_number()) t.sweep_numbers[axis] = v.get<double>();
  };
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) add(it.key(), it.value());
  } else if (j.is_array()) {
    for (const auto& pair : j)
      if (pair.is_array() && pair.size() == 2 && pair[0].is_string()) add(pair[0].get<std::string>(), pair[1]);
  }
  std::sort(t.sweep_values.begin(), t.sweep_values.end());
}

struct Stats {
  double mean = 0, std = 0, min = 0, max = 0;
  int n = 0;
};

Stats stats(const std::vector<double>& values) {
  Stats s;
  s.n = static_cast<int>(values.size());
  if (values.empty()) return s;
  const auto [mean, std] = mhd::mean_std(values);
  s.mean = mean;
  s.std = std;
  s.min = *std::min_element(values.begin(), values.end());
  s.max = *std::max_element(values.begin(), values.end());
  return s;
}

void push(Series& s, double x, const Stats& st) {
  s.x.push_back(x);
  s.mean.push_back(st.mean);
  s.std.push_back(st.std);
  s.min.push_back(st.min);
  s.max.push_back(st.max);
  s.n.push_back(st.n);
}

}  // namespace

std::vector<double> ema(const std::vector<double>& values, double weight) {
  if (!(weight > 0.0)) return values;
  weight = std::min(weight, 0.999);
  std::vector<double> out(values.size());
  bool started = false;
  double last = 0.0;
  for (std::size_t i = 0; i < values.size(); ++i) {
    const double v = values[i];
    if (!std::isfinite(v)) {
      out[i] = v;
      continue;
    }
    last = started ? weight * last + (1.0 - weight) * v : v;
    started = true;
    out[i] = last;
  }
  return out;
}

bool higher_is_better(const std::string& metric) {
  for (const char* word : {"accuracy", "converged", "share", "stored"})
    if (metric.find(word) != std::string::npos) return true;
  return false;
}

std::unique_ptr<StudyQuery> StudyQuery::open(const std::string& path, std::optional<std::int64_t> study_id) {
  std::unique_ptr<StudyQuery> q(new StudyQuery());
  q->path_ = path;
  q->db_ = ResultsDb::open(path, /*read_only=*/true);
  std::optional<StudyRow> row = study_id ? q->db_->study(*study_id) : q->db_->latest_study();
  if (!row) {
    if (study_id) {
      std::string known;
      for (const auto& s : q->db_->studies()) known += (known.empty() ? "" : ", ") + std::to_string(s.id);
      throw Error(path + ": no study " + std::to_string(*study_id) +
                  (known.empty() ? std::string(" (the file has no study)") : " (studies: " + known + ")"));
    }
    throw Error(path + ": the results file has no study yet");
  }
  q->study_ = *row;
  q->study_id_ = row->id;
  q->reload();
  return q;
}

void StudyQuery::reload() {
  if (auto row = db_->study(study_id_)) study_ = *row;
  trials_.clear();
  for (auto& r : db_->trials(study_id_)) {
    Trial t;
    t.row = std::move(r);
    parse_sweep(t.row.sweep_json, t);
    trials_.push_back(std::move(t));
  }
  metric_names_ = db_->metric_names(study_id_);
  std::sort(metric_names_.begin(), metric_names_.end());
}

bool StudyQuery::active() const {
  return std::any_of(trials_.begin(), trials_.end(), [](const Trial& t) {
    return t.row.status == TrialStatus::Pending || t.row.status == TrialStatus::Running;
  });
}

std::vector<std::string> StudyQuery::variants() const {
  std::vector<std::string> out;
  for (const auto& t : trials_) add_unique(out, t.row.variant);
  return out;
}

std::vector<std::string> StudyQuery::sweep_points() const {
  std::vector<std::string> out;
  for (const auto& t : trials_) add_unique(out, t.row.sweep);
  return out;
}

std::vector<std::string> StudyQuery::sweep_axes() const {
  std::set<std::string> axes;
  for (const auto& t : trials_)
    for (const auto& [axis, value] : t.sweep_values) axes.insert(axis);
  return {axes.begin(), axes.end()};
}

std::vector<std::string> StudyQuery::numeric_sweep_axes() const {
  std::vector<std::string> out;
  for (const auto& axis : sweep_axes()) {
    const bool numeric = std::all_of(trials_.begin(), trials_.end(),
                                     [&](const Trial& t) { return t.sweep_numbers.count(axis) > 0; });
    if (numeric) out.push_back(axis);
  }
  return out;
}

std::vector<std::int64_t> StudyQuery::seeds() const {
  std::set<std::int64_t> s;
  for (const auto& t : trials_) s.insert(t.row.seed);
  return {s.begin(), s.end()};
}

std::vector<Group> StudyQuery::groups() const {
  std::vector<Group> out;
  for (const auto& t : trials_) {
    const bool seen = std::any_of(out.begin(), out.end(), [&](const Group& g) {
      return g.variant == t.row.variant && g.sweep == t.row.sweep;
    });
    if (!seen) out.push_back({t.row.variant, t.row.sweep});
  }
  return out;
}

std::string StudyQuery::baseline() const {
  const auto v = variants();
  if (std::find(v.begin(), v.end(), "base") != v.end()) return "base";
  return v.empty() ? std::string() : v.front();
}

std::vector<Series> StudyQuery::curves(const std::string& metric, double smoothing) const {
  std::vector<Series> out;
  for (const auto& g : groups()) {
    std::map<std::int64_t, std::vector<double>> by_step;
    for (const auto& t : trials_) {
      if (t.row.variant != g.variant || t.row.sweep != g.sweep) continue;
      const auto points = db_->metric_series(t.row.id, metric);
      std::vector<double> values;
      values.reserve(points.size());
      for (const auto& p : points) values.push_back(p.value);
      values = ema(values, smoothing);
      for (std::size_t i = 0; i < points.size(); ++i)
        if (std::isfinite(values[i])) by_step[points[i].step].push_back(values[i]);
    }
    if (by_step.empty()) continue;
    Series s{g.label(), g.variant, g.sweep, {}, {}, {}, {}, {}, {}};
    for (const auto& [step, values] : by_step) push(s, static_cast<double>(step), stats(values));
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<double> StudyQuery::distinct_values(const std::string& metric, std::size_t limit) const {
  std::set<double> seen;
  for (const auto& t : trials_)
    for (const auto& p : db_->metric_series(t.row.id, metric)) {
      if (!std::isfinite(p.value)) continue;
      seen.insert(p.value);
      if (seen.size() > limit) return {seen.begin(), seen.end()};
    }
  return {seen.begin(), seen.end()};
}

std::vector<Bar> StudyQuery::ablation(const std::string& metric, std::optional<bool> descending) const {
  const std::string base = baseline();
  std::vector<Bar> out;
  for (const auto& g : groups()) {
    std::vector<double> values;
    for (const auto& t : trials_) {
      if (t.row.variant != g.variant || t.row.sweep != g.sweep || t.row.status != TrialStatus::Done) continue;
      const auto finals = rule_final_metrics(*db_, t.row.id);  // as mhd report
      const auto it = finals.find(metric);
      if (it != finals.end() && std::isfinite(it->second)) values.push_back(it->second);
    }
    if (values.empty()) continue;
    const Stats st = stats(values);
    out.push_back({g.label(), g.variant, g.sweep, st.mean, st.std, st.n, g.variant == base});
  }
  const bool desc = descending.value_or(higher_is_better(metric));
  std::stable_sort(out.begin(), out.end(),
                   [desc](const Bar& a, const Bar& b) { return desc ? a.mean > b.mean : a.mean < b.mean; });
  return out;
}

std::vector<Series> StudyQuery::scaling(const std::string& metric, const std::string& axis) const {
  // Key: variant + the other axes' values; within it, x -> final values over seeds.
  std::vector<std::string> order;
  std::map<std::string, std::pair<std::string, std::map<double, std::vector<double>>>> by_key;
  for (const auto& t : trials_) {
    const auto x = t.sweep_numbers.find(axis);
    if (x == t.sweep_numbers.end()) continue;
    std::string rest;
    for (const auto& [a, v] : t.sweep_values)
      if (a != axis) rest += (rest.empty() ? "" : " ") + a + "=" + v;
    const std::string key = rest.empty() ? t.row.variant : t.row.variant + " " + rest;
    add_unique(order, key);
    auto& entry = by_key[key];
    entry.first = t.row.variant;
    auto& values = entry.second[x->second];  // the point exists even before a trial is done
    if (t.row.status != TrialStatus::Done) continue;
    const auto finals = rule_final_metrics(*db_, t.row.id);  // as mhd report
    const auto it = finals.find(metric);
    if (it != finals.end() && std::isfinite(it->second)) values.push_back(it->second);
  }
  std::vector<Series> out;
  for (const auto& key : order) {
    const auto& [variant, points] = by_key[key];
    Series s{key, variant, "", {}, {}, {}, {}, {}, {}};
    for (const auto& [x, values] : points)
      if (!values.empty()) push(s, x, stats(values));
    if (!s.x.empty()) out.push_back(std::move(s));
  }
  return out;
}

std::vector<std::int64_t> StudyQuery::trace_steps() const {
  std::set<std::int64_t> steps;
  for (const auto& t : trials_) {
    auto it = trace_cache_.find(t.row.id);
    const auto points = it != trace_cache_.end() ? it->second : db_->traces(t.row.id);
    if (t.row.status == TrialStatus::Done && it == trace_cache_.end()) trace_cache_[t.row.id] = points;
    for (const auto& p : points) steps.insert(p.step);
  }
  return {steps.begin(), steps.end()};
}

std::vector<Trace> StudyQuery::traces(const std::string& phase, const std::vector<std::int64_t>& steps,
                                      bool relative) const {
  std::vector<Trace> out;
  for (const auto& t : trials_) {
    auto it = trace_cache_.find(t.row.id);
    const auto points = it != trace_cache_.end() ? it->second : db_->traces(t.row.id);
    if (t.row.status == TrialStatus::Done && it == trace_cache_.end()) trace_cache_[t.row.id] = points;
    std::vector<std::int64_t> wanted = steps;
    if (wanted.empty()) {
      std::int64_t last = -1;
      for (const auto& p : points)
        if (p.phase == phase) last = std::max(last, p.step);
      if (last < 0) continue;
      wanted.push_back(last);
    }
    for (const auto step : wanted) {
      Trace tr;
      tr.variant = t.row.variant;
      tr.trial_id = t.row.id;
      tr.seed = t.row.seed;
      tr.step = step;
      tr.phase = phase;
      tr.label = t.row.variant + (t.row.sweep.empty() ? "" : " " + t.row.sweep) +
                 " seed=" + std::to_string(t.row.seed) + " step " + std::to_string(step);
      for (const auto& p : points) {
        if (p.step != step || p.phase != phase) continue;
        const double r = relative ? p.rel_residual : p.abs_residual;
        if (!std::isfinite(r)) continue;
        tr.iteration.push_back(static_cast<double>(p.iteration));
        tr.residual.push_back(r);
      }
      if (!tr.iteration.empty()) out.push_back(std::move(tr));
    }
  }
  return out;
}

const char* to_string(ProbeShape shape) {
  switch (shape) {
    case ProbeShape::Curves: return "curves";
    case ProbeShape::Grid: return "grid";
    case ProbeShape::Paths: return "paths";
  }
  return "?";
}

ProbeShape probe_shape(const std::vector<ProbePoint>& points) {
  auto same = [](double a, double b) { return (std::isnan(a) && std::isnan(b)) || a == b; };
  const bool curves = std::all_of(points.begin(), points.end(), [&](const ProbePoint& p) {
    return std::isnan(p.y) || same(p.y, p.value);
  });
  if (curves) return ProbeShape::Curves;
  // A grid: every (i, j) of the rectangle present once, x a function of i and y of j.
  std::map<std::int64_t, double> x_of_i, y_of_j;
  std::set<std::pair<std::int64_t, std::int64_t>> cells;
  for (const auto& p : points) {
    if (!cells.insert({p.i, p.j}).second) return ProbeShape::Paths;
    auto [xi, new_i] = x_of_i.emplace(p.i, p.x);
    auto [yj, new_j] = y_of_j.emplace(p.j, p.y);
    if ((!new_i && !same(xi->second, p.x)) || (!new_j && !same(yj->second, p.y))) return ProbeShape::Paths;
  }
  const bool rectangle = x_of_i.size() >= 2 && y_of_j.size() >= 2 && cells.size() == x_of_i.size() * y_of_j.size();
  return rectangle ? ProbeShape::Grid : ProbeShape::Paths;
}

std::vector<std::pair<std::string, std::string>> StudyQuery::probe_series() const {
  std::set<std::pair<std::string, std::string>> all;
  for (const auto& t : trials_)
    for (auto& s : db_->probe_series(t.row.id)) all.insert(std::move(s));
  return {all.begin(), all.end()};
}

std::vector<const Trial*> StudyQuery::probe_trials(const std::string& probe, const std::string& name) const {
  std::vector<const Trial*> out;
  const auto wanted = std::make_pair(probe, name);
  for (const auto& t : trials_) {
    const auto series = db_->probe_series(t.row.id);
    if (std::find(series.begin(), series.end(), wanted) != series.end()) out.push_back(&t);
  }
  return out;
}

std::vector<ProbePoint> StudyQuery::probe_points(std::int64_t trial_id, const std::string& probe,
                                                 const std::string& name) const {
  return db_->probe_points(trial_id, probe, name);
}

}  // namespace mhd::viewer
