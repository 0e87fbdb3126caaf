// Running a study (docs/design.md §5-7): trials claimed in the results file, each trained in
// this process or in a child process (`mhd run-trial`, crash isolation), several at once with
// --jobs, one shard with --shard, continued with --resume, stopped cleanly by SIGINT.
#include "run/pipeline.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <thread>

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ATen/Parallel.h>
#include <torch/cuda.h>

#include "train/checkpoint.h"
#include "mhd/error.h"
#include "plugin_host/registry.h"
#include "probes/probe.h"
#include "os/process.h"
#include "results/results.h"
#include "mhd/runtime.h"
#include "mhd/stopwatch.h"
#include "study/study.h"
#include "train/metric_names.h"
#include "train/trainer.h"

namespace mhd {
namespace {

volatile std::sig_atomic_t g_stop = 0;

void on_sigint(int) {
  if (g_stop) _exit(130);  // second Ctrl-C: now (children die with us: PR_SET_PDEATHSIG)
  g_stop = 1;
}

// Thrown from the metric sink when a stop was requested. Not a std::exception, so nothing in the
// trainer or a probe that catches std::exception turns an interruption into a failure.
struct TrialInterrupted {};



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
  auto first = r.first_metrics.find(metric::kLoss);
  auto last = r.final_metrics.find(metric::kLoss);
  if (first != r.first_metrics.end() && last != r.final_metrics.end()) {
    std::snprintf(buf, sizeof buf, "loss %.3f -> %.3f", first->second, last->second);
    out += buf;
  }
  auto share = r.final_metrics.find("converged_share");
  if (share != r.final_metrics.end()) {
    std::snprintf(buf, sizeof buf, "%s%.0f%% of solves converged", out.empty() ? "" : ", ", 100.0 * share->second);
    out += buf;
  }
  auto acc = r.final_metrics.find(metric::kEvalAccuracy);
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
    // Between evaluations the last one's accuracy is shown with the step it was measured at.
    std::snprintf(line, sizeof line, "  eval_acc %.3f", p.accuracy);
    log << line;
    if (p.accuracy_step != p.step) log << " (@" << p.accuracy_step << ")";
  }
  std::snprintf(line, sizeof line, "  iters %.0f  rel_res %.1e  %.2fs/step  ETA %s", p.solver_iters, p.rel_residual,
                p.seconds_per_step, format_duration(p.seconds_per_step * static_cast<double>(p.steps - p.step)).c_str());
  log << line << std::endl;
}

// (index in the study's expansion, trial) for the trials this run covers: --only, then --shard.
std::vector<std::pair<std::int64_t, const TrialConfig*>> selected_trials(const Study& study, const RunOptions& options) {
  if (!options.only_variant.empty() &&
      std::find(study.variants.begin(), study.variants.end(), options.only_variant) == study.variants.end()) {
    std::string known;
    for (const auto& v : study.variants) known += (known.empty() ? "" : ", ") + v;
    throw Error("--only " + options.only_variant + ": study '" + study.name + "' has no such variant (variants: " +
                known + ")");
  }
  std::vector<std::pair<std::int64_t, const TrialConfig*>> out;
  for (std::size_t i = 0; i < study.trials.size(); ++i) {
    const auto& trial = study.trials[i];
    if (!options.only_variant.empty() && trial.variant != options.only_variant) continue;
    if (options.shard_count > 0 && static_cast<int>(i % static_cast<std::size_t>(options.shard_count)) != options.shard_index - 1)
      continue;
    out.emplace_back(static_cast<std::int64_t>(i), &trial);
  }
  return out;
}

// Where a trial's checkpoint lives: beside the results file, one per configuration,
// results/x.sqlite.checkpoints/<config hash>.pt (the trainer writes it every [train]
// checkpoint_every steps; PATH.trainer beside it holds the trainer's counters).
// (The hash stored in the trial row: the configuration as resolved from the study file, before
// a --device override.)
std::string checkpoint_path_for(const std::string& results, const std::string& config_hash) {
  return results + ".checkpoints/" + config_hash + ".pt";
}

