// The results file (docs/design.md §6) on the SQLite C API: opening, the schema check, and the
// helpers the other parts share.
//
// Every write runs in a transaction; metrics and traces are buffered and written together by
// flush(), so a killed run loses at most the rows since the last flush. Values are always bound to
// prepared statements, never pasted into SQL.
#include "results/results.h"

#include <cstdlib>

#include <ctime>
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

namespace results_detail {

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

}  // namespace results_detail

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
  if (const char* pages = std::getenv(kMaxPagesEnv); pages && *pages)
    exec(impl.db, path, ("PRAGMA max_page_count=" + std::to_string(std::stoll(pages))).c_str());
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
