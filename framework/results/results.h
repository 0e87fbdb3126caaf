// The results file (docs/design.md §6): one SQLite database, WAL mode, written in transactions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mhd/error.h"
#include "train/records.h"

namespace mhd {

struct Study;
struct TrialConfig;

// The results file could not grow (SQLite's SQLITE_FULL: the disk, or the file's page limit, is
// full). Not a trial's failure: `mhd run` stops the study with this one line, and `mhd run
// --resume` continues it once there is space (docs/studies.md, "Running studies you can trust").
class ResultsFileFull : public Error {
 public:
  explicit ResultsFileFull(const std::string& path)
      : Error(path + ": disk full: free space, then mhd run --resume") {}
};

// For tests: a results file opened for writing may hold at most this many pages when the
// environment variable is set (PRAGMA max_page_count), so a test can fill it without a small disk.
inline constexpr const char* kMaxPagesEnv = "MHD_RESULTS_MAX_PAGES";

// What the study row records about the run environment.
struct RunEnvironment {
  std::string git_revision;
  std::string torch_version;
  std::string host;
  std::string device;
  std::int64_t threads = 0;          // intra-op threads of each trial
  std::int64_t interop_threads = 0;  // LibTorch inter-op pool of each trial
  std::int64_t jobs = 1;             // trials run in parallel (mhd run --jobs)
  std::string blas;                  // the BLAS LibTorch calls (runtime.h)
  std::string cpu_features;          // SIMD features the fused kernels can use
};
// Fills git revision, LibTorch version, host and the inter-op thread count; jobs = 1.
RunEnvironment current_environment(const std::string& device, std::int64_t threads);

struct StudyRow {
  std::int64_t id = 0;
  std::string name, description, toml, started_at, finished_at, git_revision, torch_version, host, device;
  std::int64_t threads = 0;
  std::int64_t interop_threads = 0, jobs = 1;
  std::string shard;           // "I/N" for `mhd run --shard I/N`, "" for the whole study
  std::string expansion_hash;  // digest of every trial's (index, config hash): equal studies expand equally
  std::string blas, cpu_features;  // what the run ran on (runtime.h); '' in files from before they were kept
};

struct TrialRow {
  std::int64_t id = 0;
  std::int64_t study_id = 0;
  std::int64_t index = 0;  // position in the study's expansion
  std::string variant;
  std::string sweep;        // TrialConfig::sweep_label()
  std::string sweep_json;   // {"memory.size": 1024}
  std::int64_t seed = 0;
  std::string config_json;
  std::string config_hash;
  TrialStatus status = TrialStatus::Pending;
  std::string error;
  std::int64_t param_count = 0;
  std::string started_at, finished_at;
  double wall_s = 0.0;
  std::int64_t threads = 0;         // intra-op threads it ran with (0: not recorded)
  std::int64_t config_changes = 0;  // times `mhd run --resume` re-ran it because its configuration changed
};

// What ResultsDb::reconcile_trials did with a resumed study's trials.
struct Reconciliation {
  std::vector<std::int64_t> trial_ids;  // parallel to the trials given
  std::vector<std::string> kept;        // labels: finished before, unchanged (not re-run)
  std::vector<std::string> restarted;   // unchanged but unfinished (pending, running or failed)
  std::vector<std::string> changed;     // configuration changed: reset, to run again
  std::vector<std::string> added;       // new in the study file
  std::vector<std::string> removed;     // no longer in the study file: deleted with their rows
};

struct MetricPoint {
  std::int64_t step = 0;
  double value = 0.0;
};

// What `mhd merge` combined.
struct MergeSummary {
  std::string study;
  std::int64_t trials = 0;
  std::vector<std::string> missing_shards;  // "2/3" for each shard of an I/N split not among the inputs
};

class ResultsDb {
 public:
  // Opens (creating the schema when writable and new). Read-only opening of a file that is not a
  // results file throws mhd::Error saying so. Sets WAL mode and a busy timeout.
  static std::unique_ptr<ResultsDb> open(const std::string& path, bool read_only = false);
  // `mhd merge OUTPUT INPUT...`: the latest study of each input (the shards of one study, from
  // `mhd run --shard I/N`) combined into one study row of `output`, a new results file, with every
  // trial and all its rows (every table with a trial_id: metrics, traces, probe points ...).
  // Throws mhd::Error naming the input when the inputs disagree on the study's name, TOML text or
  // trial expansion, when a trial index comes twice, or when `output` already holds a study.
  static MergeSummary merge(const std::string& output, const std::vector<std::string>& inputs);
  ~ResultsDb();
  ResultsDb(const ResultsDb&) = delete;
  ResultsDb& operator=(const ResultsDb&) = delete;

  const std::string& path() const { return path_; }

