#include "mhd/pipeline.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <thread>

#include <ATen/Parallel.h>

#include "mhd/error.h"
#include "mhd/results.h"
#include "mhd/study.h"
#include "mhd/trainer.h"

namespace mhd {
namespace {

std::string format_duration(double seconds) {
  char buf[32];
  const long s = static_cast<long>(seconds + 0.5);
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%lds", s);
  return buf;
}

// "loss 3.70 -> 1.38, eval_accuracy 0.463 (7.4x chance)": whether the trial learned, at a glance.
std::string learning_summary(const TrainResult& r) {
  char buf[160];
  std::string out;
  auto first = r.first_metrics.find("loss");
  auto last = r.final_metrics.find("loss");
  if (first != r.first_metrics.end() && last != r.final_metrics.end()) {
    std::snprintf(buf, sizeof buf, "loss %.3f -> %.3f", first->second, last->second);
    out += buf;
  }
  auto share = r.final_metrics.find("converged_share");
  if (share != r.final_metrics.end()) {
    std::snprintf(buf, sizeof buf, "%s%.0f%% of solves converged", out.empty() ? "" : ", ", 100.0 * share->second);
    out += buf;
  }
  auto acc = r.final_metrics.find("eval_accuracy");
  if (acc != r.final_metrics.end() && r.chance_accuracy > 0) {
    std::snprintf(buf, sizeof buf, "%seval_accuracy %.3f (%.1fx chance %.3f)", out.empty() ? "" : ", ", acc->second,
                  acc->second / r.chance_accuracy, r.chance_accuracy);
    out += buf;
  }
  return out;
}

void print_progress(std::ostream& log, const std::string& prefix, const TrainProgress& p) {
  char line[256];
  std::snprintf(line, sizeof line, "%s step %lld/%lld  loss %.4f", prefix.c_str(), static_cast<long long>(p.step),
                static_cast<long long>(p.steps), p.loss);
  log << line;
  if (p.accuracy >= 0) {
    std::snprintf(line, sizeof line, "  eval_acc %.3f", p.accuracy);
    log << line;
  }
  std::snprintf(line, sizeof line, "  iters %.0f  rel_res %.1e  %.2fs/step  ETA %s", p.solver_iters, p.rel_residual,
                p.seconds_per_step, format_duration(p.seconds_per_step * static_cast<double>(p.steps - p.step)).c_str());
  log << line << std::endl;
}

std::vector<const TrialConfig*> selected_trials(const Study& study, const RunOptions& options) {
  std::vector<const TrialConfig*> out;
  if (!options.only_variant.empty() &&
      std::find(study.variants.begin(), study.variants.end(), options.only_variant) == study.variants.end()) {
    std::string known;
    for (const auto& v : study.variants) known += (known.empty() ? "" : ", ") + v;
    throw Error("--only " + options.only_variant + ": study '" + study.name + "' has no such variant (variants: " +
                known + ")");
  }
  for (const auto& trial : study.trials)
    if (options.only_variant.empty() || trial.variant == options.only_variant) out.push_back(&trial);
  return out;
}

}  // namespace

RunSummary run_study(const Study& study, PluginRegistry& registry, const RunOptions& options, std::ostream& log) {
  RunSummary summary;
  summary.output = options.output.empty() ? study.output : options.output;
  const auto trials = selected_trials(study, options);
  if (auto parent = std::filesystem::path(summary.output).parent_path(); !parent.empty())
    std::filesystem::create_directories(parent);

  auto db = ResultsDb::open(summary.output);
  const std::string device = options.device.empty() ? study.trials.front().run.text("device") : options.device;
  // threads = 0 means every core: LibTorch's own default can be lower (1 on some VMs).
  const std::int64_t wanted = study.trials.front().run.integer("threads");
  const std::int64_t threads = wanted > 0 ? wanted : std::max<std::int64_t>(1, std::thread::hardware_concurrency());
  at::set_num_threads(static_cast<int>(threads));
  summary.study_id = db->begin_study(study, current_environment(device, at::get_num_threads()));

  std::vector<std::int64_t> ids;
  for (std::size_t i = 0; i < trials.size(); ++i)
    ids.push_back(db->add_trial(summary.study_id, static_cast<std::int64_t>(i), *trials[i]));

  log << "study '" << study.name << "': " << trials.size() << " trial(s) -> " << summary.output << std::endl;
  for (std::size_t i = 0; i < trials.size(); ++i) {
    TrialConfig trial = *trials[i];
    if (!options.device.empty()) trial.run.set("device", options.device);
    const std::int64_t id = ids[i];
    const std::string prefix = "[" + std::to_string(i + 1) + "/" + std::to_string(trials.size()) + " " + trial.label() + "]";
    log << prefix << " start" << std::endl;
    db->mark_running(id);
    MetricSink sink;
    sink.metric = [&](std::int64_t step, const std::string& name, double value) { db->add_metric(id, step, name, value); };
    sink.trace = [&](const TracePoint& point) { db->add_trace(id, point); };
    sink.point = [&](const ProbePoint& point) { db->add_point(id, point); };
    sink.flush = [&] { db->flush(); };

    const auto start = std::chrono::steady_clock::now();
    TrainResult result;
    try {
      result = train_trial(trial, registry, sink, [&](const TrainProgress& p) { print_progress(log, prefix, p); });
    } catch (const std::exception& e) {
      result.status = TrialStatus::Failed;
      result.error = e.what();
    }
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    db->flush();
    db->set_param_count(id, result.parameter_count);
    db->finish_trial(id, result.status, result.error, wall);
    switch (result.status) {
      case TrialStatus::Done: ++summary.done; break;
      case TrialStatus::Diverged: ++summary.diverged; break;
      default: ++summary.failed; break;
    }
    log << prefix << " " << to_string(result.status) << " in " << format_duration(wall);
    if (!result.error.empty()) log << ": " << result.error;
    else if (const auto learned = learning_summary(result); !learned.empty()) log << ": " << learned;
    log << std::endl;
  }
  db->finish_study(summary.study_id);

  ReportOptions report;
  report.study_id = summary.study_id;
  log << "\n" << format_report(*db, report);
  log << trials.size() << " trial(s): " << summary.done << " done, " << summary.failed << " failed, "
      << summary.diverged << " diverged. Results: " << summary.output << " (mhd report " << summary.output << ")"
      << std::endl;
  return summary;
}

}  // namespace mhd
