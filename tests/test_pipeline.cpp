// A tiny study end to end: TOML -> plugins -> training -> SQLite, then the report.
#include <gtest/gtest.h>

#include <map>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <sqlite3.h>

#include "run/pipeline.h"
#include "plugin_host/registry.h"
#include "test_plugins_loaded.h"
#include "results/results.h"
#include "study/study.h"

namespace fs = std::filesystem;

namespace {

mhd::PluginRegistry& registry() { return registry_with_all_plugins(); }

fs::path fresh_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("mhd_pipeline_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string tiny_study(const fs::path& output) {
  return R"(
[study]
name = "tiny"
seeds = [0, 1]
output = ")" + output.string() + R"("
threads = 1
[task]
kind = "associative_recall"
vocab_size = 16
num_pairs = 2
seq_len = 8
[model]
d_model = 16
n_layers = 1
[backbone]
plugin = "mamba"
d_state = 4
[memory]
plugin = "hopfield"
size = 16
[solver]
plugin = "anderson"
max_iter = 8
[optimizations.contractive]
factor = 0.9
[train]
steps = 6
batch = 4
eval_every = 3
eval_batches = 1
log_every = 0
objective = { energy = 0.1, convergence = 0.05, stability = 0.01, jacobian = 0.01 }
[[variant]]
name = "fixed_point"
solver = { plugin = "fixed_point" }
)";
}

std::int64_t count(const std::string& db_path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open_v2(db_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  std::int64_t n = -1;
  if (sqlite3_step(stmt) == SQLITE_ROW) n = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return n;
}

TEST(Pipeline, TinyStudyLandsInSqlite) {
  const auto dir = fresh_dir("tiny");
  const auto out = dir / "tiny.sqlite";
  const auto study_path = dir / "tiny.toml";
  std::ofstream(study_path) << tiny_study(out);

  auto study = mhd::load_study(study_path.string(), registry());
  ASSERT_EQ(study.trials.size(), 4u) << "base + 1 variant, 2 seeds";
  std::ostringstream log;
  auto summary = mhd::run_study(study, registry(), {}, log);
  EXPECT_EQ(summary.done, 4) << log.str();
  EXPECT_EQ(summary.failed, 0) << log.str();

  const std::string db = out.string();
  EXPECT_EQ(count(db, "SELECT COUNT(*) FROM studies"), 1);
  EXPECT_EQ(count(db, "SELECT COUNT(*) FROM trials WHERE status = 'done'"), 4);
  EXPECT_EQ(count(db, "SELECT COUNT(DISTINCT variant) FROM trials"), 2);
  // Every trial records its loss at each of the 6 steps and evaluations at steps 3 and 6.
  EXPECT_EQ(count(db, "SELECT COUNT(*) FROM metrics WHERE name = 'loss'"), 4 * 6);
  EXPECT_EQ(count(db, "SELECT COUNT(*) FROM metrics WHERE name = 'eval_accuracy'"), 4 * 2);
  for (const char* name : {"task_loss", "solver_iters", "abs_residual", "rel_residual", "energy", "step_ms",
                           "lipschitz_fd", "convergence_term", "jacobian_fro2", "objective_task", "objective_energy",
                           "objective_convergence", "objective_stability", "objective_jacobian", "energy_smooth",
                           "converged_share"})
    EXPECT_EQ(count(db, std::string("SELECT COUNT(*) FROM metrics WHERE name = '") + name + "'"), 4 * 6) << name;
  EXPECT_GT(count(db, "SELECT COUNT(*) FROM metrics WHERE name = 'lipschitz_mean'"), 0) << "contractive reports L";
  // Residual traces: one row per forward iteration of every step, and backward solves too.
  EXPECT_EQ(count(db, "SELECT COUNT(*) FROM traces WHERE phase = 'forward'"),
            count(db, "SELECT CAST(SUM(value) AS INTEGER) FROM metrics WHERE name = 'solver_iters'"));
  EXPECT_GT(count(db, "SELECT COUNT(*) FROM traces WHERE phase = 'backward'"), 0);
  EXPECT_EQ(count(db, "SELECT COUNT(*) FROM trials WHERE param_count > 0"), 4);
  EXPECT_NE(log.str().find("fixed_point"), std::string::npos) << "the summary names the variants";

  auto results = mhd::ResultsDb::open(db, /*read_only=*/true);
  mhd::ReportOptions csv;
  csv.csv = true;
  csv.metrics = {"loss"};
  const auto text = mhd::format_report(*results, csv);
  EXPECT_NE(text.find("base,"), std::string::npos) << text;
  EXPECT_NE(text.find("fixed_point,"), std::string::npos) << text;
}

TEST(Pipeline, SameSeedSameNumbers) {
  // Two runs of the same study: each seed's whole loss curve and accuracy repeat exactly, and the
  // other seed's differ (a run that ignored the seed would repeat too).
  const auto dir = fresh_dir("repro");
  using Curves = std::map<std::int64_t, std::vector<mhd::MetricPoint>>;  // seed -> loss curve
  std::vector<Curves> losses(2);
  std::vector<std::map<std::int64_t, double>> accuracy(2);
  for (int run = 0; run < 2; ++run) {
    const auto out = dir / ("run" + std::to_string(run) + ".sqlite");
    auto study = mhd::parse_study(tiny_study(out), (dir / "tiny.toml").string(), registry());
    std::ostringstream log;
    mhd::RunOptions options;
    options.only_variant = "base";
    mhd::run_study(study, registry(), options, log);
    auto db = mhd::ResultsDb::open(out.string(), true);
    const auto trials = db->trials(db->latest_study()->id);
    ASSERT_EQ(trials.size(), 2u) << log.str();
    for (const auto& trial : trials) {
      ASSERT_EQ(trial.status, mhd::TrialStatus::Done) << trial.error;
      losses[run][trial.seed] = db->metric_series(trial.id, "loss");
      accuracy[run][trial.seed] = db->final_metrics(trial.id).at("eval_accuracy");
    }
  }
  auto values = [](const std::vector<mhd::MetricPoint>& curve) {
    std::vector<double> v;
    for (const auto& p : curve) v.push_back(p.value);
    return v;
  };
  for (const std::int64_t seed : {0, 1}) {
    ASSERT_GE(losses[0].at(seed).size(), 2u);
    EXPECT_EQ(values(losses[0].at(seed)), values(losses[1].at(seed))) << "seed " << seed;
    EXPECT_EQ(accuracy[0].at(seed), accuracy[1].at(seed)) << "seed " << seed;
  }
  EXPECT_NE(values(losses[0].at(0)), values(losses[0].at(1))) << "seeds 0 and 1 trained identically";
}

}  // namespace
