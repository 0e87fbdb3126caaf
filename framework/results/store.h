// The results file's schema and the state every part of ResultsDb shares (results.cpp opens
// and checks the file, write.cpp, reconcile.cpp, read.cpp and merge.cpp do the rest). Internal to
// results/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "results/results.h"
#include "results/sqlite.h"

namespace mhd {
struct Study;
}

namespace mhd::results_detail {

inline constexpr const char* kFormat = "mhd-results";
inline constexpr int kSchemaVersion = 1;
inline constexpr int kBusyTimeoutMs = 10000;         // another process (a viewer, a resumed run) may hold the lock
inline constexpr std::size_t kFlushThreshold = 10000;  // buffered rows before add_* flushes on its own

inline constexpr const char* kSchemaSql = R"sql(
CREATE TABLE IF NOT EXISTS meta(
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies(
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '',
  toml TEXT NOT NULL,
  started_at TEXT NOT NULL,
  finished_at TEXT,
  git_revision TEXT,
  torch_version TEXT,
  host TEXT,
  device TEXT,
  threads INTEGER);
CREATE TABLE IF NOT EXISTS trials(
  id INTEGER PRIMARY KEY,
  study_id INTEGER NOT NULL REFERENCES studies(id) ON DELETE CASCADE,
  idx INTEGER NOT NULL,
  variant TEXT NOT NULL,
  sweep TEXT NOT NULL,
  sweep_json TEXT NOT NULL,
  seed INTEGER NOT NULL,
  config_json TEXT NOT NULL,
  config_hash TEXT NOT NULL,
  status TEXT NOT NULL DEFAULT 'pending'
    CHECK(status IN ('pending','running','done','failed','diverged')),
  error TEXT NOT NULL DEFAULT '',
  param_count INTEGER NOT NULL DEFAULT 0,
  started_at TEXT,
  finished_at TEXT,
  wall_s REAL NOT NULL DEFAULT 0,
  UNIQUE(study_id, idx));
CREATE TABLE IF NOT EXISTS metrics(
  trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
  step INTEGER NOT NULL,
  name TEXT NOT NULL,
  value REAL);
CREATE INDEX IF NOT EXISTS metrics_by_trial ON metrics(trial_id, name, step);
CREATE TABLE IF NOT EXISTS traces(
  trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
  step INTEGER NOT NULL,
  phase TEXT NOT NULL,
  iteration INTEGER NOT NULL,
  abs_residual REAL,
  rel_residual REAL,
  energy REAL);
CREATE INDEX IF NOT EXISTS traces_by_trial ON traces(trial_id, step);
)sql";

// Probes' chart data (probe.h). Created by every writable open, so results files written before
// probes existed gain the table when a run writes to them again; readers of such files see no
// points.
inline constexpr const char* kProbeSchemaSql = R"sql(
CREATE TABLE IF NOT EXISTS probe_points(
  trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
  probe TEXT NOT NULL,
  name TEXT NOT NULL,
  i INTEGER NOT NULL,
  j INTEGER NOT NULL,
  x REAL,
  y REAL,
  value REAL);
CREATE INDEX IF NOT EXISTS probe_points_by_trial ON probe_points(trial_id, probe, name, i, j);
)sql";

// Columns added after the first schema, by ALTER TABLE on every
// writable open, so older results files gain them when a run writes to them again. Readers of a
// file without them see the defaults.
struct AddedColumn {
  const char* table;
  const char* name;
  const char* declaration;
};
inline constexpr AddedColumn kAddedColumns[] = {
    {"studies", "interop_threads", "INTEGER NOT NULL DEFAULT 0"},
    {"studies", "jobs", "INTEGER NOT NULL DEFAULT 1"},
    {"studies", "shard", "TEXT NOT NULL DEFAULT ''"},
    {"studies", "expansion_hash", "TEXT NOT NULL DEFAULT ''"},
    {"trials", "threads", "INTEGER NOT NULL DEFAULT 0"},
    {"trials", "config_changes", "INTEGER NOT NULL DEFAULT 0"},
    {"studies", "blas", "TEXT NOT NULL DEFAULT ''"},
    {"studies", "cpu_features", "TEXT NOT NULL DEFAULT ''"},
};


