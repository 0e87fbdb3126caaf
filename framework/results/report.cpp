// `mhd report`: final metrics per (variant, sweep point), mean +- std over seeds; what "final" is: FinalRule
// (results.h).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "mhd/catalog.h"
#include "mhd/error.h"
#include "mhd/params.h"
#include "results/results.h"
#include "train/metric_names.h"

namespace mhd {

namespace {

// What a researcher looks at first; the table shows these when the user names no metrics.
const std::vector<std::string>& headline_metrics() {
  static const std::vector<std::string> names = {metric::kLoss,         metric::kTaskLoss, metric::kEvalAccuracy,
                                                 metric::kSolverIters,   metric::kConvergedShare, metric::kEnergy,
                                                 metric::kStepMs};
  return names;
}
constexpr std::size_t kFallbackColumns = 6;  // when none of the headline metrics exists

struct Group {
  std::string variant;
  std::string sweep;
  std::int64_t done = 0;
  std::int64_t failed = 0;
  std::int64_t diverged = 0;
  std::int64_t unfinished = 0;  // pending or running
  std::map<std::string, std::vector<double>> finals;  // metric -> final value per done trial
};

// Groups in the order of the study's expansion (first trial of each group).
std::vector<Group> collect_groups(const ResultsDb& db, std::int64_t study_id, std::int64_t k) {
  std::vector<Group> groups;
  for (const TrialRow& trial : db.trials(study_id)) {
    auto it = std::find_if(groups.begin(), groups.end(), [&](const Group& g) {
      return g.variant == trial.variant && g.sweep == trial.sweep;
    });
    if (it == groups.end()) {
      Group group;
      group.variant = trial.variant;
      group.sweep = trial.sweep;
      groups.push_back(std::move(group));
      it = std::prev(groups.end());
    }
    switch (trial.status) {
      case TrialStatus::Done:
        ++it->done;
        for (const auto& [name, value] : rule_final_metrics(db, trial.id, k)) it->finals[name].push_back(value);
        break;
      case TrialStatus::Failed: ++it->failed; break;
      case TrialStatus::Diverged: ++it->diverged; break;
      default: ++it->unfinished; break;
    }
  }
  return groups;
}

std::vector<std::string> check_requested(const std::vector<std::string>& requested,
                                         const std::vector<std::string>& known, const std::string& path) {
  for (const auto& name : requested) {
    if (std::find(known.begin(), known.end(), name) != known.end()) continue;
    throw Error(path + ": " + unknown_name_message("metric", name, known));
  }
  return requested;
}

std::vector<std::string> default_columns(const std::vector<std::string>& known) {
  std::vector<std::string> columns;
  for (const auto& name : headline_metrics())
    if (std::find(known.begin(), known.end(), name) != known.end()) columns.push_back(name);
  if (columns.empty()) columns.assign(known.begin(), known.begin() + std::min(known.size(), kFallbackColumns));
  return columns;
}

std::string format_g(double value, int digits) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.*g", digits, value);
  return buf;
}
// Four significant digits are what a table can show; CSV keeps twelve, enough for any analysis
// without printing a mean of 0.5, 0.7, 0.9 as 0.7000000000000001.
std::string format_4g(double value) { return format_g(value, 4); }
std::string format_csv_number(double value) { return format_g(value, 12); }

std::string cell(const Group& group, const std::string& metric) {
  auto it = group.finals.find(metric);
  if (it == group.finals.end() || it->second.empty()) return "-";
  const auto [mean, std] = mean_std(it->second);
  // A single seed has no spread to show.
  return it->second.size() == 1 ? format_4g(mean) : format_4g(mean) + " +- " + format_4g(std);
}

std::string note(const Group& group) {
  std::vector<std::string> parts;
  if (group.failed) parts.push_back(std::to_string(group.failed) + " failed");
  if (group.diverged) parts.push_back(std::to_string(group.diverged) + " diverged");
  if (group.unfinished) parts.push_back(std::to_string(group.unfinished) + " not finished");
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ", ") + p;
  return out;
}

// Left-aligned columns, two spaces apart; the last column is not padded.
std::string render_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()), 0);
    for (std::size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], row[c].size());
  }
  std::ostringstream out;
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line += std::string(widths[c] - row[c].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << "\n";
  }
  return out.str();
}

constexpr std::size_t kLineWidth = 100;

// "prefix a, b, c" wrapped at `width`, continuation lines indented by two spaces.
std::string wrap(const std::string& prefix, const std::vector<std::string>& items, std::size_t width) {
  std::string out;
  std::string line = prefix;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const std::string item = items[i] + (i + 1 < items.size() ? "," : "");
    if (line.size() + item.size() + 1 > width && line.size() > 2) {
      out += line + "\n";
      line = "  ";
    }
    line += (line.back() == ' ' ? "" : " ") + item;
  }
  return out + line + "\n";
}

// "eval_accuracy at the last evaluation; loss, task_loss the mean of the last 10 logged steps"
std::string final_rule_line(const std::vector<std::string>& columns, std::int64_t k) {
  std::vector<std::string> held_out, per_step;
  for (const auto& name : columns)
    (final_rule(name) == FinalRule::LastEvaluation ? held_out : per_step).push_back(name);
  auto join = [](const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
    return out;
  };
  std::string line;
  if (!held_out.empty()) line += join(held_out) + " at the last evaluation";
  if (!per_step.empty())
    line += (line.empty() ? "" : "; ") + join(per_step) + " the mean of the last " + std::to_string(k) +
            " logged steps (--last K)";
  return line;
}

