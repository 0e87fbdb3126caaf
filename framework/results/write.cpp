// Writing the results file: study and trial rows, trial state changes, buffered metrics, traces
// and probe points (results.h).
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

std::int64_t ResultsDb::begin_study(const Study& study, const RunEnvironment& env, const std::string& shard) {
  impl_->require_writable();
  Transaction tx(impl_->db, path_);
  Statement s(impl_->db, path_,
              "INSERT INTO studies(name, description, toml, started_at, git_revision, torch_version, host, device, "
              "threads, interop_threads, jobs, shard, expansion_hash, blas, cpu_features) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  s.bind(1, study.name)
      .bind(2, study.description)
      .bind(3, study.toml_text)
      .bind(4, utc_now())
      .bind(5, env.git_revision)
      .bind(6, env.torch_version)
      .bind(7, env.host)
      .bind(8, env.device)
      .bind(9, env.threads)
      .bind(10, env.interop_threads)
      .bind(11, env.jobs)
      .bind(12, shard)
      .bind(13, expansion_hash(study))
      .bind(14, env.blas)
      .bind(15, env.cpu_features)
      .run();
  const std::int64_t id = sqlite3_last_insert_rowid(impl_->db);
  tx.commit();
  return id;
}

std::optional<StudyRow> ResultsDb::find_study(const std::string& name, const std::string& shard) const {
  Statement s(impl_->db, path_, (impl_->study_select() + " WHERE name = ? AND " +
                                 (impl_->has_added_columns ? "shard" : "''") + " = ? ORDER BY id DESC LIMIT 1")
                                    .c_str());
  s.bind(1, name).bind(2, shard);
  if (!s.step()) return std::nullopt;
  return read_study_row(s);
}

void ResultsDb::resume_study(std::int64_t study_id, const Study& study, const RunEnvironment& env) {
  impl_->require_writable();
  Transaction tx(impl_->db, path_);
  Statement s(impl_->db, path_,
              "UPDATE studies SET description = ?, toml = ?, finished_at = NULL, git_revision = ?, torch_version = ?, "
              "host = ?, device = ?, threads = ?, interop_threads = ?, jobs = ?, expansion_hash = ?, blas = ?, "
              "cpu_features = ? WHERE id = ?");
  s.bind(1, study.description)
      .bind(2, study.toml_text)
      .bind(3, env.git_revision)
      .bind(4, env.torch_version)
      .bind(5, env.host)
      .bind(6, env.device)
      .bind(7, env.threads)
      .bind(8, env.interop_threads)
      .bind(9, env.jobs)
      .bind(10, expansion_hash(study))
      .bind(11, env.blas)
      .bind(12, env.cpu_features)
      .bind(13, study_id)
      .run();
  if (sqlite3_changes(impl_->db) == 0) throw Error(path_ + ": no study with id " + std::to_string(study_id));
  tx.commit();
}

void ResultsDb::finish_study(std::int64_t study_id) {
  impl_->require_writable();
  impl_->flush();
  Transaction tx(impl_->db, path_);
  Statement s(impl_->db, path_, "UPDATE studies SET finished_at = ? WHERE id = ?");
  s.bind(1, utc_now()).bind(2, study_id).run();
  if (sqlite3_changes(impl_->db) == 0) throw Error(path_ + ": no study with id " + std::to_string(study_id));
  tx.commit();
}

std::int64_t ResultsDb::add_trial(std::int64_t study_id, std::int64_t index, const TrialConfig& config) {
  impl_->require_writable();
  Transaction tx(impl_->db, path_);
  Statement s(impl_->db, path_,
              "INSERT INTO trials(study_id, idx, variant, sweep, sweep_json, seed, config_json, config_hash) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
  s.bind(1, study_id)
      .bind(2, index)
      .bind(3, config.variant)
      .bind(4, config.sweep_label())
      .bind(5, config.sweep_json())
      .bind(6, config.seed)
      .bind(7, config.to_json())
      .bind(8, config.hash())
      .run();
  const std::int64_t id = sqlite3_last_insert_rowid(impl_->db);
  tx.commit();
  return id;
}

void ResultsDb::mark_running(std::int64_t trial_id) {
  impl_->require_writable();
  Transaction tx(impl_->db, path_);
  Statement s(impl_->db, path_,
              "UPDATE trials SET status = 'running', started_at = ?, finished_at = NULL, error = '' "
              "WHERE id = ? AND status IN ('pending', 'running')");
  s.bind(1, utc_now()).bind(2, trial_id).run();
  if (sqlite3_changes(impl_->db) == 0) {
    throw Error(path_ + ": trial " + std::to_string(trial_id) +
                " does not exist or has finished (reset_trial() it before running it again)");
  }
  tx.commit();
}

void ResultsDb::finish_trial(std::int64_t trial_id, TrialStatus status, const std::string& error, double wall_s) {
  impl_->require_writable();
  if (status == TrialStatus::Pending || status == TrialStatus::Running) {
    throw Error(std::string("finish_trial: status must be done, failed or diverged, got ") + to_string(status));
  }
  impl_->flush();  // the trial's last metrics belong with its final status
  Transaction tx(impl_->db, path_);
  Statement s(impl_->db, path_,
              "UPDATE trials SET status = ?, error = ?, wall_s = ?, finished_at = ? WHERE id = ?");
  s.bind(1, to_string(status)).bind(2, error).bind(3, wall_s).bind(4, utc_now()).bind(5, trial_id).run();
  if (sqlite3_changes(impl_->db) == 0) throw Error(path_ + ": no trial with id " + std::to_string(trial_id));
  tx.commit();
}

bool ResultsDb::claim_trial(std::int64_t trial_id, std::int64_t threads) {
  impl_->require_writable();
  Transaction tx(impl_->db, path_);
  Statement s(impl_->db, path_,
              "UPDATE trials SET status = 'running', started_at = ?, finished_at = NULL, error = '', threads = ? "
              "WHERE id = ? AND status = 'pending'");
  s.bind(1, utc_now()).bind(2, threads).bind(3, trial_id).run();
  const bool claimed = sqlite3_changes(impl_->db) > 0;
  tx.commit();
  return claimed;
}

void ResultsDb::release_trial(std::int64_t trial_id) {
  impl_->require_writable();
  impl_->flush();
  Transaction tx(impl_->db, path_);
  Statement s(impl_->db, path_, "UPDATE trials SET status = 'pending' WHERE id = ? AND status = 'running'");
  s.bind(1, trial_id).run();
  tx.commit();
}

void ResultsDb::truncate_trial(std::int64_t trial_id, std::int64_t step) {
  impl_->require_writable();
  impl_->flush();
  Transaction tx(impl_->db, path_);
  impl_->delete_trial_rows(trial_id, step);
  tx.commit();
}

void ResultsDb::set_param_count(std::int64_t trial_id, std::int64_t count) {
  impl_->require_writable();
  Transaction tx(impl_->db, path_);
  Statement s(impl_->db, path_, "UPDATE trials SET param_count = ? WHERE id = ?");
  s.bind(1, count).bind(2, trial_id).run();
  if (sqlite3_changes(impl_->db) == 0) throw Error(path_ + ": no trial with id " + std::to_string(trial_id));
  tx.commit();
}

void ResultsDb::add_metric(std::int64_t trial_id, std::int64_t step, const std::string& name, double value) {
  impl_->require_writable();
  impl_->metrics.push_back({trial_id, step, name, value});
  if (impl_->buffered() >= kFlushThreshold) impl_->flush();
}

void ResultsDb::add_trace(std::int64_t trial_id, const TracePoint& point) {
  impl_->require_writable();
  impl_->traces.push_back({trial_id, point});
  if (impl_->buffered() >= kFlushThreshold) impl_->flush();
}

void ResultsDb::add_point(std::int64_t trial_id, const ProbePoint& point) {
  impl_->require_writable();
  impl_->points.emplace_back(trial_id, point);
  if (impl_->buffered() >= kFlushThreshold) impl_->flush();
}

void ResultsDb::flush() {
  if (!impl_->read_only) impl_->flush();
}

std::size_t ResultsDb::buffered_rows() const { return impl_->buffered(); }

// Reads see everything added so far: pending rows are flushed first, so a writer can read back
// what it wrote without remembering to flush.

}  // namespace mhd
