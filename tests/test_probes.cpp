// Probe infrastructure (probe.h,): the registry, [probes.NAME] in study files, probe points
// in the results file, and probes running after training with their numbers landing in the results.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

#include "mhd/error.h"
#include "core/model.h"
#include "run/pipeline.h"
#include "probes/probe.h"
#include "results/results.h"
#include "study/study.h"
#include "train/trainer.h"
#include "test_plugins_loaded.h"
#include "tiny_study.h"

namespace fs = std::filesystem;

namespace {

// A probe for these tests: records `scale` * (the model's parameter count > 0) as a metric, a 2x3
// grid of points with value = scale * (10 i + j), and throws when asked to.
class EchoProbe : public mhd::Probe {
 public:
  explicit EchoProbe(const mhd::Params& params) : scale_(params.real("scale")), fail_(params.flag("fail")) {}
  void run(mhd::ProbeContext& context) override {
    if (fail_) throw mhd::Error("boom");
    // Probes run in eval mode with gradients off.
    EXPECT_FALSE(context.model.is_training());
    EXPECT_FALSE(at::GradMode::is_enabled());
    context.sink.metric(context.step, "test_echo_value", scale_ * (context.model.parameter_count() > 0 ? 1.0 : 0.0));
    for (std::int64_t i = 0; i < 2; ++i)
      for (std::int64_t j = 0; j < 3; ++j)
        context.sink.point({"test_echo", "grid", i, j, std::nan(""), std::nan(""), scale_ * (10.0 * i + j)});
  }

