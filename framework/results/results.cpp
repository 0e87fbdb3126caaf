// The results file (DESIGN.md §6) on the SQLite C API.
//
// Every write runs in a transaction; metrics and traces are buffered and written together by
// flush(), so a killed run loses at most the rows since the last flush. Values are always bound to
// prepared statements, never pasted into SQL.
#include "results/results.h"
#include "mhd/runtime.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <unistd.h>

#include <ATen/Parallel.h>
#include <sqlite3.h>
#include <torch/version.h>

#include "mhd/error.h"
#include "study/study.h"

namespace mhd {

namespace {

constexpr const char* kFormat = "mhd-results";
constexpr int kSchemaVersion = 1;
constexpr int kBusyTimeoutMs = 10000;         // another process (a viewer, a resumed run) may hold the lock
constexpr std::size_t kFlushThreshold = 10000;  // buffered rows before add_* flushes on its own

constexpr const char* kSchemaSql = R"sql(
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
constexpr const char* kProbeSchemaSql = R"sql(
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

// Columns added after the first schema (issue 5: resume, --jobs, shards), by ALTER TABLE on every
// writable open, so older results files gain them when a run writes to them again. Readers of a
// file without them see the defaults.
struct AddedColumn {
  const char* table;
  const char* name;
  const char* declaration;
};
constexpr AddedColumn kAddedColumns[] = {
    {"studies", "interop_threads", "INTEGER NOT NULL DEFAULT 0"},
    {"studies", "jobs", "INTEGER NOT NULL DEFAULT 1"},
    {"studies", "shard", "TEXT NOT NULL DEFAULT ''"},
    {"studies", "expansion_hash", "TEXT NOT NULL DEFAULT ''"},
    {"trials", "threads", "INTEGER NOT NULL DEFAULT 0"},
    {"trials", "config_changes", "INTEGER NOT NULL DEFAULT 0"},
    {"studies", "blas", "TEXT NOT NULL DEFAULT ''"},
    {"studies", "cpu_features", "TEXT NOT NULL DEFAULT ''"},
};

// FNV-1a over the (index, config hash) list: two runs of one study expand to the same trials
// exactly when these agree (what `mhd merge` checks across shards).
std::string expansion_hash(const Study& study) {
  std::uint64_t h = 14695981039346656037ULL;
  for (std::size_t i = 0; i < study.trials.size(); ++i) {
    for (const unsigned char c : std::to_string(i) + ":" + study.trials[i].hash() + ";") {
      h ^= c;
      h *= 1099511628211ULL;
    }
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// "2024-05-01T12:34:56.789Z"
std::string utc_now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  std::tm tm{};
  gmtime_r(&ts.tv_sec, &tm);
  char buf[40];
  const std::size_t n = std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof buf - n, ".%03ldZ", ts.tv_nsec / 1000000L);
  return buf;
}

// One prepared statement; finalised on scope exit. Errors name the file and the failing SQL's
// purpose, which is what a user needs to see ("database is locked", "disk I/O error").
class Statement {
 public:
  Statement(sqlite3* db, const std::string& path, const char* sql) : db_(db), path_(path) {
    if (sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr) != SQLITE_OK) fail("prepare");
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind(int index, std::int64_t value) { return check(sqlite3_bind_int64(stmt_, index, value)); }
  Statement& bind(int index, double value) {
    // SQLite turns NaN into NULL on its own; say so explicitly, and read NULL back as NaN.
    if (std::isnan(value)) return check(sqlite3_bind_null(stmt_, index));
    return check(sqlite3_bind_double(stmt_, index, value));
  }
  Statement& bind(int index, const std::string& value) {
    return check(sqlite3_bind_text(stmt_, index, value.data(), static_cast<int>(value.size()), SQLITE_TRANSIENT));
  }
  Statement& bind(int index, const char* value) { return bind(index, std::string(value)); }

  // true while there is a row to read.
  bool step() {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail("step");
  }
  void run() {
    while (step()) {
    }
  }
  void reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

