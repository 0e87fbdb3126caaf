// The results file: schema, round trips, status transitions, read-only opening and the report.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include <sqlite3.h>

#include "mhd/error.h"
#include "results/results.h"
#include "study/study.h"

namespace fs = std::filesystem;

namespace {

class Results : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("mhd_results_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string file(const std::string& name) const { return (dir_ / name).string(); }
  fs::path dir_;
};

mhd::Study make_study(const std::string& name) {
  mhd::Study s;
  s.name = name;
  s.description = "a test study";
  s.toml_text = "[study]\nname = \"" + name + "\"\n";
  return s;
}

mhd::TrialConfig make_trial(const std::string& variant, std::int64_t seed, std::int64_t size = 0) {
  mhd::TrialConfig t;
  t.study = "s";
  t.variant = variant;
  t.seed = seed;
  if (size > 0) t.sweep_point.emplace_back("memory.size", size);
  t.model.set("d_model", std::int64_t{16});
  return t;
}

mhd::RunEnvironment env() { return mhd::current_environment("cpu", 2); }

// Runs one query on its own connection: checks what is really on disk.
std::string query(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  std::string out;
  if (sqlite3_step(stmt) == SQLITE_ROW && sqlite3_column_text(stmt, 0))
    out = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return out;
}

std::string open_error(const std::string& path, bool read_only) {
  try {
    mhd::ResultsDb::open(path, read_only);
  } catch (const mhd::Error& e) {
    return e.what();
  }
  return "";
}

TEST_F(Results, StudiesAndTrialsRoundTrip) {
  auto db = mhd::ResultsDb::open(file("r.sqlite"));
  const auto environment = env();
  const auto study = make_study("roundtrip");
  const auto id = db->begin_study(study, environment);
  const auto a = make_trial("base", 0, 1024);
  const auto b = make_trial("lbfgs", 1);
  const auto ta = db->add_trial(id, 0, a);
  const auto tb = db->add_trial(id, 1, b);
  EXPECT_NE(ta, tb);

  const auto row = db->study(id);
  ASSERT_TRUE(row);
  EXPECT_EQ(row->name, "roundtrip");
  EXPECT_EQ(row->description, "a test study");
  EXPECT_EQ(row->toml, study.toml_text);
  EXPECT_EQ(row->git_revision, environment.git_revision);
  EXPECT_EQ(row->torch_version, environment.torch_version);
  EXPECT_EQ(row->host, environment.host);
  EXPECT_EQ(row->device, "cpu");
  EXPECT_EQ(row->threads, 2);
  EXPECT_EQ(row->started_at.size(), 24u) << row->started_at;  // 2024-05-01T12:34:56.789Z
  EXPECT_EQ(row->started_at.back(), 'Z');
  EXPECT_EQ(row->started_at[10], 'T');
  EXPECT_TRUE(row->finished_at.empty());
  db->finish_study(id);
  EXPECT_FALSE(db->study(id)->finished_at.empty());
  EXPECT_EQ(db->latest_study()->id, id);
  EXPECT_EQ(db->studies().size(), 1u);

  const auto trials = db->trials(id);
  ASSERT_EQ(trials.size(), 2u);
  EXPECT_EQ(trials[0].id, ta);
  EXPECT_EQ(trials[0].study_id, id);
  EXPECT_EQ(trials[0].index, 0);
  EXPECT_EQ(trials[0].variant, "base");
  EXPECT_EQ(trials[0].sweep, "memory.size=1024");
  EXPECT_EQ(trials[0].sweep_json, R"({"memory.size":1024})");
  EXPECT_EQ(trials[0].config_json, a.to_json());
  EXPECT_EQ(trials[0].config_hash, a.hash());
  EXPECT_EQ(mhd::TrialConfig::from_json(trials[0].config_json).label(), a.label()) << "re-runnable from the row";
  EXPECT_EQ(trials[0].status, mhd::TrialStatus::Pending);
  EXPECT_EQ(trials[1].variant, "lbfgs");
  EXPECT_EQ(trials[1].sweep, "");
  EXPECT_EQ(trials[1].sweep_json, "{}");
  EXPECT_EQ(trials[1].seed, 1);
  EXPECT_EQ(db->integrity_check(), "ok");
}

TEST_F(Results, MetricsAndTracesRoundTrip) {
  auto db = mhd::ResultsDb::open(file("m.sqlite"));
  const auto id = db->begin_study(make_study("m"), env());
  const auto t = db->add_trial(id, 0, make_trial("base", 0));
  db->add_metric(t, 1, "loss", 3.0);
  db->add_metric(t, 3, "loss", 1.0);
  db->add_metric(t, 2, "loss", 2.0);
  db->add_metric(t, 3, "eval_accuracy", 0.75);
  db->add_metric(t, 1, "eval_accuracy", 0.25);
  db->add_metric(t, 2, "grad_norm", std::nan(""));
  EXPECT_EQ(db->buffered_rows(), 6u);
  db->flush();
  EXPECT_EQ(db->buffered_rows(), 0u);
  EXPECT_EQ(query(file("m.sqlite"), "SELECT COUNT(*) FROM metrics"), "6") << "on disk after flush";

  const auto series = db->metric_series(t, "loss");
  ASSERT_EQ(series.size(), 3u);
  EXPECT_EQ(series[0].step, 1);
  EXPECT_EQ(series[1].step, 2);
  EXPECT_EQ(series[2].step, 3);
  EXPECT_EQ(series[2].value, 1.0);

  const auto finals = db->final_metrics(t);
  EXPECT_EQ(finals.at("loss"), 1.0) << "the last step, not the last row written";
  EXPECT_EQ(finals.at("eval_accuracy"), 0.75);
  EXPECT_TRUE(std::isnan(finals.at("grad_norm"))) << "NaN survives as NULL";
  EXPECT_EQ(db->metric_names(id), (std::vector<std::string>{"eval_accuracy", "grad_norm", "loss"}));

  mhd::TracePoint p;
  p.step = 4;
  p.phase = "forward";
  for (int i = 0; i < 3; ++i) {
    p.iteration = i;
    p.abs_residual = 1.0 / (i + 1);
    p.rel_residual = 0.1 / (i + 1);
    p.energy = -static_cast<double>(i);
    db->add_trace(t, p);
  }
  p.phase = "backward";
  p.iteration = 0;
  p.energy = std::nan("");
  db->add_trace(t, p);
  // Reads flush first, so a writer sees what it added without calling flush().
  const auto traces = db->traces(t);
  ASSERT_EQ(traces.size(), 4u);
  EXPECT_EQ(traces[1].phase, "forward");
  EXPECT_EQ(traces[1].iteration, 1);
  EXPECT_EQ(traces[1].abs_residual, 0.5);
  EXPECT_EQ(traces[1].rel_residual, 0.05);
  EXPECT_EQ(traces[2].energy, -2.0);
  EXPECT_EQ(traces[3].phase, "backward");
  EXPECT_TRUE(std::isnan(traces[3].energy));
}

TEST_F(Results, StatusTransitions) {
  auto db = mhd::ResultsDb::open(file("s.sqlite"));
  const auto id = db->begin_study(make_study("s"), env());
  const auto t = db->add_trial(id, 0, make_trial("base", 0));
  auto row = [&] { return db->trials(id).at(0); };
  EXPECT_EQ(row().status, mhd::TrialStatus::Pending);
  EXPECT_TRUE(row().started_at.empty());

  db->mark_running(t);
  EXPECT_EQ(row().status, mhd::TrialStatus::Running);
  EXPECT_FALSE(row().started_at.empty());
  db->set_param_count(t, 1234);
  db->add_metric(t, 1, "loss", 0.5);  // buffered: finish_trial must write it
  db->finish_trial(t, mhd::TrialStatus::Done, "", 1.5);
  EXPECT_EQ(query(file("s.sqlite"), "SELECT COUNT(*) FROM metrics"), "1");
  EXPECT_EQ(row().status, mhd::TrialStatus::Done);
  EXPECT_EQ(row().wall_s, 1.5);
  EXPECT_EQ(row().param_count, 1234);
  EXPECT_FALSE(row().finished_at.empty());
  EXPECT_GE(row().finished_at, row().started_at);

  EXPECT_THROW(db->mark_running(t), mhd::Error) << "a finished trial is not silently re-run";
  EXPECT_THROW(db->finish_trial(t, mhd::TrialStatus::Running, "", 0), mhd::Error);
  EXPECT_THROW(db->mark_running(9999), mhd::Error);

  db->reset_trial(t);
  EXPECT_EQ(row().status, mhd::TrialStatus::Pending);
  EXPECT_TRUE(db->final_metrics(t).empty()) << "reset deletes the old metrics";
  db->mark_running(t);
  db->finish_trial(t, mhd::TrialStatus::Diverged, "residual is NaN at step 3", 0.25);
  EXPECT_EQ(row().status, mhd::TrialStatus::Diverged);
  EXPECT_EQ(row().error, "residual is NaN at step 3");

  // Failing before it ran (e.g. a plugin refused its parameters) is allowed.
  const auto t2 = db->add_trial(id, 1, make_trial("base", 1));
  db->finish_trial(t2, mhd::TrialStatus::Failed, "boom", 0.0);
  EXPECT_EQ(db->trials(id).at(1).status, mhd::TrialStatus::Failed);

  for (auto s : {mhd::TrialStatus::Pending, mhd::TrialStatus::Running, mhd::TrialStatus::Done,
                 mhd::TrialStatus::Failed, mhd::TrialStatus::Diverged})
    EXPECT_EQ(mhd::trial_status_from_string(mhd::to_string(s)), s);
  EXPECT_THROW(mhd::trial_status_from_string("finished"), mhd::Error);
}

TEST_F(Results, SchemaPragmasAndConstraints) {
  const auto path = file("w.sqlite");
  {
    auto db = mhd::ResultsDb::open(path);
    EXPECT_EQ(db->journal_mode(), "wal");
    const auto id = db->begin_study(make_study("w"), env());
    db->add_trial(id, 0, make_trial("base", 0));
    EXPECT_THROW(db->add_trial(id, 0, make_trial("base", 0)), mhd::Error) << "one row per trial index";
    db->add_metric(4242, 0, "loss", 1.0);  // no such trial: the foreign key refuses it
    EXPECT_THROW(db->flush(), mhd::Error);
    EXPECT_EQ(db->buffered_rows(), 1u) << "a failed flush keeps its rows";
  }
  EXPECT_EQ(query(path, "PRAGMA journal_mode"), "wal") << "WAL is a property of the file";
  EXPECT_EQ(query(path, "SELECT value FROM meta WHERE key = 'format'"), "mhd-results");
  EXPECT_EQ(query(path, "SELECT value FROM meta WHERE key = 'schema_version'"), "1");
  EXPECT_EQ(query(path, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name IN "
                        "('metrics_by_trial', 'traces_by_trial')"),
            "2");
  EXPECT_NE(query(path, "SELECT sql FROM sqlite_master WHERE name = 'trials'").find("CHECK(status IN"),
            std::string::npos);

  // Reopening an existing results file for writing keeps its studies.
  auto again = mhd::ResultsDb::open(path);
  EXPECT_EQ(again->studies().size(), 1u);
  EXPECT_EQ(again->integrity_check(), "ok");
}

TEST_F(Results, AddMetricFlushesOnItsOwnWhenTheBufferIsLarge) {
  const auto path = file("big.sqlite");
  auto db = mhd::ResultsDb::open(path);
  const auto id = db->begin_study(make_study("big"), env());
  const auto t = db->add_trial(id, 0, make_trial("base", 0));
  for (int i = 0; i < 10001; ++i) db->add_metric(t, i, "loss", i);
  EXPECT_LT(db->buffered_rows(), 10000u);
  EXPECT_EQ(query(path, "SELECT COUNT(*) FROM metrics"), "10000");
}

TEST_F(Results, ReadOnlyOpening) {
  const auto path = file("ro.sqlite");
  {
    auto db = mhd::ResultsDb::open(path);
    const auto id = db->begin_study(make_study("ro"), env());
    const auto t = db->add_trial(id, 0, make_trial("base", 0));
    db->add_metric(t, 0, "loss", 2.0);
  }  // the destructor flushes
  auto ro = mhd::ResultsDb::open(path, /*read_only=*/true);
  EXPECT_EQ(ro->path(), path);
  const auto study = ro->latest_study();
  ASSERT_TRUE(study);
  EXPECT_EQ(ro->final_metrics(ro->trials(study->id).at(0).id).at("loss"), 2.0);
  EXPECT_THROW(ro->add_metric(1, 0, "loss", 1.0), mhd::Error);
  EXPECT_THROW(ro->begin_study(make_study("x"), env()), mhd::Error);

  const auto missing = file("missing.sqlite");
  EXPECT_EQ(open_error(missing, true), missing + ": cannot open: no such file");
  EXPECT_FALSE(fs::exists(missing)) << "reading must not create the file";

  const auto text = file("notes.txt");
  std::ofstream(text) << "just some notes, long enough to look like a file header........................\n";
  EXPECT_EQ(open_error(text, true).rfind(text + ": not an mhd results file", 0), 0u) << open_error(text, true);

  const auto other = file("other.sqlite");
  {
    sqlite3* db = nullptr;
    sqlite3_open(other.c_str(), &db);
    sqlite3_exec(db, "CREATE TABLE t(x)", nullptr, nullptr, nullptr);
    sqlite3_close(db);
  }
  EXPECT_EQ(open_error(other, true), other + ": not an mhd results file (no meta table)");
  EXPECT_EQ(open_error(other, false), other + ": not an mhd results file (no meta table); refusing to write into it");
}

TEST(ResultsEnvironment, DescribesTheRun) {
  const auto e = mhd::current_environment("cuda", 8);
  EXPECT_FALSE(e.git_revision.empty());
  EXPECT_FALSE(e.torch_version.empty());
  EXPECT_FALSE(e.host.empty());
  EXPECT_EQ(e.device, "cuda");
  EXPECT_EQ(e.threads, 8);
}

// --- the report -------------------------------------------------------------------------------

TEST(Report, MeanStd) {
  const auto [m0, s0] = mhd::mean_std({});
  EXPECT_TRUE(std::isnan(m0));
  EXPECT_EQ(s0, 0.0);
  EXPECT_EQ(mhd::mean_std({5.0}), std::make_pair(5.0, 0.0));
  const auto [m, s] = mhd::mean_std({1.0, 2.0, 3.0, 4.0});
  EXPECT_DOUBLE_EQ(m, 2.5);
  EXPECT_DOUBLE_EQ(s, std::sqrt(5.0 / 3.0)) << "sample standard deviation (n - 1)";
}

class ReportTest : public Results {
 protected:
  // base at two sweep points x 3 seeds, and a variant "fp" with one done, one failed, one diverged.
  std::unique_ptr<mhd::ResultsDb> build() {
    auto db = mhd::ResultsDb::open(file("report.sqlite"));
    db->begin_study(make_study("older"), env());  // the report shows the latest study
    const auto id = db->begin_study(make_study("report"), env());
    std::int64_t index = 0;
    auto trial = [&](const std::string& variant, std::int64_t seed, std::int64_t size) {
      const auto t = db->add_trial(id, index++, make_trial(variant, seed, size));
      db->mark_running(t);
      return t;
    };
    const double loss_small[] = {1.0, 2.0, 3.0};
    const double acc_small[] = {0.5, 0.7, 0.9};
    for (std::int64_t seed = 0; seed < 3; ++seed) {
      const auto t = trial("base", seed, 64);
      db->add_metric(t, 1, "loss", 100.0);  // an early value, before the last 10 steps: not in the final one
      for (std::int64_t step = 2; step <= 11; ++step) db->add_metric(t, step, "loss", loss_small[seed]);
      db->add_metric(t, 10, "eval_accuracy", acc_small[seed]);
      db->add_metric(t, 10, "cache_hits", 7.0);
      db->finish_trial(t, mhd::TrialStatus::Done, "", 1.0);
    }
    for (std::int64_t seed = 0; seed < 3; ++seed) {
      const auto t = trial("base", seed, 128);
      db->add_metric(t, 10, "loss", 0.5);
      db->add_metric(t, 10, "eval_accuracy", 1.0);
      db->finish_trial(t, mhd::TrialStatus::Done, "", 1.0);
    }
    const auto done = trial("fp", 0, 64);
    db->add_metric(done, 10, "loss", 4.0);
    db->finish_trial(done, mhd::TrialStatus::Done, "", 1.0);
    const auto failed = trial("fp", 1, 64);
    db->add_metric(failed, 5, "loss", 99.0);  // not counted: the trial failed
    db->finish_trial(failed, mhd::TrialStatus::Failed, "boom", 1.0);
    db->finish_trial(trial("fp", 2, 64), mhd::TrialStatus::Diverged, "nan", 1.0);
    return db;
  }
};

TEST_F(ReportTest, CsvHasMeanStdAndCountPerGroupAndMetric) {
  auto db = build();
  mhd::ReportOptions options;
  options.csv = true;
  options.metrics = {"loss", "eval_accuracy"};
  EXPECT_EQ(mhd::format_report(*db, options),
            "variant,sweep,metric,mean,std,n,final\n"
            "base,memory.size=64,loss,2,1,3,mean_last_10\n"
            "base,memory.size=64,eval_accuracy,0.7,0.2,3,last_eval\n"
            "base,memory.size=128,loss,0.5,0,3,mean_last_10\n"
            "base,memory.size=128,eval_accuracy,1,0,3,last_eval\n"
            "fp,memory.size=64,loss,4,0,1,mean_last_10\n"
            "fp,memory.size=64,eval_accuracy,,,0,last_eval\n");

  options.metrics.clear();  // every metric, by name
  const auto all = mhd::format_report(*db, options);
  EXPECT_NE(all.find("base,memory.size=64,cache_hits,7,0,3,mean_last_10\n"), std::string::npos) << all;
}

// One noisy last step does not stand for the trial: a per-step metric's final value is the mean of
// its last k steps, a held-out one its value at the last evaluation; the header says which.
TEST_F(Results, ReportFinalIsTheMeanOfTheLastKStepsOrTheLastEvaluation) {
  auto db = mhd::ResultsDb::open(file("final.sqlite"));
  const auto id = db->begin_study(make_study("final"), env());
  const auto t = db->add_trial(id, 0, make_trial("base", 0, 64));
  db->mark_running(t);
  for (std::int64_t step = 1; step <= 20; ++step) db->add_metric(t, step, "loss", step <= 10 ? 50.0 : 1.0);
  db->add_metric(t, 20, "loss", 91.0);  // a spike at the last step (a second row at step 20 comes last)
  db->add_metric(t, 10, "eval_accuracy", 0.9);
  db->add_metric(t, 20, "eval_accuracy", 0.4);
  db->finish_trial(t, mhd::TrialStatus::Done, "", 1.0);
  mhd::ReportOptions csv;
  csv.csv = true;
  csv.metrics = {"loss", "eval_accuracy"};
  // Last 10 rows of loss: steps 12..19 (1.0 each), the two rows of step 20 (1.0, 91.0): mean 10.
  EXPECT_EQ(mhd::format_report(*db, csv),
            "variant,sweep,metric,mean,std,n,final\n"
            "base,memory.size=64,loss,10,0,1,mean_last_10\n"
            "base,memory.size=64,eval_accuracy,0.4,0,1,last_eval\n");
  csv.last_k = 1;
  EXPECT_NE(mhd::format_report(*db, csv).find("loss,91,0,1,mean_last_1\n"), std::string::npos);
  csv.last_k = 0;
  EXPECT_THROW(mhd::format_report(*db, csv), mhd::Error);

  const auto text = mhd::format_report(*db, {});
  EXPECT_NE(text.find("final value per trial: eval_accuracy at the last evaluation; loss the mean of the last 10 "
                      "logged steps"),
            std::string::npos)
      << text;
}

TEST_F(ReportTest, TextTableIsAlignedAndCountsFailures) {
  auto db = build();
  const auto text = mhd::format_report(*db, {});
  EXPECT_NE(text.find("study 'report'"), std::string::npos) << text;
  EXPECT_NE(text.find("9 trial(s), 7 done, 1 failed, 1 diverged"), std::string::npos) << text;
  EXPECT_NE(text.find("2 +- 1"), std::string::npos) << text;
  EXPECT_NE(text.find("0.7 +- 0.2"), std::string::npos) << text;
  EXPECT_NE(text.find("1 failed, 1 diverged"), std::string::npos) << text;
  EXPECT_NE(text.find("other metrics (show with --metric NAME): cache_hits"), std::string::npos) << text;

  // Columns line up: every metric cell of a column starts at the header's offset.
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  std::size_t header = 0;
  while (header < lines.size() && lines[header].rfind("variant", 0) != 0) ++header;
  ASSERT_LT(header + 3, lines.size()) << text;
  const auto loss_col = lines[header].find("loss");
  ASSERT_NE(loss_col, std::string::npos);
  EXPECT_EQ(lines[header + 1].substr(loss_col, 6), "2 +- 1") << text;
  EXPECT_EQ(lines[header + 2].substr(loss_col, 3), "0.5") << text;
  EXPECT_EQ(lines[header + 3].substr(loss_col, 1), "4") << text;
  const auto acc_col = lines[header].find("eval_accuracy");
  ASSERT_NE(acc_col, std::string::npos);
  EXPECT_EQ(lines[header + 3].substr(acc_col, 2), "- ") << "fp has no accuracy: " << text;
}

TEST_F(ReportTest, PicksAStudyAndRejectsUnknownMetrics) {
  auto db = build();
  mhd::ReportOptions options;
  options.study_id = db->studies().front().id;
  EXPECT_NE(mhd::format_report(*db, options).find("study 'older'"), std::string::npos);
  options.study_id = 999;
  EXPECT_THROW(mhd::format_report(*db, options), mhd::Error);

  mhd::ReportOptions unknown;
  unknown.metrics = {"los"};
  try {
    mhd::format_report(*db, unknown);
    FAIL();
  } catch (const mhd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown metric 'los'; did you mean 'loss'?"), std::string::npos) << e.what();
  }
}

TEST_F(Results, ReportOnAnEmptyFileSaysSo) {
  auto db = mhd::ResultsDb::open(file("empty.sqlite"));
  EXPECT_THROW(mhd::format_report(*db, {}), mhd::Error);
}

}  // namespace