struct Slot;
// Where this run's checkpoints go, or that it writes none ([train] checkpoint_every).
std::string checkpoint_line(const std::vector<Slot>& slots, const std::string& results);

void remove_checkpoint(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove(path, ec);
  std::filesystem::remove(path + ".trainer", ec);
}

// Trains a trial already claimed (running) in `db` and records how it ended. The metric sink is
// where a requested stop takes effect: the rows so far are flushed and the trial goes back to
// pending. Returns false when interrupted.
bool train_claimed(ResultsDb& db, std::int64_t id, const TrialConfig& trial, PluginRegistry& registry,
                   std::ostream& log, const std::string& prefix) {
  log << prefix << " start" << std::endl;
  MetricSink sink;
  sink.metric = [&](std::int64_t step, const std::string& name, double value) {
    if (g_stop) throw TrialInterrupted{};
    db.add_metric(id, step, name, value);
  };
  sink.trace = [&](const TracePoint& point) { db.add_trace(id, point); };
  sink.point = [&](const ProbePoint& point) { db.add_point(id, point); };
  sink.flush = [&] { db.flush(); };

  const Stopwatch watch;
  TrainResult result;
  try {
    // [train] checkpoint_every > 0: the trial's checkpoint beside the results file (mhd generate reads it).
    TrainOptions train_options;
    const auto row = db.trial(id);
    train_options.checkpoint_path = checkpoint_path_for(db.path(), row ? row->config_hash : trial.hash());
    train_options.resume = true;  // only when the file exists: run_study removed stale ones
    train_options.after_training = [&](const TrainedModel& trained) {
      run_probes(trial, registry, trained.model, trained.task, trained.device, trained.sink, trained.step);
    };
    if (trial.train.integer("checkpoint_every") > 0)
      std::filesystem::create_directories(std::filesystem::path(train_options.checkpoint_path).parent_path());
    result = train_trial(trial, registry, sink, [&](const TrainProgress& p) { print_progress(log, prefix, p); },
                         train_options);
  } catch (const TrialInterrupted&) {
    db.flush();
    db.release_trial(id);
    log << prefix << " interrupted after " << format_duration(watch.seconds()) << std::endl;
    return false;
  } catch (const ResultsFileFull&) {
    throw;  // not the trial's failure: the study stops (run_study)
  } catch (const std::exception& e) {
    result.status = TrialStatus::Failed;
    result.error = e.what();
  }
  const double wall = watch.seconds();
  db.flush();
  db.set_param_count(id, result.parameter_count);
  db.finish_trial(id, result.status, result.error, wall);
  log << prefix << " " << to_string(result.status) << " in " << format_duration(wall);
  if (!result.error.empty()) log << ": " << result.error;
  else if (const auto learned = learning_summary(result); !learned.empty()) log << ": " << learned;
  log << std::endl;
  return true;
}

// "SIGSEGV (Segmentation fault)"
std::string describe_signal(int sig) {
  static const std::map<int, const char*> names = {
      {SIGSEGV, "SIGSEGV"}, {SIGABRT, "SIGABRT"}, {SIGBUS, "SIGBUS"},   {SIGFPE, "SIGFPE"}, {SIGILL, "SIGILL"},
      {SIGKILL, "SIGKILL"}, {SIGTERM, "SIGTERM"}, {SIGINT, "SIGINT"},   {SIGPIPE, "SIGPIPE"}};
  const auto it = names.find(sig);
  const std::string name = it != names.end() ? it->second : "signal " + std::to_string(sig);
  return name + " (" + strsignal(sig) + ")";
}

// One trial running in a child process, its stdout and stderr read line by line.
struct Worker {
  pid_t pid = -1;
  int out_fd = -1, err_fd = -1;
  std::string out_buf, err_buf;
  std::deque<std::string> err_tail;  // the last stderr lines, for a crash report
  std::int64_t trial_id = 0;
  std::string prefix;
  Stopwatch watch;  // since the process started
  bool sent_stop = false;
};

