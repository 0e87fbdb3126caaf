// mhd-viewer's query layer: everything the charts show, computed from a results file (docs/studies.md,
// "Results schema") in plain C++ — no Qt — so it is unit-tested on its own (tests/test_viewer_query.cpp).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "results/results.h"

namespace mhd::viewer {

// One trial as the viewer sees it: its row plus the sweep point parsed from sweep_json.
struct Trial {
  TrialRow row;
  std::vector<std::pair<std::string, std::string>> sweep_values;  // axis -> value as text, sorted by axis
  std::map<std::string, double> sweep_numbers;                    // numeric sweep values only
};

// A group of trials that differ only in their seed: one variant at one sweep point.
struct Group {
  std::string variant;
  std::string sweep;  // TrialRow::sweep ("" without a sweep)
  std::string label() const { return sweep.empty() ? variant : variant + " " + sweep; }
};

// A line with a spread: y[i] is the mean over seeds at x[i]; std is the sample std (0 for one seed).
struct Series {
  std::string label;  // "variant" or "variant memory.size=8"
  std::string variant;
  std::string sweep;
  std::vector<double> x, mean, std, min, max;
  std::vector<int> n;  // seeds that have a value at x[i]
};

// One bar of the ablation chart: the final value of a metric, mean +- std over the done seeds.
struct Bar {
  std::string label;
  std::string variant;
  std::string sweep;
  double mean = 0.0, std = 0.0;
  int n = 0;
  bool baseline = false;
};

// One solver trace: the residual against the iteration of one solve (a trial, a step, a phase).
struct Trace {
  std::string label;  // "variant sweep seed=N step S"
  std::string variant;
  std::int64_t trial_id = 0, seed = 0, step = 0;
  std::string phase;
  std::vector<double> iteration, residual;
};

// A probe's stored series (probe.h, table probe_points), as the viewer draws it.
enum class ProbeShape {
  Curves,  // y == value (or y NaN): value against x (x NaN: against j), one line per i
  Grid,    // a full i x j rectangle whose x depends on i alone and y on j alone: a heatmap of value
  Paths,   // anything else: the points (x, y) in order of j, one path per i (e.g. trajectories in a plane)
};
const char* to_string(ProbeShape shape);
// How to draw `points` (see ProbeShape); Curves for an empty list.
ProbeShape probe_shape(const std::vector<ProbePoint>& points);

// Exponential moving average as TensorBoard smooths: s[0] = v[0], s[i] = w s[i-1] + (1-w) v[i];
// w in [0, 1), 0 leaves the values as they are. Non-finite values are passed through unsmoothed.
std::vector<double> ema(const std::vector<double>& values, double weight);

// Whether a larger value of the metric is the better one (accuracy, converged share, ...); decides the
// ablation's default sort order (best first).
bool higher_is_better(const std::string& metric);

class StudyQuery {
 public:
  // Opens `path` read-only. Throws mhd::Error when it is not a results file, has no study, or has no
  // study `study_id` (default: the latest study in the file).
  static std::unique_ptr<StudyQuery> open(const std::string& path,
                                          std::optional<std::int64_t> study_id = std::nullopt);

  // Reads the trials (and the list of metric names) again, for a study that is still being written.
  void reload();

  const std::string& path() const { return path_; }
  const StudyRow& study() const { return study_; }
  const std::vector<Trial>& trials() const { return trials_; }
  // Whether a trial is pending or running: the study may still change.
  bool active() const;

  std::vector<std::string> variants() const;      // in trial order (base first)
  std::vector<std::string> sweep_points() const;  // TrialRow::sweep labels, in trial order
  std::vector<std::string> sweep_axes() const;    // all axes, in sorted order
  std::vector<std::string> numeric_sweep_axes() const;  // axes whose every value is a number
  std::vector<std::int64_t> seeds() const;        // sorted
  std::vector<Group> groups() const;              // variant x sweep point, in trial order
  const std::vector<std::string>& metric_names() const { return metric_names_; }
  // The baseline variant: "base" when the study has it, else the first variant.
  std::string baseline() const;

  // Training curves: `metric` against step, one series per group, mean / std / min / max over the seeds
  // at each step that any seed recorded (a seed missing a step, or with a non-finite value there, is
  // left out of that step). Each seed's values are smoothed with ema(weight) before averaging.
  // Trials of every status are included (a running study shows its progress).
  std::vector<Series> curves(const std::string& metric, double smoothing = 0.0) const;

  // The distinct finite values `metric` took at any step of any trial, sorted; at most `limit` + 1 of
  // them, so that a caller can tell "more than limit" from "limit". A metric with at most one value
  // is constant over the study (lr, solver_tol, chance_accuracy, parameter_count in most studies).
  std::vector<double> distinct_values(const std::string& metric, std::size_t limit = 8) const;
  bool constant_metric(const std::string& metric) const { return distinct_values(metric, 1).size() <= 1; }

  // Ablation: the final value of `metric` per group, over the trials that are done, sorted best first
  // (see higher_is_better) unless `descending` says otherwise. Groups without a value are left out.
  std::vector<Bar> ablation(const std::string& metric, std::optional<bool> descending = std::nullopt) const;

  // Scaling: the final value of `metric` (done trials) against the numeric sweep axis `axis`; one
  // series per variant and value of the other sweep axes, points sorted by x.
  std::vector<Series> scaling(const std::string& metric, const std::string& axis) const;

  // Training steps that have solver traces (in any trial), sorted.
  std::vector<std::int64_t> trace_steps() const;
  // Residual (relative, or absolute) against iteration for `phase` ("forward" | "backward") at each of
  // `steps` (empty: each trial's last traced step), one trace per trial and step.
  std::vector<Trace> traces(const std::string& phase, const std::vector<std::int64_t>& steps,
                            bool relative = true) const;

  // Probes' chart data: the (probe, name) series any trial of the study stored, sorted.
  std::vector<std::pair<std::string, std::string>> probe_series() const;
  // The trials (in trial order) that stored the series.
  std::vector<const Trial*> probe_trials(const std::string& probe, const std::string& name) const;
  // One trial's points of the series, ordered by (i, j).
  std::vector<ProbePoint> probe_points(std::int64_t trial_id, const std::string& probe, const std::string& name) const;

 private:
  StudyQuery() = default;
  std::unique_ptr<ResultsDb> db_;
  std::string path_;
  std::int64_t study_id_ = 0;
  StudyRow study_;
  std::vector<Trial> trials_;
  std::vector<std::string> metric_names_;
  mutable std::map<std::int64_t, std::vector<TracePoint>> trace_cache_;  // done trials only
};

}  // namespace mhd::viewer