  // --- writing -------------------------------------------------------------------------
  // `shard` is "I/N" when the run covers one shard of the trials ("" for all of them).
  std::int64_t begin_study(const Study& study, const RunEnvironment& env, const std::string& shard = "");
  // The newest study row named `name` with that shard, for `mhd run --resume`.
  std::optional<StudyRow> find_study(const std::string& name, const std::string& shard) const;
  // A resumed run: new TOML text, expansion hash and environment, finished_at cleared.
  void resume_study(std::int64_t study_id, const Study& study, const RunEnvironment& env);
  // Matches `trials` (index in the study's expansion, configuration) with the study's rows by
  // index: the same config hash keeps a row (done and diverged ones are not run again; pending,
  // running and failed ones are reset to pending); another hash resets the row to the new
  // configuration (config_changes + 1); a missing row is added. With `all_indices_count` >= 0,
  // rows at an index >= it (trials no longer in the study) are deleted. One transaction.
  Reconciliation reconcile_trials(std::int64_t study_id,
                                  const std::vector<std::pair<std::int64_t, const TrialConfig*>>& trials,
                                  std::int64_t all_indices_count);
  // pending -> running with the thread count; false when the trial is not pending (another runner
  // took it, or it finished).
  bool claim_trial(std::int64_t trial_id, std::int64_t threads);
  // running -> pending, its rows kept (an interrupted trial; resume resets or continues it).
  void release_trial(std::int64_t trial_id);
  // Deletes the trial's metrics, traces and probe points after `step`, and those of step 0 (what a
  // trainer writes again when it starts): for a trial continuing from a checkpoint of that step.
  void truncate_trial(std::int64_t trial_id, std::int64_t step);
  void finish_study(std::int64_t study_id);
  // Adds the trial as pending; returns its id.
  std::int64_t add_trial(std::int64_t study_id, std::int64_t index, const TrialConfig& config);
  void mark_running(std::int64_t trial_id);
  // `status` must be done, failed or diverged; flushes the trial's buffered rows first.
  void finish_trial(std::int64_t trial_id, TrialStatus status, const std::string& error, double wall_s);
  // Back to pending with its metrics, traces and probe points deleted, so `mhd run --resume` can run a failed or
  // interrupted trial again. mark_running() refuses a finished trial that was not reset.
  void reset_trial(std::int64_t trial_id);
  void set_param_count(std::int64_t trial_id, std::int64_t count);
  // Buffered; written by flush() in one transaction.
  void add_metric(std::int64_t trial_id, std::int64_t step, const std::string& name, double value);
  void add_trace(std::int64_t trial_id, const TracePoint& point);
  // A probe's chart point (table probe_points), buffered with metrics and traces.
  void add_point(std::int64_t trial_id, const ProbePoint& point);
  void flush();
  // Rows added but not yet written (metrics + traces + probe points).
  std::size_t buffered_rows() const;

  // --- reading -------------------------------------------------------------------------
  std::optional<StudyRow> latest_study() const;
  std::optional<StudyRow> study(std::int64_t study_id) const;
  std::vector<StudyRow> studies() const;
  std::vector<TrialRow> trials(std::int64_t study_id) const;
  std::optional<TrialRow> trial(std::int64_t trial_id) const;
  std::vector<std::string> metric_names(std::int64_t study_id) const;
  std::vector<MetricPoint> metric_series(std::int64_t trial_id, const std::string& name) const;
  // The last recorded value of every metric of a trial.
  std::map<std::string, double> final_metrics(std::int64_t trial_id) const;
  // The last k recorded values of every metric of a trial (by step), oldest first.
  std::map<std::string, std::vector<double>> last_metric_values(std::int64_t trial_id, std::int64_t k) const;
  std::vector<TracePoint> traces(std::int64_t trial_id) const;
  // The (probe, name) series a trial's probes stored, sorted; empty for a file without probes.
  std::vector<std::pair<std::string, std::string>> probe_series(std::int64_t trial_id) const;
  // One series' points ordered by (i, j, insertion); x, y, value NaN where stored as NULL.
  std::vector<ProbePoint> probe_points(std::int64_t trial_id, const std::string& probe, const std::string& name) const;
  // Reads see every row added so far (a writable database flushes before reading).

  // --- health --------------------------------------------------------------------------
  std::string journal_mode() const;     // "wal" for files this class wrote
  std::string integrity_check() const;  // "ok" when SQLite finds nothing wrong

 private:
  ResultsDb() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
};

// What `mhd report` calls a trial's final value of a metric (docs/studies.md, "Reading results"):
// a held-out metric (eval_*, val_*, continual_*: measured at evaluations) its value at the last
// evaluation; any other (measured every step) the mean of its last k logged values, so one noisy
// last step does not stand for the trial.
enum class FinalRule { LastEvaluation, MeanOfLastK };
FinalRule final_rule(const std::string& metric);
// A trial's final value of every metric by FinalRule (k: MeanOfLastK's k): what `mhd report`
// tabulates and what the viewer's ablation and scaling charts draw, so figure and table agree.
std::map<std::string, double> rule_final_metrics(const ResultsDb& db, std::int64_t trial_id, std::int64_t k = 10);
// `mhd report`: final metrics (FinalRule) per variant and sweep point, mean +- std over seeds (sample std,
// n-1; 0 for a single seed), from trials whose status is done; failed and diverged trials are
// counted per group. `metrics` empty means: in the text table, the usual headline metrics that
// exist (loss, task_loss, eval_accuracy, solver_iters, rel_residual, energy, step_ms; the first
// few metrics otherwise), with the other names listed below it; in CSV, every metric. An unknown
// name in `metrics` throws mhd::Error listing the known ones. CSV has one row per group and
// metric: variant,sweep,metric,mean,std,n,final (final: last_eval or mean_last_K).
struct ReportOptions {
  std::vector<std::string> metrics;
  bool csv = false;
  std::int64_t last_k = 10;  // FinalRule::MeanOfLastK's k (mhd report --last K)
  std::optional<std::int64_t> study_id;  // default: the latest study in the file
};
std::string format_report(const ResultsDb& db, const ReportOptions& options);

// Mean and sample standard deviation of `values` (std = 0 when fewer than two).
std::pair<double, double> mean_std(const std::vector<double>& values);

}  // namespace mhd