constexpr std::size_t kErrTailLines = 6;

Worker spawn_worker(const std::string& exe, const std::vector<std::string>& args) {
  const ChildProcess child = spawn_process(exe, args, /*capture_output=*/true);
  Worker w;
  w.pid = child.pid;
  w.out_fd = child.out_fd;
  w.err_fd = child.err_fd;
  return w;
}

// Reads what is available on fd into buf and hands out complete lines; closes fd at EOF.
template <typename OnLine>
void drain(int& fd, std::string& buf, OnLine&& on_line) {
  char chunk[4096];
  const ssize_t n = read(fd, chunk, sizeof chunk);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n <= 0) {
    if (!buf.empty()) on_line(buf);
    buf.clear();
    close(fd);
    fd = -1;
    return;
  }
  buf.append(chunk, static_cast<std::size_t>(n));
  for (std::size_t pos; (pos = buf.find('\n')) != std::string::npos;) {
    on_line(buf.substr(0, pos));
    buf.erase(0, pos + 1);
  }
}

struct Slot {
  std::int64_t id;
  TrialConfig trial;
  std::string prefix;
};

std::string checkpoint_line(const std::vector<Slot>& slots, const std::string& results) {
  std::int64_t with = 0;
  for (const auto& slot : slots) with += slot.trial.train.integer("checkpoint_every") > 0 ? 1 : 0;
  if (with == 0) return "checkpoints: none ([train] checkpoint_every = 0)";
  return "checkpoints: " + std::to_string(with) + " of " + std::to_string(slots.size()) + " trial(s) -> " +
         checkpoint_path_for(results, "<config hash>") + " (mhd generate reads them)";
}

