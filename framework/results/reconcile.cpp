// Resuming a study in the same file: trials reset, kept, re-run or removed (results.h,
// ResultsDb::reconcile_trials).
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

void ResultsDb::reset_trial(std::int64_t trial_id) {
  impl_->require_writable();
  impl_->flush();
  Transaction tx(impl_->db, path_);
  impl_->delete_trial_rows(trial_id);  // metrics, traces, probe points: every table with a trial_id
  Statement s(impl_->db, path_,
              "UPDATE trials SET status = 'pending', error = '', param_count = 0, started_at = NULL, "
              "finished_at = NULL, wall_s = 0 WHERE id = ?");
  s.bind(1, trial_id).run();
  if (sqlite3_changes(impl_->db) == 0) throw Error(path_ + ": no trial with id " + std::to_string(trial_id));
  tx.commit();
}

Reconciliation ResultsDb::reconcile_trials(std::int64_t study_id,
                                           const std::vector<std::pair<std::int64_t, const TrialConfig*>>& trials,
                                           std::int64_t all_indices_count) {
  impl_->require_writable();
  impl_->flush();
  Reconciliation out;
  Transaction tx(impl_->db, path_);
  std::map<std::int64_t, TrialRow> existing;
  {
    Statement s(impl_->db, path_, (impl_->trial_select() + " WHERE study_id = ?").c_str());
    s.bind(1, study_id);
    while (s.step()) {
      TrialRow r = read_trial_row(s);
      existing.emplace(r.index, std::move(r));
    }
  }
  auto to_pending = [&](std::int64_t id, bool changed) {
    impl_->delete_trial_rows(id);
    const std::string sql = std::string(
                                "UPDATE trials SET status = 'pending', error = '', param_count = 0, started_at = NULL, "
                                "finished_at = NULL, wall_s = 0, threads = 0") +
                            (changed ? ", config_changes = config_changes + 1" : "") + " WHERE id = ?";
    Statement s(impl_->db, path_, sql.c_str());
    s.bind(1, id).run();
  };
  for (const auto& [index, config] : trials) {
    const auto found = existing.find(index);
    if (found == existing.end()) {
      Statement s(impl_->db, path_,
                  "INSERT INTO trials(study_id, idx, variant, sweep, sweep_json, seed, config_json, config_hash) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
      s.bind(1, study_id).bind(2, index).bind(3, config->variant).bind(4, config->sweep_label());
      s.bind(5, config->sweep_json()).bind(6, config->seed).bind(7, config->to_json()).bind(8, config->hash()).run();
      out.trial_ids.push_back(sqlite3_last_insert_rowid(impl_->db));
      out.added.push_back(config->label());
      continue;
    }
    const TrialRow& row = found->second;
    out.trial_ids.push_back(row.id);
    if (row.config_hash != config->hash()) {
      to_pending(row.id, /*changed=*/true);
      Statement s(impl_->db, path_,
                  "UPDATE trials SET variant = ?, sweep = ?, sweep_json = ?, seed = ?, config_json = ?, config_hash = ? "
                  "WHERE id = ?");
      s.bind(1, config->variant).bind(2, config->sweep_label()).bind(3, config->sweep_json()).bind(4, config->seed);
      s.bind(5, config->to_json()).bind(6, config->hash()).bind(7, row.id).run();
      out.changed.push_back(config->label());
    } else if (row.status == TrialStatus::Done || row.status == TrialStatus::Diverged) {
      out.kept.push_back(config->label());
    } else if (row.status == TrialStatus::Pending && row.started_at.empty()) {
      // never started: nothing to reset
    } else {
      // Interrupted (running: its runner was killed; pending: released on SIGINT) or failed. Its
      // rows stay when it continues from a checkpoint; the caller truncates or resets then.
      Statement s(impl_->db, path_, "UPDATE trials SET status = 'pending', finished_at = NULL WHERE id = ?");
      s.bind(1, row.id).run();
      out.restarted.push_back(config->label());
    }
  }
  if (all_indices_count >= 0) {
    for (const auto& [index, row] : existing) {
      if (index < all_indices_count) continue;
      impl_->delete_trial_rows(row.id);
      Statement s(impl_->db, path_, "DELETE FROM trials WHERE id = ?");
      s.bind(1, row.id).run();
      out.removed.push_back(row.variant + (row.sweep.empty() ? "" : " " + row.sweep) + " seed=" + std::to_string(row.seed));
    }
  }
  tx.commit();
  return out;
}

}  // namespace mhd