std::string text_report(const StudyRow& study, const std::vector<Group>& groups,
                        const std::vector<std::string>& columns, const std::vector<std::string>& known,
                        std::int64_t k) {
  std::int64_t total = 0, done = 0, failed = 0, diverged = 0;
  for (const auto& g : groups) {
    done += g.done;
    failed += g.failed;
    diverged += g.diverged;
    total += g.done + g.failed + g.diverged + g.unfinished;
  }
  std::ostringstream out;
  out << "study '" << study.name << "' (id " << study.id << ", started " << study.started_at << "): " << total
      << " trial(s), " << done << " done, " << failed << " failed, " << diverged << " diverged\n";
  out << "final value per trial: " << final_rule_line(columns, k) << "\n";
  out << "mean +- std over seeds (n = done trials)\n";

  const bool any_sweep = std::any_of(groups.begin(), groups.end(), [](const Group& g) { return !g.sweep.empty(); });
  const bool any_note = std::any_of(groups.begin(), groups.end(), [](const Group& g) { return !note(g).empty(); });
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> header = {"variant"};
  if (any_sweep) header.push_back("sweep");
  header.push_back("n");
  header.insert(header.end(), columns.begin(), columns.end());
  if (any_note) header.push_back("not done");
  rows.push_back(header);
  for (const auto& g : groups) {
    std::vector<std::string> row = {g.variant};
    if (any_sweep) row.push_back(g.sweep.empty() ? "-" : g.sweep);
    row.push_back(std::to_string(g.done));
    for (const auto& metric : columns) row.push_back(cell(g, metric));
    if (any_note) row.push_back(note(g));
    rows.push_back(std::move(row));
  }
  out << render_table(rows);

  std::vector<std::string> others;
  for (const auto& name : known)
    if (std::find(columns.begin(), columns.end(), name) == columns.end()) others.push_back(name);
  if (!others.empty()) out << wrap("other metrics (show with --metric NAME): ", others, kLineWidth);
  return out.str();
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (const char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string csv_report(const std::vector<Group>& groups, const std::vector<std::string>& metrics, std::int64_t k) {
  std::ostringstream out;
  out << "variant,sweep,metric,mean,std,n,final\n";
  for (const auto& g : groups) {
    for (const auto& metric : metrics) {
      auto it = g.finals.find(metric);
      const std::vector<double> values = it == g.finals.end() ? std::vector<double>{} : it->second;
      const std::string rule =
          final_rule(metric) == FinalRule::LastEvaluation ? "last_eval" : "mean_last_" + std::to_string(k);
      out << csv_field(g.variant) << "," << csv_field(g.sweep) << "," << csv_field(metric) << ",";
      if (values.empty()) {
        out << ",,0," << rule << "\n";  // the group has no finished trial with this metric
        continue;
      }
      const auto [mean, std] = mean_std(values);
      out << format_csv_number(mean) << "," << format_csv_number(std) << "," << values.size() << "," << rule << "\n";
    }
  }
  return out.str();
}

}  // namespace

std::map<std::string, double> rule_final_metrics(const ResultsDb& db, std::int64_t trial_id, std::int64_t k) {
  std::map<std::string, double> out;
  for (const auto& [name, values] : db.last_metric_values(trial_id, k)) {
    if (final_rule(name) == FinalRule::LastEvaluation) {
      out[name] = values.back();
      continue;
    }
    double sum = 0;
    for (const double v : values) sum += v;
    out[name] = sum / static_cast<double>(values.size());
  }
  return out;
}

FinalRule final_rule(const std::string& metric) {
  for (const char* prefix : {"eval_", "val_", "continual_"})
    if (metric.rfind(prefix, 0) == 0) return FinalRule::LastEvaluation;
  return FinalRule::MeanOfLastK;
}

std::pair<double, double> mean_std(const std::vector<double>& values) {
  if (values.empty()) return {std::nan(""), 0.0};
  double sum = 0.0;
  for (const double v : values) sum += v;
  const double mean = sum / static_cast<double>(values.size());
  if (values.size() < 2) return {mean, 0.0};
  double squares = 0.0;
  for (const double v : values) squares += (v - mean) * (v - mean);
  return {mean, std::sqrt(squares / static_cast<double>(values.size() - 1))};
}

std::string format_report(const ResultsDb& db, const ReportOptions& options) {
  std::optional<StudyRow> study = options.study_id ? db.study(*options.study_id) : db.latest_study();
  if (!study) {
    throw Error(db.path() + (options.study_id ? ": no study with id " + std::to_string(*options.study_id)
                                              : std::string(": no study recorded yet")));
  }
  const std::vector<std::string> known = db.metric_names(study->id);
  if (options.last_k < 1) throw Error("--last " + std::to_string(options.last_k) + ": expected K >= 1 logged steps");
  const std::vector<Group> groups = collect_groups(db, study->id, options.last_k);
  if (options.csv) {
    const auto metrics = options.metrics.empty() ? known : check_requested(options.metrics, known, db.path());
    return csv_report(groups, metrics, options.last_k);
  }
  const auto columns = options.metrics.empty() ? default_columns(known) : check_requested(options.metrics, known, db.path());
  std::string text = text_report(*study, groups, columns, known, options.last_k);
  // What `mhd run --resume` and `--shard` did to this study, so the table is read for what it is.
  std::int64_t changed = 0;
  for (const TrialRow& trial : db.trials(study->id)) changed += trial.config_changes > 0 ? 1 : 0;
  if (changed > 0) {
    text += std::to_string(changed) + " trial(s) re-run because their configuration changed (mhd run --resume)\n";
  }
  if (!study->shard.empty()) text += "shard " + study->shard + " of the study's trials (combine shards with mhd merge)\n";
  return text;
}

}  // namespace mhd
