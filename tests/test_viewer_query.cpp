// mhd-viewer's query layer on hand-built results files with known numbers: mean/std/min/max over
// seeds, one series per variant, step alignment, smoothing, ablation order and baseline, scaling,
// solver traces, and the not-a-results-file error.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "mhd/error.h"
#include "results/results.h"
#include "study/study.h"
#include "query.h"

namespace fs = std::filesystem;
using mhd::TrialStatus;
using mhd::viewer::StudyQuery;

namespace {

class ViewerQuery : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("mhd_viewer_query_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    db_ = mhd::ResultsDb::open(path());
    mhd::Study s;
    s.name = "viewer_test";
    s.toml_text = "[study]\nname = \"viewer_test\"\n";
    study_ = db_->begin_study(s, mhd::current_environment("cpu", 1));
  }
  void TearDown() override {
    db_.reset();
    fs::remove_all(dir_);
  }
  std::string path() const { return (dir_ / "r.sqlite").string(); }

  // Adds a trial and runs it: `values` are `metric` at steps 1, 2, ... (or at `steps`).
  std::int64_t trial(const std::string& variant, std::int64_t seed, const std::vector<double>& values,
                     TrialStatus status = TrialStatus::Done, std::int64_t size = 0,
                     const std::string& metric = "loss", std::vector<std::int64_t> steps = {}) {
    mhd::TrialConfig c;
    c.study = "viewer_test";
    c.variant = variant;
    c.seed = seed;
    if (size > 0) c.sweep_point.emplace_back("memory.size", size);
    const auto id = db_->add_trial(study_, index_++, c);
    if (status == TrialStatus::Pending) return id;
    db_->mark_running(id);
    for (std::size_t i = 0; i < values.size(); ++i)
      db_->add_metric(id, steps.empty() ? static_cast<std::int64_t>(i + 1) : steps[i], metric, values[i]);
    if (status != TrialStatus::Running) db_->finish_trial(id, status, "", 1.0);
    db_->flush();
    return id;
  }

  std::unique_ptr<StudyQuery> query() { return StudyQuery::open(path()); }

  fs::path dir_;
  std::unique_ptr<mhd::ResultsDb> db_;
  std::int64_t study_ = 0;
  std::int64_t index_ = 0;
};

TEST_F(ViewerQuery, CurvesAreMeanStdMinMaxOverSeedsOneSeriesPerVariant) {
  trial("base", 0, {1.0, 4.0});
  trial("base", 1, {3.0, 6.0});
  trial("base", 2, {5.0, 8.0});
  trial("fp", 0, {10.0, 20.0});
  trial("fp", 1, {12.0, 20.0});
  const auto q = query();
  EXPECT_EQ(q->variants(), (std::vector<std::string>{"base", "fp"}));
  EXPECT_EQ(q->seeds(), (std::vector<std::int64_t>{0, 1, 2}));
  EXPECT_EQ(q->baseline(), "base");
  EXPECT_FALSE(q->active());
  const auto curves = q->curves("loss");
  ASSERT_EQ(curves.size(), 2u);
  EXPECT_EQ(curves[0].label, "base");
  EXPECT_EQ(curves[1].label, "fp");
  EXPECT_EQ(curves[0].x, (std::vector<double>{1, 2}));
  EXPECT_DOUBLE_EQ(curves[0].mean[0], 3.0);
  EXPECT_DOUBLE_EQ(curves[0].std[0], 2.0);  // sample std of 1, 3, 5
  EXPECT_DOUBLE_EQ(curves[0].min[0], 1.0);
  EXPECT_DOUBLE_EQ(curves[0].max[0], 5.0);
  EXPECT_DOUBLE_EQ(curves[0].mean[1], 6.0);
  EXPECT_EQ(curves[0].n[0], 3);
  EXPECT_DOUBLE_EQ(curves[1].mean[0], 11.0);
  EXPECT_NEAR(curves[1].std[0], std::sqrt(2.0), 1e-12);
  EXPECT_DOUBLE_EQ(curves[1].std[1], 0.0);
  EXPECT_TRUE(q->curves("no_such_metric").empty());
}

TEST_F(ViewerQuery, StepsAlignAcrossSeedsThatLogDifferentSteps) {
  trial("base", 0, {1.0, 2.0, 3.0}, TrialStatus::Done, 0, "loss", {10, 20, 30});
  trial("base", 1, {4.0, 5.0, std::nan("")}, TrialStatus::Done, 0, "loss", {20, 30, 40});
  const auto curves = query()->curves("loss");
  ASSERT_EQ(curves.size(), 1u);
  EXPECT_EQ(curves[0].x, (std::vector<double>{10, 20, 30}));  // step 40 holds only a NaN
  EXPECT_EQ(curves[0].n, (std::vector<int>{1, 2, 2}));
  EXPECT_DOUBLE_EQ(curves[0].mean[0], 1.0);
  EXPECT_DOUBLE_EQ(curves[0].mean[1], 3.0);  // (2 + 4) / 2: seed 1's first value sits at step 20
  EXPECT_DOUBLE_EQ(curves[0].mean[2], 4.0);
}

