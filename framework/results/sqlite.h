// A thin wrapper of the SQLite C API for the results file: prepared statements that name the file
// and the failing purpose in their errors, exec, and transactions that roll back on an exception.
// Internal to results/.
#pragma once

#include <cstdint>
#include <string>

#include <sqlite3.h>

#include "mhd/error.h"
#include "results/results.h"

namespace mhd::results_detail {

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
    if ((sqlite3_extended_errcode(db_) & 0xff) == SQLITE_FULL) throw ResultsFileFull(path_);
    throw Error(path_ + ": SQLite " + what + " failed: " + sqlite3_errmsg(db_) + " (in: " +
                std::string(stmt_ ? sqlite3_sql(stmt_) : "?").substr(0, 80) + ")");
  }

  sqlite3* db_;
  const std::string& path_;
  sqlite3_stmt* stmt_ = nullptr;
};

inline void exec(sqlite3* db, const std::string& path, const char* sql) {
  char* message = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &message) != SQLITE_OK) {
    const std::string text = message ? message : sqlite3_errmsg(db);
    sqlite3_free(message);
    if ((sqlite3_extended_errcode(db) & 0xff) == SQLITE_FULL) throw ResultsFileFull(path);
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

}  // namespace mhd::results_detail
