// mhd-viewer --export's text layout on a hand-built results file with the ablation ladder's long variant
// names (studies/ablation.toml: "hierarchical_memory", "all_with_early_exit", ...) at a sweep point:
// the exported ablation chart draws every category label whole, horizontal and inside the image, with
// none overlapping another or the plot, best variant at the top; Qt's own layout of the same chart
// cuts a label (negative control); the window's Ablation tab fits its labels the same way at any size;
// curves of one seed draw no band; a study with one bar per metric gets no ablation chart. Also a bottom
// category axis with the ladder's names (the old
// ablation's slanted labels, cut to "all_optimizations (n..."), which must end up whole too.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <unistd.h>

#include <QApplication>
#include <QAreaSeries>
#include <QBarCategoryAxis>
#include <QBarSeries>
#include <QBarSet>
#include <QChart>
#include <QChartView>
#include <QGraphicsScene>
#include <QGraphicsTextItem>
#include <QLineSeries>
#include <QRegularExpression>
#include <QValueAxis>

#include "chart_page.h"
#include "query.h"
#include "results/results.h"
#include "study/study.h"
#include "viewer_test_app.h"

namespace fs = std::filesystem;

namespace {


// The ladder of studies/ablation.toml, plus a name longer than Qt lets an axis label be (about 40% of
// the chart's width), which has to be broken after its underscores.
const std::vector<std::string> kVariants = {
    "base", "hybrid_backbone", "hierarchical_memory", "lbfgs_solver", "all_optimizations", "all_with_early_exit",
    "hierarchical_memory_with_every_optimization_enabled_and_the_early_exit_solver_at_tol_1e-4"};
const QSize kSize(1200, 800);

class ExportLayout : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("mhd_viewer_layout_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    auto db = mhd::ResultsDb::open((dir_ / "r.sqlite").string());
    mhd::Study s;
    s.name = "layout_test";
    s.toml_text = "[study]\nname = \"layout_test\"\n";
    const auto study = db->begin_study(s, mhd::current_environment("cpu", 1));
    std::int64_t index = 0;
    for (std::size_t v = 0; v < kVariants.size(); ++v)
      for (std::int64_t seed = 0; seed < 3; ++seed) {
        mhd::TrialConfig c;
        c.study = "layout_test";
        c.variant = kVariants[v];
        c.seed = seed;
        c.sweep_point.emplace_back("task.num_pairs", std::int64_t{8});
        const auto id = db->add_trial(study, index++, c);
        db->mark_running(id);
        // Accuracy falls down the list, so the best-first order is the list's; seeds spread it.
        db->add_metric(id, 10, "eval_accuracy", 0.9 - 0.1 * static_cast<double>(v) + 0.01 * static_cast<double>(seed));
        db->add_metric(id, 10, "chance_accuracy", 1.0 / 32.0);
        db->finish_trial(id, mhd::TrialStatus::Done, "", 1.0);
      }
    db->flush();
    db->finish_study(study);
    // One variant at one sweep point, one seed (the quickstart's shape).
    auto one = mhd::ResultsDb::open((dir_ / "one.sqlite").string());
    const auto one_study = one->begin_study(s, mhd::current_environment("cpu", 1));
    mhd::TrialConfig c;
    c.study = "layout_test";
    c.variant = "base";
    const auto id = one->add_trial(one_study, 0, c);
    one->mark_running(id);
    one->add_metric(id, 10, "eval_accuracy", 0.5);
    one->finish_trial(id, mhd::TrialStatus::Done, "", 1.0);
    one->flush();
    one->finish_study(one_study);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static std::unique_ptr<mhd::viewer::StudyQuery> query() {
    app();
    return mhd::viewer::StudyQuery::open((dir_ / "r.sqlite").string());
  }

  // The ablation chart of eval_accuracy as the export builds it (the Ablation page's exportCharts).
  static std::unique_ptr<QChart> ablation(const mhd::viewer::StudyQuery& q) {
    QWidget holder;
    mhd::viewer::ExportOptions o;
    o.metrics = {"eval_accuracy"};
    for (auto* page : mhd::viewer::make_chart_pages(&holder))
      if (page->title() == QStringLiteral("Ablation"))
        for (auto& c : page->exportCharts(q, o))
          if (c.name == QStringLiteral("ablation_eval_accuracy")) return std::move(c.chart);
    return nullptr;
  }

  static fs::path dir_;
};
fs::path ExportLayout::dir_;

// Shows `chart` in `view` at the export's size, laid out as --export does (or as Qt alone does).
void show(QChartView& view, QChart* chart, bool export_layout) {
  if (export_layout) mhd::viewer::lay_out_for_export(chart, kSize);
  view.setChart(chart);
  view.setFrameShape(QFrame::NoFrame);
  view.resize(kSize);
  view.show();
  view.grab();  // paints, as the export does before it reads the scene
}

// A text without line breaks and spaces: a label broken into lines reads as the same name.
QString letters(QString text) {
  text.replace(QStringLiteral("<br>"), QStringLiteral(" "));
  return text.remove(QRegularExpression(QStringLiteral("\\s")));
}

// The visible text items drawing `category`'s letters, in the scene.
std::vector<QGraphicsTextItem*> drawn(const QGraphicsScene& scene, const QString& category) {
  std::vector<QGraphicsTextItem*> out;
  for (QGraphicsItem* item : scene.items())
    if (auto* t = dynamic_cast<QGraphicsTextItem*>(item); t && t->isVisible() && letters(t->toPlainText()) == letters(category))
      out.push_back(t);
  return out;
}

// What a category label must show: the names as the chart was built, before the export re-broke them.
QStringList full_labels(const mhd::viewer::StudyQuery& q) {
  QStringList out;
  for (const auto& b : q.ablation("eval_accuracy"))
    out << (b.baseline ? QStringLiteral("\u2605 ") : QString()) + QString::fromStdString(b.variant) + " " +
               QString::fromStdString(b.sweep) + QStringLiteral(" (n=%1)").arg(b.n);
  return out;
}

TEST_F(ExportLayout, EveryAblationLabelIsWholeHorizontalInsideTheImageAndApart) {
  const auto q = query();
  auto owned = ablation(*q);
  ASSERT_TRUE(owned);
  QChart* chart = owned.release();
  QChartView view;
  show(view, chart, true);
  EXPECT_TRUE(mhd::viewer::elided_texts(*view.scene()).isEmpty())
      << mhd::viewer::elided_texts(*view.scene()).join(", ").toStdString();
  const QRectF image(QPointF(0, 0), QSizeF(kSize));
  const QRectF plot = chart->plotArea();
  std::vector<QRectF> rects;
  for (const QString& label : full_labels(*q)) {
    const auto items = drawn(*view.scene(), label);
    ASSERT_EQ(items.size(), 1u) << "not drawn whole: " << label.toStdString();
    const QRectF r = items[0]->sceneBoundingRect();
    EXPECT_EQ(items[0]->rotation(), 0.0) << label.toStdString();
    EXPECT_TRUE(image.contains(r)) << label.toStdString() << " leaves the image";
    EXPECT_LE(r.right(), plot.left() + 1.0) << label.toStdString() << " runs into the plot";
    EXPECT_GT(r.height(), 0.0);
    for (const QRectF& other : rects)
      EXPECT_FALSE(r.adjusted(1, 1, -1, -1).intersects(other)) << label.toStdString() << " overlaps another label";
    rects.push_back(r);
  }
  // Best first, at the top: the labels' y order is the ablation's order.
  for (std::size_t i = 1; i < rects.size(); ++i) EXPECT_LT(rects[i - 1].center().y(), rects[i].center().y());
  // Every other text (title, value axis, legend) is inside the image too.
  for (QGraphicsItem* item : view.scene()->items())
    if (auto* t = dynamic_cast<QGraphicsTextItem*>(item); t && t->isVisible() && !t->toPlainText().isEmpty())
      EXPECT_TRUE(image.contains(t->sceneBoundingRect())) << t->toPlainText().toStdString() << " leaves the image";
}

// Negative control: Qt's own layout of the same chart cuts the long name, and the checks above see it.
TEST_F(ExportLayout, QtAloneCutsTheLongestName) {
  const auto q = query();
  auto owned = ablation(*q);
  ASSERT_TRUE(owned);
  QChartView view;
  show(view, owned.release(), false);
  EXPECT_FALSE(mhd::viewer::elided_texts(*view.scene()).isEmpty());
  int whole = 0;
  for (const QString& label : full_labels(*q)) whole += drawn(*view.scene(), label).size() == 1;
  EXPECT_LT(whole, full_labels(*q).size()) << "Qt drew every label whole: the test shows nothing";
}

// The chance line of an accuracy ablation is vertical, at chance, across every bar.
TEST_F(ExportLayout, ChanceIsAVerticalLineAcrossTheBars) {
  const auto q = query();
  auto chart = ablation(*q);
  ASSERT_TRUE(chart);
  QLineSeries* chance = nullptr;
  for (auto* s : chart->series())
    if (auto* line = qobject_cast<QLineSeries*>(s); line && line->name().startsWith(QStringLiteral("chance ")))
      chance = line;
  ASSERT_TRUE(chance);
  ASSERT_EQ(chance->count(), 2);
  EXPECT_EQ(chance->at(0).x(), 1.0 / 32.0);
  EXPECT_EQ(chance->at(1).x(), 1.0 / 32.0);
  EXPECT_LE(chance->at(0).y(), -0.5);
  EXPECT_GE(chance->at(1).y(), static_cast<double>(kVariants.size()) - 0.5);
}

// A study with a single bar per metric gets no ablation chart: it would compare nothing.
TEST_F(ExportLayout, OneBarIsNoAblationChart) {
  app();
  const auto q = mhd::viewer::StudyQuery::open((dir_ / "one.sqlite").string());
  QWidget holder;
  mhd::viewer::ExportOptions o;
  o.metrics = {"eval_accuracy"};
  std::vector<QString> names;
  for (auto* page : mhd::viewer::make_chart_pages(&holder))
    for (const auto& c : page->exportCharts(*q, o)) names.push_back(c.name);
  EXPECT_EQ(std::count(names.begin(), names.end(), QStringLiteral("ablation_eval_accuracy")), 0);
  ASSERT_TRUE(ablation(*query())) << "two or more bars do get one";
}

// The window's Ablation tab draws the same chart: its labels are fitted to the view as the export fits
// them to the PNG, at any window size, where Qt alone cuts one (QtAloneCutsTheLongestName).
TEST_F(ExportLayout, TheAblationTabFitsItsLabelsToTheWindow) {
  const auto q = query();
  QWidget holder;
  mhd::viewer::ChartPage* page = nullptr;
  for (auto* p : mhd::viewer::make_chart_pages(&holder))
    if (p->title() == QStringLiteral("Ablation")) page = p;
  ASSERT_TRUE(page);
  page->setParent(nullptr);
  std::unique_ptr<mhd::viewer::ChartPage> owned(page);
  page->setQuery(q.get());  // eval_accuracy is its default metric
  for (const QSize size : {kSize, QSize(900, 700), QSize(1400, 900)}) {
    page->resize(size);
    page->show();
    page->grab();
    auto* view = page->findChild<QChartView*>();
    ASSERT_TRUE(view);
    EXPECT_TRUE(mhd::viewer::elided_texts(*view->scene()).isEmpty())
        << size.width() << "x" << size.height() << ": " << mhd::viewer::elided_texts(*view->scene()).join(", ").toStdString();
    for (const QString& label : full_labels(*q))
      EXPECT_EQ(drawn(*view->scene(), label).size(), 1u) << size.width() << "x" << size.height() << ": " << label.toStdString();
  }
}

// Curves of one seed have no spread to shade: no band, and the title says "one seed"; with three seeds
// the band is there and the title counts them. An accuracy axis starts at 0 either way.
TEST_F(ExportLayout, CurvesShadeASpreadOnlyWhenThereIsOne) {
  app();
  auto curves = [](const mhd::viewer::StudyQuery& q) {
    QWidget holder;
    mhd::viewer::ExportOptions o;
    o.metrics = {"eval_accuracy"};
    for (auto* page : mhd::viewer::make_chart_pages(&holder))
      if (page->title() == QStringLiteral("Training curves"))
        for (auto& c : page->exportCharts(q, o)) return std::move(c.chart);
    return std::unique_ptr<QChart>();
  };
  auto areas = [](QChart* chart) {
    int n = 0;
    for (auto* s : chart->series()) n += qobject_cast<QAreaSeries*>(s) != nullptr;
    return n;
  };
  auto y_min = [](QChart* chart) { return qobject_cast<QValueAxis*>(chart->axes(Qt::Vertical).front())->min(); };
  const auto one = mhd::viewer::StudyQuery::open((dir_ / "one.sqlite").string());
  auto single = curves(*one);
  ASSERT_TRUE(single);
  EXPECT_TRUE(single->title().contains(QStringLiteral("one seed"))) << single->title().toStdString();
  EXPECT_FALSE(single->title().contains(QStringLiteral("band"))) << single->title().toStdString();
  EXPECT_EQ(areas(single.get()), 0);
  EXPECT_EQ(y_min(single.get()), 0.0) << "an accuracy of 0.5 alone must still read from 0";
  auto three = curves(*query());
  ASSERT_TRUE(three);
  EXPECT_TRUE(three->title().contains(QStringLiteral("mean over 3 seeds, band min..max"))) << three->title().toStdString();
  EXPECT_EQ(areas(three.get()), static_cast<int>(kVariants.size()));
  EXPECT_EQ(y_min(three.get()), 0.0);
}

// A bottom category axis with the ladder's names: the category width the old estimate assumed was
// wider than Qt's, which cut "hybrid_backbone (n..." and "all_optimizations (n..."; the layout now
// reads Qt's widths and turns the labels vertical when they do not fit.
TEST(ExportLayoutBottomAxis, LadderNamesUnderBarsAreWhole) {
  app();
  auto make = [] {
    auto chart = mhd::viewer::new_chart(QStringLiteral("bars"));
    auto* set = new QBarSet(QStringLiteral("eval_accuracy"));
    QStringList categories;
    for (std::size_t i = 0; i + 1 < kVariants.size(); ++i) {
      *set << 1.0 - 0.1 * static_cast<double>(i);
      categories << QString::fromStdString(kVariants[i]) + QStringLiteral("<br>(n=3)");
    }
    auto* bars = new QBarSeries();
    bars->append(set);
    chart->addSeries(bars);
    auto* x = new QBarCategoryAxis();
    x->append(categories);
    x->setLabelsAngle(-30);
    chart->addAxis(x, Qt::AlignBottom);
    bars->attachAxis(x);
    return chart;
  };
  QChartView view;
  QChart* chart = make().release();
  show(view, chart, true);
  EXPECT_TRUE(mhd::viewer::elided_texts(*view.scene()).isEmpty())
      << mhd::viewer::elided_texts(*view.scene()).join(", ").toStdString();
  const QRectF image(QPointF(0, 0), QSizeF(kSize));
  for (std::size_t i = 0; i + 1 < kVariants.size(); ++i) {
    const QString label = QString::fromStdString(kVariants[i]) + QStringLiteral(" (n=3)");
    const auto items = drawn(*view.scene(), label);
    ASSERT_EQ(items.size(), 1u) << "not drawn whole: " << label.toStdString();
    EXPECT_TRUE(image.contains(items[0]->sceneBoundingRect())) << label.toStdString() << " leaves the image";
    EXPECT_GE(items[0]->sceneBoundingRect().top(), chart->plotArea().bottom() - 1.0) << label.toStdString();
  }
}

}  // namespace