TEST_F(ViewerQuery, SmoothingIsAnEmaPerSeedBeforeTheMean) {
  EXPECT_EQ(mhd::viewer::ema({0.0, 10.0, 10.0}, 0.5), (std::vector<double>{0.0, 5.0, 7.5}));
  EXPECT_EQ(mhd::viewer::ema({1.0, 2.0}, 0.0), (std::vector<double>{1.0, 2.0}));
  trial("base", 0, {0.0, 10.0, 10.0});
  trial("base", 1, {4.0, 4.0, 4.0});
  const auto curves = query()->curves("loss", 0.5);
  ASSERT_EQ(curves.size(), 1u);
  EXPECT_DOUBLE_EQ(curves[0].mean[1], (5.0 + 4.0) / 2);
  EXPECT_DOUBLE_EQ(curves[0].mean[2], (7.5 + 4.0) / 2);
  EXPECT_DOUBLE_EQ(curves[0].max[2], 7.5);
}

TEST_F(ViewerQuery, AblationIsFinalValueOfDoneTrialsSortedBestFirstWithBaseline) {
  trial("base", 0, {9.0, 2.0});
  trial("base", 1, {9.0, 4.0});
  trial("good", 0, {9.0, 1.0});
  trial("good", 1, {9.0, 1.0});
  trial("bad", 0, {9.0, 5.0});
  trial("bad", 1, {0.0, 0.0}, TrialStatus::Failed);    // not counted
  trial("bad", 2, {0.0, 0.0}, TrialStatus::Diverged);  // not counted
  trial("late", 0, {0.5}, TrialStatus::Running);       // not done yet: no bar
  const auto q = query();
  EXPECT_TRUE(q->active());
  const auto bars = q->ablation("loss");  // lower is better: ascending
  ASSERT_EQ(bars.size(), 3u);
  EXPECT_EQ(bars[0].variant, "good");
  EXPECT_EQ(bars[1].variant, "base");
  EXPECT_EQ(bars[2].variant, "bad");
  // Final values as mhd report's: the mean of the last 10 logged values ((9 + 2) / 2, (9 + 4) / 2).
  EXPECT_DOUBLE_EQ(bars[1].mean, 6.0);
  EXPECT_NEAR(bars[1].std, std::sqrt(0.5), 1e-12);
  EXPECT_EQ(bars[1].n, 2);
  EXPECT_EQ(bars[2].n, 1);
  EXPECT_TRUE(bars[1].baseline);
  EXPECT_FALSE(bars[0].baseline);
  const auto desc = q->ablation("loss", true);
  EXPECT_EQ(desc.front().variant, "bad");
  EXPECT_TRUE(mhd::viewer::higher_is_better("eval_accuracy"));
  EXPECT_FALSE(mhd::viewer::higher_is_better("loss"));
}

// The charts' final value is mhd report's (FinalRule): a per-step metric the mean of its last 10
// logged values, a held-out one its last evaluation, so a figure and the table beside it agree.
TEST_F(ViewerQuery, AblationFinalValuesAreMhdReportsFinalValues) {
  std::vector<double> noisy(20, 1.0);
  noisy.back() = 11.0;  // one noisy last step: the mean of the last 10 is 2.0, the last value 11.0
  const auto id = trial("base", 0, noisy);
  trial("base", 0, {0.1, 0.2, 0.3}, TrialStatus::Done, 0, "eval_accuracy");
  const auto q = query();
  const auto loss = q->ablation("loss");
  ASSERT_EQ(loss.size(), 1u);
  EXPECT_DOUBLE_EQ(loss[0].mean, 2.0);
  EXPECT_DOUBLE_EQ(mhd::rule_final_metrics(*db_, id).at("loss"), loss[0].mean);
  const auto acc = q->ablation("eval_accuracy");
  ASSERT_EQ(acc.size(), 1u);
  EXPECT_DOUBLE_EQ(acc[0].mean, 0.3) << "a held-out metric: its last evaluation";
}

TEST_F(ViewerQuery, BaselineIsTheFirstVariantWithoutBase) {
  trial("anderson", 0, {1.0});
  trial("broyden", 0, {2.0});
  const auto q = query();
  EXPECT_EQ(q->baseline(), "anderson");
  EXPECT_TRUE(q->ablation("loss")[0].baseline);
}