// Runs `slots` in child processes, at most `jobs` at once; returns false when interrupted.
bool run_isolated(ResultsDb& db, const std::vector<Slot>& slots, const RunOptions& options, std::int64_t threads,
                  const std::vector<std::string>& plugin_path, const std::string& output, std::ostream& log) {
  std::size_t next = 0;
  std::vector<Worker> running;
  bool interrupted = false;
  bool results_full = false;  // a worker found the results file full: start no more trials
  while (true) {
    while (!g_stop && !results_full && running.size() < static_cast<std::size_t>(std::max(1, options.jobs)) && next < slots.size()) {
      const Slot& slot = slots[next++];
      if (!db.claim_trial(slot.id, threads)) {
        log << slot.prefix << " skipped: another runner has it or it finished" << std::endl;
        continue;
      }
      std::vector<std::string> args = {"run-trial", "--results", output, "--trial-id", std::to_string(slot.id),
                                       "--threads", std::to_string(threads), "--prefix", slot.prefix};
      if (!options.device.empty()) args.insert(args.end(), {"--device", options.device});
      for (const auto& dir : plugin_path) args.insert(args.end(), {"--plugin-path", dir});
      Worker w = spawn_worker(options.worker_executable, args);
      w.trial_id = slot.id;
      w.prefix = slot.prefix;
      running.push_back(std::move(w));
    }
    if (running.empty()) break;
    if (g_stop) {
      interrupted = true;
      for (auto& w : running) {
        if (!w.sent_stop) kill(w.pid, SIGINT);  // flush, back to pending, exit 130
        w.sent_stop = true;
      }
    }

    std::vector<pollfd> fds;
    for (const auto& w : running) {
      if (w.out_fd >= 0) fds.push_back({w.out_fd, POLLIN, 0});
      if (w.err_fd >= 0) fds.push_back({w.err_fd, POLLIN, 0});
    }
    if (poll(fds.data(), fds.size(), fds.empty() ? 0 : 500) < 0 && errno != EINTR)
      throw Error(std::string("poll failed: ") + std::strerror(errno));
    for (auto& w : running) {
      for (const auto& p : fds) {
        if (!(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
        if (p.fd == w.out_fd) drain(w.out_fd, w.out_buf, [&](const std::string& line) { log << line << std::endl; });
        else if (p.fd == w.err_fd)
          drain(w.err_fd, w.err_buf, [&](const std::string& line) {
            log << w.prefix << " stderr: " << line << std::endl;
            w.err_tail.push_back(line);
            if (w.err_tail.size() > kErrTailLines) w.err_tail.pop_front();
          });
      }
    }

    // Workers whose output has ended: collect the exit status and make sure the trial row says
    // how the trial ended (a crashed worker could not).
    for (auto it = running.begin(); it != running.end();) {
      if (it->out_fd >= 0 || it->err_fd >= 0) {
        ++it;
        continue;
      }
      int status = 0;
      while (waitpid(it->pid, &status, 0) < 0 && errno == EINTR) {
      }
      const auto row = db.trial(it->trial_id);
      const bool by_sigint = (WIFEXITED(status) && WEXITSTATUS(status) == 130) ||
                             (WIFSIGNALED(status) && WTERMSIG(status) == SIGINT);
      if (WIFEXITED(status) && WEXITSTATUS(status) == kWorkerExitResultsFull) {
        results_full = true;  // the trial stays running: --resume restarts it
      } else if (row && row->status == TrialStatus::Running) {
        if (g_stop && by_sigint) {
          db.release_trial(it->trial_id);
        } else {
          std::string error = WIFSIGNALED(status) ? "crashed: " + describe_signal(WTERMSIG(status))
                                                  : "trial process exited with code " +
                                                        std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1);
          if (!it->err_tail.empty()) {
            error += "; last stderr:";
            for (const auto& line : it->err_tail) error += " " + line;
          }
          const double wall = it->watch.seconds();
          db.finish_trial(it->trial_id, TrialStatus::Failed, error, wall);
          log << it->prefix << " failed in " << format_duration(wall) << ": " << error << std::endl;
        }
      }
      it = running.erase(it);
    }
  }
  if (results_full) throw ResultsFileFull(output);
  return !interrupted && !g_stop;
}

}  // namespace

void install_stop_on_sigint() {
  struct sigaction action {};
  action.sa_handler = on_sigint;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART: poll() returns at once
  sigaction(SIGINT, &action, nullptr);
}

void request_stop() { g_stop = 1; }
bool stop_requested() { return g_stop != 0; }

std::pair<int, int> parse_shard(const std::string& text) {
  const auto slash = text.find('/');
  int index = 0, count = 0;
  try {
    std::size_t used_i = 0, used_n = 0;
    if (slash == std::string::npos) throw std::invalid_argument("no slash");
    index = std::stoi(text.substr(0, slash), &used_i);
    count = std::stoi(text.substr(slash + 1), &used_n);
    if (used_i != slash || used_n != text.size() - slash - 1) throw std::invalid_argument("trailing text");
  } catch (const std::exception&) {
    throw Error("--shard " + text + ": expected I/N with 1 <= I <= N, e.g. 1/4");
  }
  if (count < 1 || index < 1 || index > count)
    throw Error("--shard " + text + ": expected I/N with 1 <= I <= N (shards are numbered from 1), e.g. 1/4");
  return {index, count};
}

std::string shard_output_path(const std::string& output, int index, int count) {
  std::filesystem::path p(output);
  const std::string suffix = ".shard" + std::to_string(index) + "-of-" + std::to_string(count);
  return (p.parent_path() / (p.stem().string() + suffix + p.extension().string())).string();
}