struct PendingMetric {
  std::int64_t trial_id;
  std::int64_t step;
  std::string name;
  double value;
};

struct PendingTrace {
  std::int64_t trial_id;
  TracePoint point;
};

// FNV-1a over the (index, config hash) list: two runs of one study expand to the same trials
// exactly when these agree (what `mhd merge` checks across shards).
std::string expansion_hash(const Study& study);
// "2024-05-01T12:34:56.789Z"
std::string utc_now();
StudyRow read_study_row(const Statement& s);
TrialRow read_trial_row(const Statement& s);

}  // namespace mhd::results_detail

namespace mhd {

using namespace results_detail;

struct ResultsDb::Impl {
  sqlite3* db = nullptr;
  std::string path;
  bool read_only = false;
  std::vector<PendingMetric> metrics;
  std::vector<PendingTrace> traces;
  std::vector<std::pair<std::int64_t, ProbePoint>> points;  // (trial_id, point)
  bool has_added_columns = false;  // kAddedColumns exist (always, once a writer opened the file)
  bool has_runtime_columns = false;  // studies.blas and studies.cpu_features (added later still)

  // "SELECT ... FROM studies" with the added columns, or their defaults for an older file.
  std::string study_select() const {
    return std::string("SELECT id, name, description, toml, started_at, finished_at, git_revision, torch_version, "
                       "host, device, threads, ") +
           (has_added_columns ? "interop_threads, jobs, shard, expansion_hash" : "0, 1, '', ''") +
           (has_runtime_columns ? ", blas, cpu_features" : ", '', ''") + " FROM studies";
  }
  std::string trial_select() const {
    return std::string("SELECT id, study_id, idx, variant, sweep, sweep_json, seed, config_json, config_hash, status, "
                       "error, param_count, started_at, finished_at, wall_s, ") +
           (has_added_columns ? "threads, config_changes" : "0, 0") + " FROM trials";
  }

  // Every table that holds rows of a trial (metrics, traces, probe_points and whatever a later
  // schema adds): what resetting, truncating and merging a trial must cover.
  std::vector<std::string> trial_tables() const {
    Statement s(db, path,
                "SELECT m.name FROM sqlite_master m, pragma_table_info(m.name) p WHERE m.type = 'table' AND "
                "m.name != 'trials' AND p.name = 'trial_id' ORDER BY m.name");
    std::vector<std::string> out;
    while (s.step()) out.push_back(s.text(0));
    return out;
  }

  // Deletes the trial's rows in every trial table; with `after_step`, only rows of later steps
  // and of step 0 in tables that have a step column (the others, e.g. probe points written at the end, entirely).
  // The caller holds the transaction.
  void delete_trial_rows(std::int64_t trial_id, std::optional<std::int64_t> after_step = std::nullopt) {
    for (const auto& table : trial_tables()) {
      const bool by_step = after_step && has_column(table.c_str(), "step");
      // Step 0 holds what a trainer writes when it starts (parameter count, chance accuracy): a
      // trainer continuing from a checkpoint writes those again.
      const std::string sql =
          "DELETE FROM \"" + table + "\" WHERE trial_id = ?" + (by_step ? " AND (step > ? OR step = 0)" : "");
      Statement s(db, path, sql.c_str());
      s.bind(1, trial_id);
      if (by_step) s.bind(2, *after_step);
      s.run();
    }
  }

  bool has_column(const char* table, const char* column) const {
    Statement s(db, path, "SELECT 1 FROM pragma_table_info(?) WHERE name = ?");
    s.bind(1, table).bind(2, column);
    return s.step();
  }

  ~Impl() {
    if (db != nullptr) sqlite3_close_v2(db);
  }

  void require_writable() const {
    if (read_only) throw Error(path + ": opened read-only; cannot write results");
  }

  std::size_t buffered() const { return metrics.size() + traces.size() + points.size(); }

  void flush_if_writable() {
    if (!read_only) flush();
  }