TEST_F(ViewerQuery, ScalingIsFinalMetricAgainstANumericSweepAxisPerVariant) {
  trial("base", 0, {5.0, 4.0}, TrialStatus::Done, 16);
  trial("base", 1, {5.0, 6.0}, TrialStatus::Done, 16);
  trial("base", 0, {5.0, 1.0}, TrialStatus::Done, 4);
  trial("base", 1, {5.0, 3.0}, TrialStatus::Done, 4);
  trial("fp", 0, {5.0, 7.0}, TrialStatus::Done, 4);
  trial("fp", 0, {5.0, 9.0}, TrialStatus::Done, 16);
  const auto q = query();
  EXPECT_EQ(q->sweep_axes(), (std::vector<std::string>{"memory.size"}));
  EXPECT_EQ(q->numeric_sweep_axes(), (std::vector<std::string>{"memory.size"}));
  EXPECT_EQ(q->sweep_points(), (std::vector<std::string>{"memory.size=16", "memory.size=4"}));
  EXPECT_DOUBLE_EQ(q->trials()[0].sweep_numbers.at("memory.size"), 16.0);
  const auto s = q->scaling("loss", "memory.size");
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].label, "base");
  EXPECT_EQ(s[0].x, (std::vector<double>{4, 16}));  // sorted by the axis
  EXPECT_DOUBLE_EQ(s[0].mean[0], 3.5);  // seeds' finals (5 + 1) / 2 and (5 + 3) / 2, as mhd report's
  EXPECT_DOUBLE_EQ(s[0].mean[1], 5.0);
  EXPECT_NEAR(s[0].std[1], std::sqrt(0.5), 1e-12);
  EXPECT_EQ(s[1].label, "fp");
  EXPECT_EQ(s[1].mean, (std::vector<double>{6.0, 7.0}));
  // With a sweep, curves and ablation keep sweep points apart.
  const auto curves = q->curves("loss");
  ASSERT_EQ(curves.size(), 4u);
  EXPECT_EQ(curves[0].label, "base memory.size=16");
  EXPECT_TRUE(q->scaling("loss", "train.lr").empty());
}

TEST_F(ViewerQuery, TracesPerTrialForChosenStepsAndPhase) {
  const auto id = trial("base", 0, {1.0, 1.0});
  trial("fp", 0, {1.0});
  for (std::int64_t step : {1, 2})
    for (std::int64_t it = 1; it <= 3; ++it) {
      db_->add_trace(id, {step, "forward", it, 1.0 / it, 0.1 / (it * step), std::nan("")});
      if (it <= 2) db_->add_trace(id, {step, "backward", it, 2.0 / it, 0.2 / it, std::nan("")});
    }
  db_->flush();
  const auto q = query();
  EXPECT_EQ(q->trace_steps(), (std::vector<std::int64_t>{1, 2}));
  const auto last = q->traces("forward", {});
  ASSERT_EQ(last.size(), 1u);  // "fp" has no traces
  EXPECT_EQ(last[0].step, 2);
  EXPECT_EQ(last[0].iteration, (std::vector<double>{1, 2, 3}));
  EXPECT_DOUBLE_EQ(last[0].residual[2], 0.1 / 6);
  const auto both = q->traces("forward", {1, 2}, /*relative=*/false);
  ASSERT_EQ(both.size(), 2u);
  EXPECT_DOUBLE_EQ(both[0].residual[1], 0.5);
  const auto backward = q->traces("backward", {1});
  ASSERT_EQ(backward.size(), 1u);
  EXPECT_EQ(backward[0].iteration.size(), 2u);
  EXPECT_EQ(backward[0].label, "base seed=0 step 1");
}

TEST_F(ViewerQuery, PendingTrialsAndReloadSeeAStudyBeingWritten) {
  const auto pending = trial("base", 0, {}, TrialStatus::Pending);
  const auto q = query();
  EXPECT_TRUE(q->active());
  EXPECT_TRUE(q->curves("loss").empty());
  db_->mark_running(pending);
  db_->add_metric(pending, 1, "loss", 2.5);
  db_->finish_trial(pending, TrialStatus::Done, "", 1.0);
  q->reload();
  EXPECT_FALSE(q->active());
  ASSERT_EQ(q->curves("loss").size(), 1u);
  EXPECT_EQ(q->metric_names(), (std::vector<std::string>{"loss"}));
}

TEST_F(ViewerQuery, NotAResultsFileIsAClearError) {
  const auto text = (dir_ / "study.toml").string();
  std::ofstream(text) << "[study]\nname = \"x\"\n";
  try {
    StudyQuery::open(text);
    FAIL() << "opened a TOML file";
  } catch (const mhd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not an mhd results file"), std::string::npos) << e.what();
  }
  try {
    StudyQuery::open(path(), 99);
    FAIL() << "opened a study that does not exist";
  } catch (const mhd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no study 99"), std::string::npos) << e.what();
  }
}

}  // namespace