  std::int64_t integer(int col) const { return sqlite3_column_int64(stmt_, col); }
  double real(int col) const {
    if (sqlite3_column_type(stmt_, col) == SQLITE_NULL) return std::numeric_limits<double>::quiet_NaN();
    return sqlite3_column_double(stmt_, col);
  }
  std::string text(int col) const {
    const auto* p = sqlite3_column_text(stmt_, col);
    return p ? std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(sqlite3_column_bytes(stmt_, col)))
             : std::string();
  }

 private:
  Statement& check(int rc) {
    if (rc != SQLITE_OK) fail("bind");
    return *this;
  }
  [[noreturn]] void fail(const char* what) const {
    throw Error(path_ + ": SQLite " + what + " failed: " + sqlite3_errmsg(db_) + " (in: " +
                std::string(stmt_ ? sqlite3_sql(stmt_) : "?").substr(0, 80) + ")");
  }

  sqlite3* db_;
  const std::string& path_;
  sqlite3_stmt* stmt_ = nullptr;
};

void exec(sqlite3* db, const std::string& path, const char* sql) {
  char* message = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &message) != SQLITE_OK) {
    const std::string text = message ? message : sqlite3_errmsg(db);
    sqlite3_free(message);
    throw Error(path + ": SQLite error: " + text);
  }
}

