// Reading the results file: studies, trials, metric series, traces, probe series (results.h).
#include "results/results.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

#include "config/trial_config.h"
#include "mhd/error.h"
#include "results/store.h"
#include "study/study.h"

namespace mhd {

std::optional<StudyRow> ResultsDb::latest_study() const {
  Statement s(impl_->db, path_, (impl_->study_select() + " ORDER BY id DESC LIMIT 1").c_str());
  if (!s.step()) return std::nullopt;
  return read_study_row(s);
}

std::optional<StudyRow> ResultsDb::study(std::int64_t study_id) const {
  Statement s(impl_->db, path_, (impl_->study_select() + " WHERE id = ?").c_str());
  s.bind(1, study_id);
  if (!s.step()) return std::nullopt;
  return read_study_row(s);
}

std::vector<StudyRow> ResultsDb::studies() const {
  Statement s(impl_->db, path_, (impl_->study_select() + " ORDER BY id").c_str());
  std::vector<StudyRow> out;
  while (s.step()) out.push_back(read_study_row(s));
  return out;
}


std::vector<TrialRow> ResultsDb::trials(std::int64_t study_id) const {
  Statement s(impl_->db, path_, (impl_->trial_select() + " WHERE study_id = ? ORDER BY idx").c_str());
  s.bind(1, study_id);
  std::vector<TrialRow> out;
  while (s.step()) out.push_back(read_trial_row(s));
  return out;
}

std::optional<TrialRow> ResultsDb::trial(std::int64_t trial_id) const {
  Statement s(impl_->db, path_, (impl_->trial_select() + " WHERE id = ?").c_str());
  s.bind(1, trial_id);
  if (!s.step()) return std::nullopt;
  return read_trial_row(s);
}

std::vector<std::string> ResultsDb::metric_names(std::int64_t study_id) const {
  impl_->flush_if_writable();
  Statement s(impl_->db, path_,
              "SELECT DISTINCT m.name FROM metrics m JOIN trials t ON t.id = m.trial_id WHERE t.study_id = ? "
              "ORDER BY m.name");
  s.bind(1, study_id);
  std::vector<std::string> out;
  while (s.step()) out.push_back(s.text(0));
  return out;
}

std::vector<MetricPoint> ResultsDb::metric_series(std::int64_t trial_id, const std::string& name) const {
  impl_->flush_if_writable();
  Statement s(impl_->db, path_,
              "SELECT step, value FROM metrics WHERE trial_id = ? AND name = ? ORDER BY step, rowid");
  s.bind(1, trial_id).bind(2, name);
  std::vector<MetricPoint> out;
  while (s.step()) out.push_back({s.integer(0), s.real(1)});
  return out;
}

std::map<std::string, double> ResultsDb::final_metrics(std::int64_t trial_id) const {
  impl_->flush_if_writable();
  // Ordered by step, then insertion: the last row seen per name is the final value.
  Statement s(impl_->db, path_, "SELECT name, value FROM metrics WHERE trial_id = ? ORDER BY name, step, rowid");
  s.bind(1, trial_id);
  std::map<std::string, double> out;
  while (s.step()) out[s.text(0)] = s.real(1);
  return out;
}

std::map<std::string, std::vector<double>> ResultsDb::last_metric_values(std::int64_t trial_id, std::int64_t k) const {
  impl_->flush_if_writable();
  // Newest first per name (step, then insertion), the first k kept; returned oldest first.
  Statement s(impl_->db, path_,
              "SELECT name, value FROM (SELECT name, value, step, rowid AS r, ROW_NUMBER() OVER "
              "(PARTITION BY name ORDER BY step DESC, rowid DESC) AS newest FROM metrics WHERE trial_id = ?) "
              "WHERE newest <= ? ORDER BY name, step, r");
  s.bind(1, trial_id).bind(2, k);
  std::map<std::string, std::vector<double>> out;
  while (s.step()) out[s.text(0)].push_back(s.real(1));
  return out;
}

std::vector<TracePoint> ResultsDb::traces(std::int64_t trial_id) const {
  impl_->flush_if_writable();
  Statement s(impl_->db, path_,
              "SELECT step, phase, iteration, abs_residual, rel_residual, energy FROM traces WHERE trial_id = ? "
              "ORDER BY step, rowid");
  s.bind(1, trial_id);
  std::vector<TracePoint> out;
  while (s.step()) {
    TracePoint p;
    p.step = s.integer(0);
    p.phase = s.text(1);
    p.iteration = s.integer(2);
    p.abs_residual = s.real(3);
    p.rel_residual = s.real(4);
    p.energy = s.real(5);
    out.push_back(std::move(p));
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> ResultsDb::probe_series(std::int64_t trial_id) const {
  impl_->flush_if_writable();
  std::vector<std::pair<std::string, std::string>> out;
  if (!impl_->has_table("probe_points")) return out;  // a file written before probes existed
  Statement s(impl_->db, path_,
              "SELECT DISTINCT probe, name FROM probe_points WHERE trial_id = ? ORDER BY probe, name");
  s.bind(1, trial_id);
  while (s.step()) out.emplace_back(s.text(0), s.text(1));
  return out;
}

std::vector<ProbePoint> ResultsDb::probe_points(std::int64_t trial_id, const std::string& probe,
                                                const std::string& name) const {
  impl_->flush_if_writable();
  std::vector<ProbePoint> out;
  if (!impl_->has_table("probe_points")) return out;
  Statement s(impl_->db, path_,
              "SELECT i, j, x, y, value FROM probe_points WHERE trial_id = ? AND probe = ? AND name = ? "
              "ORDER BY i, j, rowid");
  s.bind(1, trial_id).bind(2, probe).bind(3, name);
  while (s.step()) {
    ProbePoint p;
    p.probe = probe;
    p.name = name;
    p.i = s.integer(0);
    p.j = s.integer(1);
    p.x = s.real(2);
    p.y = s.real(3);
    p.value = s.real(4);
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace mhd