  void flush() {
    if (metrics.empty() && traces.empty() && points.empty()) return;
    Transaction tx(db, path);
    if (!metrics.empty()) {
      Statement insert(db, path, "INSERT INTO metrics(trial_id, step, name, value) VALUES (?, ?, ?, ?)");
      for (const auto& m : metrics) {
        insert.bind(1, m.trial_id).bind(2, m.step).bind(3, m.name).bind(4, m.value).run();
        insert.reset();
      }
    }
    if (!traces.empty()) {
      Statement insert(db, path,
                       "INSERT INTO traces(trial_id, step, phase, iteration, abs_residual, rel_residual, energy) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)");
      for (const auto& t : traces) {
        insert.bind(1, t.trial_id)
            .bind(2, t.point.step)
            .bind(3, t.point.phase)
            .bind(4, t.point.iteration)
            .bind(5, t.point.abs_residual)
            .bind(6, t.point.rel_residual)
            .bind(7, t.point.energy)
            .run();
        insert.reset();
      }
    }
    if (!points.empty()) {
      Statement insert(db, path,
                       "INSERT INTO probe_points(trial_id, probe, name, i, j, x, y, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
      for (const auto& [trial_id, p] : points) {
        insert.bind(1, trial_id).bind(2, p.probe).bind(3, p.name).bind(4, p.i).bind(5, p.j);
        insert.bind(6, p.x).bind(7, p.y).bind(8, p.value).run();
        insert.reset();
      }
    }
    tx.commit();
    // Cleared only after the commit: a failed flush keeps the rows for the next attempt.
    metrics.clear();
    traces.clear();
    points.clear();
  }

  bool has_table(const char* name) const {
    Statement s(db, path, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?");
    s.bind(1, name);
    return s.step();
  }

  std::int64_t table_count() const {
    Statement s(db, path, "SELECT count(*) FROM sqlite_master WHERE type = 'table'");
    s.step();
    return s.integer(0);
  }

  std::string meta(const char* key) const {
    Statement s(db, path, "SELECT value FROM meta WHERE key = ?");
    s.bind(1, key);
    return s.step() ? s.text(0) : std::string();
  }

  // A file written by something else must not be mistaken for (or turned into) a results file.
  void check_format() const {
    const std::string format = meta("format");
    if (format != kFormat) throw Error(path + ": not an mhd results file (meta format is '" + format + "')");
    const std::string version = meta("schema_version");
    if (version != std::to_string(kSchemaVersion)) {
      throw Error(path + ": results schema version " + version + " is not the version " +
                  std::to_string(kSchemaVersion) + " this build reads; use a matching mhd");
    }
  }

  // Checked and created under the write lock, so two runs starting on the same new file cannot
  // both create it, nor mistake the other's half-made schema for a foreign database.
  void ensure_schema() {
    Transaction tx(db, path);
    if (!has_table("meta")) {
      if (table_count() > 0) throw Error(path + ": not an mhd results file (no meta table); refusing to write into it");
      exec(db, path, kSchemaSql);
      Statement insert(db, path, "INSERT INTO meta(key, value) VALUES (?, ?)");
      insert.bind(1, "format").bind(2, kFormat).run();
      insert.reset();
      insert.bind(1, "schema_version").bind(2, std::to_string(kSchemaVersion)).run();
    }
    if (has_table("meta")) exec(db, path, kProbeSchemaSql);  // a foreign file was refused above
    for (const auto& c : kAddedColumns) {
      if (!has_column(c.table, c.name)) {
        exec(db, path, (std::string("ALTER TABLE ") + c.table + " ADD COLUMN " + c.name + " " + c.declaration).c_str());
      }
    }
    tx.commit();
  }

  void update_trial(const char* sql, std::int64_t trial_id) {
    Transaction tx(db, path);
    Statement s(db, path, sql);
    s.bind(1, trial_id).run();
    if (sqlite3_changes(db) == 0) throw Error(path + ": no trial with id " + std::to_string(trial_id));
    tx.commit();
  }
};

}  // namespace mhd
