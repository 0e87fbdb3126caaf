// mhd-viewer's window, offscreen: the study tree (status colours), one tab per chart kind, the
// controls (log y, band, smoothing, steps) redraw without losing the chart, and a study that is still
// being written shows up through the 2 s refresh.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <unistd.h>

#include <QApplication>
#include <QChart>
#include <QChartView>
#include <QCheckBox>
#include <QComboBox>
#include <QElapsedTimer>
#include <QLineSeries>
#include <QListWidget>
#include <QValueAxis>
#include <QSlider>
#include <QStatusBar>
#include <QTabWidget>
#include <QTreeWidget>

#include "main_window.h"
#include "results/results.h"
#include "study/study.h"
#include "query.h"
#include "viewer_test_app.h"

namespace fs = std::filesystem;
using mhd::TrialStatus;
using mhd::viewer::MainWindow;
using mhd::viewer::StudyQuery;

namespace {


class ViewerWindow : public ::testing::Test {
 protected:
  void SetUp() override {
    app();
    dir_ = fs::temp_directory_path() / ("mhd_viewer_window_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    db_ = mhd::ResultsDb::open(path());
    mhd::Study s;
    s.name = "window_test";
    s.toml_text = "[study]\nname = \"window_test\"\n";
    study_ = db_->begin_study(s, mhd::current_environment("cpu", 1));
  }
  void TearDown() override {
    db_.reset();
    fs::remove_all(dir_);
  }
  std::string path() const { return (dir_ / "r.sqlite").string(); }

  std::int64_t add(const std::string& variant, std::int64_t seed, std::int64_t size) {
    mhd::TrialConfig c;
    c.study = "window_test";
    c.variant = variant;
    c.seed = seed;
    c.sweep_point.emplace_back("memory.size", size);
    return db_->add_trial(study_, index_++, c);
  }
  void run(std::int64_t id, double offset, TrialStatus status = TrialStatus::Done) {
    db_->mark_running(id);
    for (std::int64_t step = 1; step <= 5; ++step) {
      db_->add_metric(id, step, "loss", offset + 3.0 / step);
      for (std::int64_t it = 1; it <= 4; ++it) {
        db_->add_trace(id, {step, "forward", it, 1.0 / it, std::pow(0.1, it), std::nan("")});
        db_->add_trace(id, {step, "backward", it, 1.0 / it, std::pow(0.2, it), std::nan("")});
      }
    }
    db_->finish_trial(id, status, status == TrialStatus::Done ? "" : "loss became NaN at step 5", 1.0);
  }

  static QChart* chart_on(QWidget* page) {
    auto* view = page->findChild<QChartView*>();
    return view ? view->chart() : nullptr;
  }
  static QAbstractAxis::AxisType y_axis_type(QWidget* page) {
    QChart* chart = chart_on(page);
    const auto axes = chart ? chart->axes(Qt::Vertical) : QList<QAbstractAxis*>{};
    return axes.isEmpty() ? QAbstractAxis::AxisType(-1) : axes.front()->type();
  }
  // y values of the first line series of the page's chart (a mean line).
  static std::vector<double> first_line_y(QWidget* page) {
    std::vector<double> out;
    QChart* chart = chart_on(page);
    if (!chart) return out;
    for (auto* series : chart->series())
      if (auto* line = qobject_cast<QLineSeries*>(series)) {
        for (const QPointF& p : line->points()) out.push_back(p.y());
        break;
      }
    return out;
  }
  // Number of series the visible chart of `page` has (0 when it shows a message instead).
  static int series_on(QWidget* page) {
    auto* view = page->findChild<QChartView*>();
    return view && view->isVisibleTo(page) && view->chart() ? static_cast<int>(view->chart()->series().size()) : 0;
  }

  fs::path dir_;
  std::unique_ptr<mhd::ResultsDb> db_;
  std::int64_t study_ = 0, index_ = 0;
};

TEST_F(ViewerWindow, TreeTabsAndControls) {
  run(add("base", 0, 4), 0.0);
  run(add("base", 1, 4), 0.1);
  run(add("fp", 0, 4), 0.5);
  run(add("fp", 1, 4), 0.5, TrialStatus::Diverged);
  MainWindow w(StudyQuery::open(path()));
  w.resize(1200, 800);
  w.show();
  QApplication::processEvents();

  auto* tree = w.findChild<QTreeWidget*>();
  ASSERT_NE(tree, nullptr);
  ASSERT_EQ(tree->topLevelItemCount(), 1);
  QTreeWidgetItem* root = tree->topLevelItem(0);
  EXPECT_TRUE(root->text(0).contains("window_test"));
  ASSERT_EQ(root->childCount(), 2);  // variants
  EXPECT_TRUE(root->child(0)->text(0).contains("baseline"));
  EXPECT_EQ(root->child(1)->text(1), "1/2 done");
  QTreeWidgetItem* point = root->child(1)->child(0);  // sweep point memory.size=4
  EXPECT_EQ(point->text(0), "memory.size=4");
  ASSERT_EQ(point->childCount(), 2);
  EXPECT_EQ(point->child(0)->foreground(0).color(), mhd::viewer::status_color(TrialStatus::Done));
  EXPECT_EQ(point->child(1)->foreground(0).color(), mhd::viewer::status_color(TrialStatus::Diverged));
  EXPECT_TRUE(point->child(1)->toolTip(0).contains("loss became NaN"));

  auto* tabs = w.findChild<QTabWidget*>();
  ASSERT_NE(tabs, nullptr);
  ASSERT_EQ(tabs->count(), 5);
  EXPECT_EQ(tabs->tabText(0), "Training curves");
  EXPECT_EQ(tabs->tabText(3), "Solver traces");
  EXPECT_EQ(tabs->tabText(4), "Probes");
  QWidget* curves = tabs->widget(0);
  EXPECT_EQ(series_on(curves), 4) << "two variants: a band and a mean line each";
  // Each control exists (a loop over none would pass) and does what it says.
  const auto boxes = curves->findChildren<QCheckBox*>();
  ASSERT_EQ(boxes.size(), 1);
  ASSERT_EQ(boxes[0]->text(), "log y");
  EXPECT_EQ(y_axis_type(curves), QAbstractAxis::AxisTypeValue);
  boxes[0]->setChecked(true);
  EXPECT_EQ(series_on(curves), 4);
  EXPECT_EQ(y_axis_type(curves), QAbstractAxis::AxisTypeLogValue) << "log y gives a logarithmic axis";
  QComboBox* band = nullptr;
  for (auto* combo : curves->findChildren<QComboBox*>())
    if (combo->findText("no band") >= 0) band = combo;
  ASSERT_NE(band, nullptr) << "the band control";
  band->setCurrentIndex(band->findText("no band"));
  EXPECT_EQ(series_on(curves), 2) << "no band: the mean lines only";
  const auto sliders = curves->findChildren<QSlider*>();
  ASSERT_EQ(sliders.size(), 1) << "the smoothing control";
  const std::vector<double> raw = first_line_y(curves);
  ASSERT_EQ(raw.size(), 5u);
  sliders[0]->setValue(90);
  EXPECT_EQ(series_on(curves), 2);
  const std::vector<double> smoothed = first_line_y(curves);
  ASSERT_EQ(smoothed.size(), 5u);
  EXPECT_EQ(smoothed.front(), raw.front()) << "smoothing starts from the first value";
  EXPECT_GT(smoothed.back(), raw.back()) << "a falling curve smoothed lags above it";

  QWidget* ablation = tabs->widget(1);
  EXPECT_GE(series_on(ablation), 2) << "bars plus error bars";
  QWidget* scaling = tabs->widget(2);
  EXPECT_EQ(series_on(scaling), 5) << "a line and its points per variant, an error bar for base (2 seeds done)";

  QWidget* traces = tabs->widget(3);
  EXPECT_EQ(series_on(traces), 4) << "each trial's last step";
  auto* steps = traces->findChild<QListWidget*>();
  ASSERT_NE(steps, nullptr);
  ASSERT_EQ(steps->count(), 5);
  steps->item(0)->setSelected(true);
  steps->item(2)->setSelected(true);
  EXPECT_EQ(series_on(traces), 8) << "two steps x four trials";
}

TEST_F(ViewerWindow, AStudyStillBeingWrittenShowsUpOnRefresh) {
  const auto first = add("base", 0, 4);
  const auto second = add("base", 1, 4);
  run(first, 0.0);
  MainWindow w(StudyQuery::open(path()));
  w.show();
  QApplication::processEvents();
  EXPECT_TRUE(w.statusBar()->currentMessage().contains("1 pending")) << w.statusBar()->currentMessage().toStdString();
  EXPECT_TRUE(w.statusBar()->currentMessage().contains("refreshing"));

  run(second, 0.2);  // the study goes on while the window is open
  QElapsedTimer clock;
  clock.start();
  while (!w.statusBar()->currentMessage().contains("2 done") && clock.elapsed() < 6000)
    QApplication::processEvents(QEventLoop::AllEvents, 50);
  EXPECT_TRUE(w.statusBar()->currentMessage().contains("2 done")) << w.statusBar()->currentMessage().toStdString();
  EXPECT_FALSE(w.statusBar()->currentMessage().contains("refreshing")) << "finished: no more refreshing";
  auto* tree = w.findChild<QTreeWidget*>();
  EXPECT_EQ(tree->topLevelItem(0)->child(0)->text(1), "2/2 done");
}

}  // namespace