RunSummary run_study(const Study& study, PluginRegistry& registry, const RunOptions& options, std::ostream& log) {
  if (options.jobs < 1) throw Error("--jobs " + std::to_string(options.jobs) + ": expected 1 or more");
  if (options.jobs > 1 && options.worker_executable.empty())
    throw Error("--jobs > 1 runs trials in child processes; RunOptions.worker_executable is not set");
  RunSummary summary;
  summary.output = options.output.empty() ? study.output : options.output;
  const std::string shard = options.shard_count > 0
                                ? std::to_string(options.shard_index) + "/" + std::to_string(options.shard_count)
                                : std::string();
  if (options.shard_count > 0 && (options.shard_index < 1 || options.shard_index > options.shard_count))
    throw Error("--shard " + shard + ": expected I/N with 1 <= I <= N");
  const auto trials = selected_trials(study, options);

  auto db = ResultsDb::open(summary.output);
  const std::string device = options.device.empty() ? study.trials.front().run.text("device") : options.device;
  // Cores split between the jobs: N x threads <= cores. threads = 0 in the study means every core
  // (LibTorch's own default can be lower, 1 on some VMs); an explicit count is capped by the share.
  const std::int64_t cores = std::max<std::int64_t>(1, std::thread::hardware_concurrency());
  const std::int64_t share = std::max<std::int64_t>(1, cores / options.jobs);
  const std::int64_t wanted = study.trials.front().run.integer("threads");
  const std::int64_t threads = wanted > 0 ? (options.jobs > 1 ? std::min(wanted, share) : wanted) : share;
  if (options.worker_executable.empty()) at::set_num_threads(static_cast<int>(threads));
  // The device the trials get: "auto" recorded as what it resolves to here.
  const std::string resolved = device == "auto" ? (torch::cuda::is_available() ? "cuda" : "cpu") : device;
  RunEnvironment env = current_environment(resolved, threads);
  env.jobs = options.jobs;

  // One study row per study and shard: --resume continues it, otherwise a new row is started.
  const auto previous = db->find_study(study.name, shard);
  Reconciliation plan;
  if (options.resume && previous) {
    summary.study_id = previous->id;
    db->resume_study(summary.study_id, study, env);
    plan = db->reconcile_trials(summary.study_id, trials, static_cast<std::int64_t>(study.trials.size()));
    log << "resuming study '" << study.name << "' (id " << summary.study_id << ") in " << summary.output << ": "
        << plan.kept.size() << " finished trial(s) kept, " << plan.restarted.size() << " restarted, "
        << plan.changed.size() << " re-run because their configuration changed, " << plan.added.size() << " added"
        << (plan.removed.empty() ? "" : ", " + std::to_string(plan.removed.size()) + " removed") << std::endl;
    for (const auto& label : plan.changed) log << "  configuration changed: " << label << std::endl;
    for (const auto& label : plan.removed) log << "  no longer in the study (rows deleted): " << label << std::endl;
  } else {
    if (options.resume) log << "nothing to resume: " << summary.output << " holds no study '" << study.name << "'"
                            << (shard.empty() ? "" : " shard " + shard) << "; starting it" << std::endl;
    else if (previous)
      log << "note: " << summary.output << " already holds study '" << study.name
          << "'; starting a new study row (mhd run --resume continues the last one)" << std::endl;
    summary.study_id = db->begin_study(study, env, shard);
    plan = db->reconcile_trials(summary.study_id, trials, -1);
  }
  summary.kept = static_cast<int>(plan.kept.size());
  summary.changed = static_cast<int>(plan.changed.size());
  summary.removed = static_cast<int>(plan.removed.size());

  // The trials to run: pending ones. An interrupted or failed trial continues from its checkpoint
  // when one exists (its rows after the checkpoint's step deleted: the trainer writes them again),
  // otherwise starts over (its rows deleted). A trial that never started must not pick up a
  // checkpoint left by an earlier study row of the same configuration.
  std::vector<Slot> slots;
  for (std::size_t i = 0; i < trials.size(); ++i) {
    const std::int64_t id = plan.trial_ids[i];
    const auto row = db->trial(id);
    if (!row || row->status != TrialStatus::Pending) continue;
    const std::string checkpoint = checkpoint_path_for(summary.output, row->config_hash);
    std::error_code ec;
    if (!row->started_at.empty() && std::filesystem::exists(checkpoint, ec)) {
      const CheckpointInfo info = read_checkpoint_info(checkpoint);
      db->truncate_trial(id, info.step);
      log << "  " << trials[i].second->label() << ": continues from its checkpoint at step " << info.step << std::endl;
    } else {
      if (!row->started_at.empty()) db->reset_trial(id);
      remove_checkpoint(checkpoint);
    }
    Slot slot{id, *trials[i].second, ""};
    if (!options.device.empty()) slot.trial.run.set("device", options.device);
    slot.prefix = "[" + std::to_string(trials[i].first + 1) + "/" + std::to_string(study.trials.size()) + " " +
                  slot.trial.label() + "]";
    slots.push_back(std::move(slot));
  }

  log << runtime_summary(resolved, static_cast<int>(threads));
  if (const auto warning = reference_blas_warning(); !warning.empty()) log << warning << "\n";
  log << "study '" << study.name << "'" << (shard.empty() ? "" : " shard " + shard) << ": " << trials.size()
      << " trial(s), " << slots.size() << " to run"
      << (options.worker_executable.empty() ? "" : ", " + std::to_string(options.jobs) + " at a time") << ", "
      << threads << " thread(s) each -> " << summary.output << std::endl;
  log << checkpoint_line(slots, summary.output) << std::endl;

  bool complete = true;
  if (options.worker_executable.empty()) {
    for (const auto& slot : slots) {
      if (g_stop) {
        complete = false;
        break;
      }
      if (!db->claim_trial(slot.id, threads)) continue;
      if (!train_claimed(*db, slot.id, slot.trial, registry, log, slot.prefix)) complete = false;
    }
  } else {
    std::vector<std::string> plugin_path;
    for (const auto& dir : study.plugin_path) plugin_path.push_back(std::filesystem::absolute(dir).string());
    complete = run_isolated(*db, slots, options, threads, plugin_path, summary.output, log);
  }

  int unfinished = 0;
  for (const auto id : plan.trial_ids) {
    const auto row = db->trial(id);
    if (!row) continue;
    switch (row->status) {
      case TrialStatus::Done: ++summary.done; break;
      case TrialStatus::Diverged: ++summary.diverged; break;
      case TrialStatus::Failed: ++summary.failed; break;
      default: ++unfinished; break;
    }
  }
  if (!complete || g_stop) {
    summary.interrupted = true;
    db->flush();
    log << "interrupted: " << summary.done << " done, " << summary.failed << " failed, " << summary.diverged
        << " diverged, " << unfinished << " not finished (kept as pending in " << summary.output << ")" << std::endl;
    return summary;
  }
  db->finish_study(summary.study_id);

  ReportOptions report;
  report.study_id = summary.study_id;
  log << "\n" << format_report(*db, report);
  log << trials.size() << " trial(s): " << summary.done << " done, " << summary.failed << " failed, "
      << summary.diverged << " diverged";
  if (summary.kept > 0) log << " (" << summary.kept << " kept from the earlier run)";
  if (summary.changed > 0) log << "; " << summary.changed << " trial(s) re-run because their configuration changed";
  log << ". Results: " << summary.output << " (mhd report " << summary.output << ")" << std::endl;
  return summary;
}