// BEGIN IMMEDIATE takes the write lock up front, so a busy database waits (busy_timeout) at the
// start instead of failing half-way; an exception rolls back.
class Transaction {
 public:
  Transaction(sqlite3* db, const std::string& path) : db_(db), path_(path) { exec(db_, path_, "BEGIN IMMEDIATE"); }
  ~Transaction() {
    if (!committed_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  void commit() {
    exec(db_, path_, "COMMIT");
    committed_ = true;
  }

 private:
  sqlite3* db_;
  const std::string& path_;
  bool committed_ = false;
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

StudyRow read_study_row(const Statement& s) {
  StudyRow r;
  r.id = s.integer(0);
  r.name = s.text(1);
  r.description = s.text(2);
  r.toml = s.text(3);
  r.started_at = s.text(4);
  r.finished_at = s.text(5);
  r.git_revision = s.text(6);
  r.torch_version = s.text(7);
  r.host = s.text(8);
  r.device = s.text(9);
  r.threads = s.integer(10);
  r.interop_threads = s.integer(11);
  r.jobs = s.integer(12);
  r.shard = s.text(13);
  r.expansion_hash = s.text(14);
  r.blas = s.text(15);
  r.cpu_features = s.text(16);
  return r;
}

TrialRow read_trial_row(const Statement& s) {
  TrialRow r;
  r.id = s.integer(0);
  r.study_id = s.integer(1);
  r.index = s.integer(2);
  r.variant = s.text(3);
  r.sweep = s.text(4);
  r.sweep_json = s.text(5);
  r.seed = s.integer(6);
  r.config_json = s.text(7);
  r.config_hash = s.text(8);
  r.status = trial_status_from_string(s.text(9));
  r.error = s.text(10);
  r.param_count = s.integer(11);
  r.started_at = s.text(12);
  r.finished_at = s.text(13);
  r.wall_s = s.real(14);
  r.threads = s.integer(15);
  r.config_changes = s.integer(16);
  return r;
}

std::string run_command(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return "";
  std::string out;
  char buf[256];
  while (std::fgets(buf, sizeof buf, pipe) != nullptr) out += buf;
  const int status = pclose(pipe);
  if (status != 0) return "";
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (const char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

// ---------------------------------------------------------------------------------------------


RunEnvironment current_environment(const std::string& device, std::int64_t threads) {
  RunEnvironment env;
#ifdef MHD_SOURCE_DIR
  env.git_revision = run_command("git -C " + shell_quote(MHD_SOURCE_DIR) + " rev-parse --short HEAD 2>/dev/null");
#endif
  if (env.git_revision.empty()) env.git_revision = "unknown";
  env.torch_version = TORCH_VERSION;
  char host[256] = {};
  env.host = gethostname(host, sizeof host - 1) == 0 ? host : "unknown";
  env.device = device;
  env.threads = threads;
  env.interop_threads = at::get_num_interop_threads();
  env.blas = blas_info().name;
  env.cpu_features = cpu_features();
  return env;
}

// ---------------------------------------------------------------------------------------------

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

std::unique_ptr<ResultsDb> ResultsDb::open(const std::string& path, bool read_only) {
  std::unique_ptr<ResultsDb> out(new ResultsDb());
  out->path_ = path;
  out->impl_ = std::make_unique<Impl>();
  Impl& impl = *out->impl_;
  impl.path = path;
  impl.read_only = read_only;

  std::error_code ec;
  if (read_only && !std::filesystem::exists(path, ec)) throw Error(path + ": cannot open: no such file");
  if (!read_only) {
    // Writing to results/<name>.sqlite should not need a mkdir first.
    const auto parent = std::filesystem::path(path).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  }
  const int flags = read_only ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (sqlite3_open_v2(path.c_str(), &impl.db, flags, nullptr) != SQLITE_OK) {
    const std::string why = impl.db ? sqlite3_errmsg(impl.db) : "out of memory";
    throw Error(path + ": cannot open: " + why);
  }
  sqlite3_busy_timeout(impl.db, kBusyTimeoutMs);
  sqlite3_extended_result_codes(impl.db, 1);

  // The first read tells whether the file is an SQLite database at all.
  bool has_meta = false;
  try {
    has_meta = impl.has_table("meta");
  } catch (const Error&) {
    if ((sqlite3_extended_errcode(impl.db) & 0xff) != SQLITE_NOTADB) throw;  // e.g. locked: say that
    throw Error(path + ": not an mhd results file (not an SQLite database)");
  }
  if (read_only) {
    if (!has_meta) throw Error(path + ": not an mhd results file (no meta table)");
    impl.check_format();
    impl.has_added_columns = impl.has_column("studies", "shard") && impl.has_column("trials", "config_changes");
    impl.has_runtime_columns = impl.has_column("studies", "blas");
    return out;
  }
  // Refuse a foreign database before the pragmas below change anything in it. (The schema and
  // its meta rows are created in one transaction, so another run never sees one without the other.)
  if (!has_meta && impl.table_count() > 0) {
    throw Error(path + ": not an mhd results file (no meta table); refusing to write into it");
  }
  // WAL: readers (mhd report, the viewer) never block the running study, and a killed writer
  // leaves the last committed transaction intact. synchronous=NORMAL is safe with WAL against a
  // killed process; only a power cut can lose the last commits.
  exec(impl.db, path, "PRAGMA journal_mode=WAL");
  exec(impl.db, path, "PRAGMA synchronous=NORMAL");
  exec(impl.db, path, "PRAGMA foreign_keys=ON");
  impl.ensure_schema();
  impl.check_format();
  impl.has_added_columns = true;
  impl.has_runtime_columns = true;
  return out;
}

ResultsDb::~ResultsDb() {
  if (impl_ && !impl_->read_only) {
    try {
      impl_->flush();
    } catch (...) {
      // A destructor must not throw; an explicit flush() reports the same error.
    }
  }
}

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

namespace {

struct MergeInput {
  std::string path;
  StudyRow study;
  std::vector<TrialRow> trials;
};

std::string trial_label(const TrialRow& t) {
  return t.variant + (t.sweep.empty() ? "" : " " + t.sweep) + " seed=" + std::to_string(t.seed);
}

// Inputs must be shards of one study: same name, same TOML, same expansion, no trial twice.
void check_merge_inputs(const std::vector<MergeInput>& inputs) {
  const MergeInput& first = inputs.front();
  std::map<std::int64_t, const MergeInput*> owner;  // trial index -> input holding it
  for (const auto& in : inputs) {
    if (in.study.name != first.study.name) {
      throw Error(in.path + ": study '" + in.study.name + "' is not study '" + first.study.name + "' of " +
                  first.path + "; refusing to merge different studies");
    }
    if (in.study.toml != first.study.toml) {
      throw Error(in.path + ": study '" + in.study.name + "' was run from another study file (TOML) than " +
                  first.path + "; refusing to merge");
    }
    if (!in.study.expansion_hash.empty() && !first.study.expansion_hash.empty() &&
        in.study.expansion_hash != first.study.expansion_hash) {
      throw Error(in.path + ": study '" + in.study.name + "' expands to other trials than in " + first.path +
                  " (plugins or defaults changed?); refusing to merge");
    }
    for (const auto& t : in.trials) {
      const auto [it, fresh] = owner.emplace(t.index, &in);
      if (!fresh) {
        throw Error(in.path + ": trial #" + std::to_string(t.index + 1) + " (" + trial_label(t) + ") is also in " +
                    it->second->path + "; each shard once");
      }
    }
  }
}

// Column names of `table` in schema `schema` ("main", "src").
std::vector<std::string> table_columns(sqlite3* db, const std::string& path, const std::string& schema,
                                       const std::string& table) {
  Statement s(db, path, "SELECT name FROM pragma_table_info(?, ?) ORDER BY cid");
  s.bind(1, table).bind(2, schema);
  std::vector<std::string> out;
  while (s.step()) out.push_back(s.text(0));
  return out;
}

std::string quoted(const std::string& name) { return "\"" + name + "\""; }

}  // namespace

MergeSummary ResultsDb::merge(const std::string& output, const std::vector<std::string>& inputs) {
  if (inputs.empty()) throw Error("mhd merge: no input files given");
  std::vector<MergeInput> in;
  for (const auto& path : inputs) {
    if (std::filesystem::absolute(path) == std::filesystem::absolute(output))
      throw Error(path + ": is also the output; merge into a new file");
    auto db = open(path, /*read_only=*/true);
    auto study = db->latest_study();
    if (!study) throw Error(path + ": no study recorded; nothing to merge");
    in.push_back({path, *study, db->trials(study->id)});
  }
  check_merge_inputs(in);

  MergeSummary summary;
  summary.study = in.front().study.name;
  // Shards of an I/N split that are not among the inputs (reported, not refused: a partial merge
  // is useful while the last shards still run).
  if (const auto& shard = in.front().study.shard; !shard.empty()) {
    const std::int64_t n = std::stoll(shard.substr(shard.find('/') + 1));
    for (std::int64_t i = 1; i <= n; ++i) {
      const std::string name = std::to_string(i) + "/" + std::to_string(n);
      if (std::none_of(in.begin(), in.end(), [&](const MergeInput& m) { return m.study.shard == name; }))
        summary.missing_shards.push_back(name);
    }
  }

  auto out = open(output);
  if (out->latest_study()) throw Error(output + ": already holds a study; merge into a new file");
  sqlite3* db = out->impl_->db;
  const StudyRow& s0 = in.front().study;
  for (const auto& m : in) {
    {
      Statement attach(db, output, "ATTACH DATABASE ? AS src");
      attach.bind(1, m.path).run();
    }
    struct Detach {
      sqlite3* db;
      ~Detach() { sqlite3_exec(db, "DETACH DATABASE src", nullptr, nullptr, nullptr); }
    } detach{db};
    Transaction tx(db, output);
    std::int64_t study_id = 0;
    {
      Statement find(db, output, "SELECT id FROM studies ORDER BY id LIMIT 1");
      if (find.step()) study_id = find.integer(0);
    }
    if (study_id == 0) {
      // The merged study: the first shard's row, the whole study (no shard), started at the
      // earliest shard's start.
      std::string started = s0.started_at;
      for (const auto& other : in) started = std::min(started, other.study.started_at);
      Statement insert(db, output,
                       "INSERT INTO studies(name, description, toml, started_at, git_revision, torch_version, host, "
                       "device, threads, interop_threads, jobs, shard, expansion_hash, blas, cpu_features) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', ?, ?, ?)");
      insert.bind(1, s0.name).bind(2, s0.description).bind(3, s0.toml).bind(4, started).bind(5, s0.git_revision);
      insert.bind(6, s0.torch_version).bind(7, s0.host).bind(8, s0.device).bind(9, s0.threads);
      insert.bind(10, s0.interop_threads).bind(11, s0.jobs).bind(12, s0.expansion_hash);
      insert.bind(13, s0.blas).bind(14, s0.cpu_features).run();
      study_id = sqlite3_last_insert_rowid(db);
    }
    // Trials: every column both files have, the study id replaced; old -> new ids in a temp table.
    exec(db, output, "CREATE TEMP TABLE IF NOT EXISTS merge_ids(old INTEGER PRIMARY KEY, new INTEGER NOT NULL)");
    exec(db, output, "DELETE FROM temp.merge_ids");
    std::string columns;
    const auto src_trial_columns = table_columns(db, output, "src", "trials");
    for (const auto& c : table_columns(db, output, "main", "trials")) {
      if (c == "id" || c == "study_id") continue;
      if (std::find(src_trial_columns.begin(), src_trial_columns.end(), c) != src_trial_columns.end())
        columns += ", " + quoted(c);
    }
    for (const auto& t : m.trials) {
      Statement copy(db, output,
                     ("INSERT INTO main.trials(study_id" + columns + ") SELECT ?" + columns +
                      " FROM src.trials WHERE id = ?")
                         .c_str());
      copy.bind(1, study_id).bind(2, t.id).run();
      Statement map(db, output, "INSERT INTO temp.merge_ids(old, new) VALUES (?, ?)");
      map.bind(1, t.id).bind(2, static_cast<std::int64_t>(sqlite3_last_insert_rowid(db))).run();
    }
    // Every table of the input that holds trial rows, created in the output when this build's
    // schema lacks it.
    std::vector<std::pair<std::string, std::string>> tables;  // name, CREATE statement
    {
      Statement list(db, output,
                     "SELECT m.name, m.sql FROM src.sqlite_master m, pragma_table_info(m.name, 'src') p "
                     "WHERE m.type = 'table' AND m.name != 'trials' AND p.name = 'trial_id' ORDER BY m.name");
      while (list.step()) tables.emplace_back(list.text(0), list.text(1));
    }
    for (const auto& [table, create] : tables) {
      if (table_columns(db, output, "main", table).empty()) exec(db, output, create.c_str());
      const auto src_columns = table_columns(db, output, "src", table);
      std::string names, values;
      for (const auto& c : table_columns(db, output, "main", table)) {
        if (std::find(src_columns.begin(), src_columns.end(), c) == src_columns.end()) continue;
        names += (names.empty() ? "" : ", ") + quoted(c);
        values += (values.empty() ? "" : ", ") + (c == "trial_id" ? std::string("ids.new") : "s." + quoted(c));
      }
      exec(db, output,
           ("INSERT INTO main." + quoted(table) + "(" + names + ") SELECT " + values + " FROM src." + quoted(table) +
            " s JOIN temp.merge_ids ids ON ids.old = s.trial_id ORDER BY s.rowid")
               .c_str());
    }
    tx.commit();
    summary.trials += static_cast<std::int64_t>(m.trials.size());
  }
  // Finished when every shard finished and none is missing.
  const bool finished = summary.missing_shards.empty() &&
                        std::all_of(in.begin(), in.end(), [](const MergeInput& m) { return !m.study.finished_at.empty(); });
  if (finished) {
    std::string last;
    for (const auto& m : in) last = std::max(last, m.study.finished_at);
    Transaction tx(db, output);
    Statement s(db, output, "UPDATE studies SET finished_at = ?");
    s.bind(1, last).run();
    tx.commit();
  }
  return summary;
}

std::string ResultsDb::journal_mode() const {
  Statement s(impl_->db, path_, "PRAGMA journal_mode");
  return s.step() ? s.text(0) : std::string();
}

std::string ResultsDb::integrity_check() const {
  Statement s(impl_->db, path_, "PRAGMA integrity_check");
  std::string out;
  while (s.step()) out += (out.empty() ? "" : "\n") + s.text(0);
  return out;
}

}  // namespace mhd
