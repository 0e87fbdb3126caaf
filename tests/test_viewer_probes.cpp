// mhd-viewer's probe page: how points are classified for drawing (probe_shape), the query layer's
// probe functions on a hand-built results file, and the PNGs exported from a real study with
// [probes.convergence] (tests/viewer/export_probes.sh) — present, at the export size, not blank.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <unistd.h>

#include <QColor>
#include <QDir>
#include <QImage>
#include <QSet>

#include "results/results.h"
#include "study/study.h"
#include "query.h"

namespace fs = std::filesystem;
using mhd::ProbePoint;
using mhd::viewer::ProbeShape;

namespace {

const double kNaN = std::nan("");

TEST(ProbeShape, CurvesGridsAndPaths) {
  // Trajectories of a value against the iteration: y is the value (or not stored).
  EXPECT_EQ(mhd::viewer::probe_shape({{"p", "e", 0, 0, 0, 2.0, 2.0}, {"p", "e", 0, 1, 1, 1.5, 1.5}}), ProbeShape::Curves);
  EXPECT_EQ(mhd::viewer::probe_shape({{"p", "e", 0, 0, kNaN, kNaN, 2.0}}), ProbeShape::Curves);
  // A 2 x 3 grid: x follows i, y follows j, value apart.
  std::vector<ProbePoint> grid;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) grid.push_back({"p", "slice", i, j, -1.0 + i, -1.0 + 0.5 * j, 10.0 * i + j});
  EXPECT_EQ(mhd::viewer::probe_shape(grid), ProbeShape::Grid);
  // A missing cell, or an x that moves along j (a path in a plane), is not a grid.
  auto holed = grid;
  holed.pop_back();
  EXPECT_EQ(mhd::viewer::probe_shape(holed), ProbeShape::Paths);
  auto path = grid;
  path[1].x = 5.0;
  EXPECT_EQ(mhd::viewer::probe_shape(path), ProbeShape::Paths);
}

TEST(ProbeQuery, SeriesTrialsAndPoints) {
  const fs::path dir = fs::temp_directory_path() / ("mhd_viewer_probes_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "r.sqlite").string();
  {
    auto db = mhd::ResultsDb::open(path);
    mhd::Study s;
    s.name = "viewer_probes";
    s.toml_text = "[study]\nname = \"viewer_probes\"\n";
    const auto study = db->begin_study(s, mhd::current_environment("cpu", 1));
    for (std::int64_t k = 0; k < 2; ++k) {
      mhd::TrialConfig c;
      c.study = s.name;
      c.variant = k == 0 ? "a" : "b";
      const auto id = db->add_trial(study, k, c);
      db->add_point(id, {"convergence", "lipschitz", 0, 0, 0.0, 0.5, 0.5});
      if (k == 1) db->add_point(id, {"landscape", "energy_slice", 1, 2, 0.1, 0.2, 3.0});
      db->finish_trial(id, mhd::TrialStatus::Done, "", 1.0);
    }
  }
  auto q = mhd::viewer::StudyQuery::open(path);
  const auto series = q->probe_series();
  ASSERT_EQ(series.size(), 2u);
  EXPECT_EQ(series[0].first, "convergence");
  EXPECT_EQ(series[1].second, "energy_slice");
  EXPECT_EQ(q->probe_trials("convergence", "lipschitz").size(), 2u);
  const auto only_b = q->probe_trials("landscape", "energy_slice");
  ASSERT_EQ(only_b.size(), 1u);
  EXPECT_EQ(only_b[0]->row.variant, "b");
  const auto points = q->probe_points(only_b[0]->row.id, "landscape", "energy_slice");
  ASSERT_EQ(points.size(), 1u);
  EXPECT_EQ(points[0].j, 2);
  EXPECT_DOUBLE_EQ(points[0].value, 3.0);
  fs::remove_all(dir);
}

class ProbeExport : public ::testing::TestWithParam<const char*> {};

TEST_P(ProbeExport, ChartIsDrawn) {
  const QString file = QDir(QStringLiteral(MHD_VIEWER_PROBES_PNG_DIR)).filePath(QString::fromUtf8(GetParam()) + ".png");
  const QImage image = QImage(file).convertToFormat(QImage::Format_RGB32);
  ASSERT_FALSE(image.isNull()) << "missing or unreadable: " << file.toStdString();
  EXPECT_EQ(image.size(), QSize(1200, 800));
  QSet<QRgb> colors;
  int saturated = 0, dark = 0;
  for (int y = 0; y < image.height(); y += 2)
    for (int x = 0; x < image.width(); x += 2) {
      const QColor c(image.pixel(x, y));
      colors.insert(c.rgb());
      if (c.hsvSaturation() > 80) ++saturated;
      if (qGray(c.rgb()) < 150) ++dark;
    }
  EXPECT_GT(colors.size(), 20) << "looks blank";
  EXPECT_GT(saturated, 30) << "no series drawn";
  EXPECT_GT(dark, 200) << "no text (title, axis labels)";
}

INSTANTIATE_TEST_SUITE_P(Viewer, ProbeExport,
                         ::testing::Values("probe_convergence_energy_along_iterations", "probe_convergence_lipschitz",
                                           "probe_convergence_return_ratio",
                                           "probe_convergence_lyapunov_log_distance"));

}  // namespace