int run_trial_worker(const WorkerArgs& args, PluginRegistry& registry, std::ostream& log) {
  install_stop_on_sigint();
  at::set_num_threads(static_cast<int>(std::max<std::int64_t>(1, args.threads)));
  auto db = ResultsDb::open(args.results);
  const auto row = db->trial(args.trial_id);
  if (!row) throw Error(args.results + ": no trial with id " + std::to_string(args.trial_id));
  if (row->status != TrialStatus::Running)
    throw Error(args.results + ": trial " + std::to_string(args.trial_id) + " is " + to_string(row->status) +
                ", not claimed (running); mhd run starts trial processes itself");
  TrialConfig trial = TrialConfig::from_json(row->config_json);
  if (!args.device.empty()) trial.run.set("device", args.device);
  try {
    return train_claimed(*db, args.trial_id, trial, registry, log, args.prefix) ? 0 : 130;
  } catch (const ResultsFileFull& e) {
    std::cerr << e.what() << std::endl;
    return kWorkerExitResultsFull;
  }
}

std::vector<std::string> write_slurm_scripts(const Study& study, const SlurmOptions& options) {
  namespace fs = std::filesystem;
  if (options.shards < 1) throw Error("--shards " + std::to_string(options.shards) + ": expected 1 or more");
  const fs::path dir = fs::absolute(options.out_dir);
  fs::create_directories(dir);
  const std::string study_path = fs::absolute(options.study_path).string();
  const std::string mhd = fs::absolute(options.mhd_executable).string();
  const std::string merged = options.output.empty() ? (dir / (study.name + ".sqlite")).string()
                                                     : fs::absolute(options.output).string();
  const std::string n = std::to_string(options.shards);
  const std::string shard_file = (dir / (study.name + ".shard")).string();  // + ${I}-of-N.sqlite
  auto header = [&](const std::string& job, const std::string& log_name) {
    std::string h = "#!/bin/bash\n# Written by `mhd slurm` for study '" + study.name + "' (" + study_path + ").\n";
    h += "#SBATCH --job-name=" + job + "\n#SBATCH --output=" + (dir / log_name).string() + "\n";
    if (!options.partition.empty()) h += "#SBATCH --partition=" + options.partition + "\n";
    if (!options.time.empty()) h += "#SBATCH --time=" + options.time + "\n";
    return h;
  };
  const fs::path shards_path = dir / (study.name + ".shards.sbatch");
  const fs::path merge_path = dir / (study.name + ".merge.sbatch");
  const fs::path submit_path = dir / (study.name + ".submit.sh");
  {
    std::ofstream f(shards_path);
    f << header(study.name + "-shard", study.name + ".shard%a.log") << "#SBATCH --array=1-" << n << "\n"
      << "#SBATCH --cpus-per-task=1\n"
      << "set -euo pipefail\n"
      << "# Each array task runs one shard of the trials (index % " << n << " == task - 1) into its own file;\n"
      << "# --resume continues it if the task was requeued or re-submitted.\n"
      << "'" << mhd << "' run '" << study_path << "' --shard \"${SLURM_ARRAY_TASK_ID}/" << n << "\" --resume \\\n"
      << "  --jobs 1 --out '" << shard_file << "'\"${SLURM_ARRAY_TASK_ID}-of-" << n << ".sqlite\"\n";
  }
  {
    std::ofstream f(merge_path);
    f << header(study.name + "-merge", study.name + ".merge.log") << "set -euo pipefail\n"
      << "rm -f '" << merged << "'\n"
      << "'" << mhd << "' merge '" << merged << "'";
    for (int i = 1; i <= options.shards; ++i) f << " \\\n  '" << shard_file << i << "-of-" << n << ".sqlite'";
    f << "\n'" << mhd << "' report '" << merged << "'\n";
  }
  {
    std::ofstream f(submit_path);
    f << "#!/bin/bash\n# Submits the " << n << " shards of study '" << study.name
      << "' as a job array, then the merge once every shard succeeded.\nset -euo pipefail\n"
      << "array=$(sbatch --parsable '" << shards_path.string() << "')\n"
      << "sbatch --dependency=afterok:\"${array%%;*}\" '" << merge_path.string() << "'\n"
      << "echo \"submitted shards (job ${array}) and the merge; results: " << merged << "\"\n";
  }
  fs::permissions(submit_path, fs::perms::owner_exec | fs::perms::group_exec | fs::perms::others_exec,
                  fs::perm_options::add);
  return {shards_path.string(), merge_path.string(), submit_path.string()};
}

}  // namespace mhd