 private:
  double scale_;
  bool fail_;
};

MHD_REGISTER_PROBE(test_echo, [] {
  return mhd::ProbeDefinition{
      "test_echo",
      "A test probe: one metric and a 2x3 grid.",
      {mhd::float_param("scale", 1.0, "Multiplies what it records.", 0.0, 100.0),
       mhd::bool_param("fail", false, "Throw instead of measuring.")},
      [](const mhd::Params& p) { return std::make_unique<EchoProbe>(p); }};
});

mhd::PluginRegistry& registry() { return registry_with_all_plugins(); }

fs::path fresh_dir(const std::string& name) {
  auto dir = fs::temp_directory_path() / ("mhd_probes_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string probes_study(const std::string& output, const std::string& extra) {
  return tiny_study("probes", output, extra);
}

mhd::Study parse(const std::string& text) { return mhd::parse_study(text, "probes.toml", registry()); }

std::string parse_error(const std::string& text) {
  try {
    parse(text);
  } catch (const mhd::StudyError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(ProbeRegistry, ListsAndFindsProbes) {
  bool found = false;
  std::string previous;
  for (const auto* definition : mhd::probe_definitions()) {
    EXPECT_LT(previous, definition->name) << "sorted by name";
    previous = definition->name;
    found = found || definition->name == "test_echo";
  }
  EXPECT_TRUE(found);
  EXPECT_EQ(mhd::probe_definition("test_echo").schema.size(), 2u);
  try {
    mhd::probe_definition("test_ecoh");
    FAIL() << "an unknown probe must throw";
  } catch (const mhd::Error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'test_echo'?"), std::string::npos) << e.what();
  }
  EXPECT_THROW(mhd::probe_catalog().add(mhd::probe_definition("test_echo")), mhd::Error) << "registered twice";
}

TEST(ProbeStudy, ParsesValidatesAndOverrides) {
  const auto study = parse(probes_study("x.sqlite", R"([probes.test_echo]
scale = 3
[[variant]]
name = "off"
probes = { test_echo = { enabled = false } }
[sweep]
"probes.test_echo.fail" = [false]
)"));
  ASSERT_EQ(study.trials.size(), 2u);
  ASSERT_EQ(study.trials[0].probes.size(), 1u);
  EXPECT_EQ(study.trials[0].probes[0].plugin, "test_echo");
  EXPECT_DOUBLE_EQ(study.trials[0].probes[0].params.real("scale"), 3.0) << "an integer widens to the float key";
  EXPECT_FALSE(study.trials[0].probes[0].params.flag("fail"));
  EXPECT_TRUE(study.trials[1].probes.empty()) << "the variant switched the probe off";

  // The probes are part of the configuration's identity and survive the JSON round trip.
  const auto& config = study.trials[0];
  const auto back = mhd::TrialConfig::from_json(config.to_json());
  ASSERT_EQ(back.probes.size(), 1u);
  EXPECT_DOUBLE_EQ(back.probes[0].params.real("scale"), 3.0);
  EXPECT_EQ(back.hash(), config.hash());
  EXPECT_NE(study.trials[1].hash(), config.hash());
  // Without probes the JSON is what it was before probes existed (old results stay resumable).
  EXPECT_EQ(study.trials[1].to_json().find("\"probes\":"), std::string::npos);
}

TEST(ProbeStudy, UnknownProbeAndBadKeysPointAtTheFile) {
  // Line 28 is the first line after the tiny study's 27 lines.
  const std::string unknown = parse_error(probes_study("x.sqlite", "[probes.test_ecoh]\n"));
  EXPECT_NE(unknown.find("probes.toml:28:"), std::string::npos) << unknown;
  EXPECT_NE(unknown.find("unknown probe 'test_ecoh'; did you mean 'test_echo'?"), std::string::npos) << unknown;

  const std::string key = parse_error(probes_study("x.sqlite", "[probes.test_echo]\nscal = 2\n"));
  EXPECT_NE(key.find("probes.toml:29:"), std::string::npos) << key;
  EXPECT_NE(key.find("unknown key 'probes.test_echo.scal' for probe 'test_echo'; did you mean 'scale'?"),
            std::string::npos)
      << key;

  const std::string range = parse_error(probes_study("x.sqlite", "[probes.test_echo]\nscale = 1000.0\n"));
  EXPECT_NE(range.find("probes.toml:29:"), std::string::npos) << range;
  EXPECT_NE(range.find("probes.test_echo.scale"), std::string::npos) << range;

  const std::string sweep = parse_error(probes_study("x.sqlite", "[sweep]\n\"probes.test_echo\" = [1]\n"));
  EXPECT_NE(sweep.find("expected probes.NAME.key"), std::string::npos) << sweep;
}

TEST(ProbePoints, RoundTripThroughTheResultsFile) {
  const auto dir = fresh_dir("points");
  const std::string path = (dir / "points.sqlite").string();
  const auto study = parse(probes_study(path, ""));
  std::int64_t trial = 0;
  {
    auto db = mhd::ResultsDb::open(path);
    const auto study_id = db->begin_study(study, mhd::current_environment("cpu", 1));
    trial = db->add_trial(study_id, 0, study.trials[0]);
    db->add_point(trial, {"landscape", "slice", 1, 0, 0.5, -0.5, 2.0});
    db->add_point(trial, {"landscape", "slice", 0, 1, std::nan(""), 1.5, 3.0});
    db->add_point(trial, {"convergence", "energy", 0, 0, 0.0, 0.0, -1.0});
    EXPECT_EQ(db->buffered_rows(), 3u);
    db->flush();
    EXPECT_EQ(db->buffered_rows(), 0u);
  }
  auto db = mhd::ResultsDb::open(path, /*read_only=*/true);
  const auto series = db->probe_series(trial);
  ASSERT_EQ(series.size(), 2u);
  EXPECT_EQ(series[0], std::make_pair(std::string("convergence"), std::string("energy")));
  EXPECT_EQ(series[1], std::make_pair(std::string("landscape"), std::string("slice")));
  const auto points = db->probe_points(trial, "landscape", "slice");
  ASSERT_EQ(points.size(), 2u);
  EXPECT_EQ(points[0].i, 0) << "ordered by i, j";
  EXPECT_EQ(points[0].j, 1);
  EXPECT_TRUE(std::isnan(points[0].x)) << "NaN stored as NULL reads back as NaN";
  EXPECT_DOUBLE_EQ(points[0].y, 1.5);
  EXPECT_DOUBLE_EQ(points[0].value, 3.0);
  EXPECT_EQ(points[1].i, 1);
  EXPECT_DOUBLE_EQ(points[1].x, 0.5);
  EXPECT_DOUBLE_EQ(points[1].value, 2.0);
  EXPECT_TRUE(db->probe_points(trial, "landscape", "nothing").empty());

  auto writer = mhd::ResultsDb::open(path);
  writer->reset_trial(trial);
  EXPECT_TRUE(writer->probe_series(trial).empty()) << "a reset trial loses its points";
}

TEST(ProbeRun, RunsAfterTrainingAndItsNumbersLand) {
  const auto dir = fresh_dir("run");
  const std::string path = (dir / "run.sqlite").string();
  const auto study = parse(probes_study(path, R"([probes.test_echo]
scale = 2.0
[[variant]]
name = "failing"
probes = { test_echo = { fail = true } }
)"));
  ASSERT_EQ(study.trials.size(), 2u);
  std::ostringstream log;
  const auto summary = mhd::run_study(study, registry(), {}, log);
  EXPECT_EQ(summary.done, 1) << log.str();
  EXPECT_EQ(summary.failed, 1) << log.str();

  auto db = mhd::ResultsDb::open(path, true);
  const auto trials = db->trials(summary.study_id);
  ASSERT_EQ(trials.size(), 2u);
  // base: the metric at the last training step, and the grid.
  const auto series = db->metric_series(trials[0].id, "test_echo_value");
  ASSERT_EQ(series.size(), 1u);
  EXPECT_EQ(series[0].step, 2);
  EXPECT_DOUBLE_EQ(series[0].value, 2.0);
  const auto grid = db->probe_points(trials[0].id, "test_echo", "grid");
  ASSERT_EQ(grid.size(), 6u);
  EXPECT_DOUBLE_EQ(grid.back().value, 2.0 * 12.0);
  // failing: the trial fails with the probe's name and message; training's metrics are kept.
  EXPECT_EQ(trials[1].status, mhd::TrialStatus::Failed);
  EXPECT_EQ(trials[1].error, "probe test_echo: boom");
  EXPECT_FALSE(db->metric_series(trials[1].id, "loss").empty());
  EXPECT_GT(trials[1].param_count, 0);
}

}  // namespace
