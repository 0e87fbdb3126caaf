// `mhd-viewer --export` on a real tiny study (tests/viewer/export_tiny.sh runs it and exports it):
// * the PNGs: each expected chart exists, is 1200x800, and is a drawn chart, not a blank image —
//   several distinct colours and dark text in the axis-label regions; constant metrics have none;
// * the charts themselves, built by the pages' exportCharts from the same results file as --export
//   builds them: the points are the means over seeds and are drawn at their place in the rendered
//   image, --metric filters (a did-you-mean for a typo), --log-y gives a log axis, --smooth is the
//   curves page's smoothing, chance and tol lines sit at the study's values, and no text is elided.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <memory>
#include <set>
#include <string>

#include <QApplication>
#include <QBarCategoryAxis>
#include <QBarSeries>
#include <QBarSet>
#include <QCategoryAxis>
#include <QChart>
#include <QChartView>
#include <QColor>
#include <QDir>
#include <QImage>
#include <QLineSeries>
#include <QLogValueAxis>
#include <QSet>
#include <QValueAxis>

#include "chart_page.h"
#include "mhd/error.h"
#include "query.h"
#include "viewer_test_app.h"

namespace {

using mhd::viewer::ExportChart;
using mhd::viewer::ExportOptions;
using mhd::viewer::StudyQuery;

const QString kDir = QStringLiteral(MHD_VIEWER_PNG_DIR);

QImage load(const QString& name) {
  QImage image(QDir(kDir).filePath(name));
  return image.convertToFormat(QImage::Format_RGB32);
}

int distinct_colors(const QImage& image) {
  QSet<QRgb> colors;
  for (int y = 0; y < image.height(); y += 2)
    for (int x = 0; x < image.width(); x += 2) colors.insert(image.pixel(x, y));
  return colors.size();
}

// Dark (text-like) pixels in a rectangle.
int dark_pixels(const QImage& image, const QRect& rect) {
  int n = 0;
  for (int y = rect.top(); y <= rect.bottom(); ++y)
    for (int x = rect.left(); x <= rect.right(); ++x)
      if (qGray(image.pixel(x, y)) < 150) ++n;
  return n;
}

// Pixels of a saturated colour (a series, a band, a bar) anywhere in the image.
int colored_pixels(const QImage& image) {
  int n = 0;
  for (int y = 0; y < image.height(); y += 2)
    for (int x = 0; x < image.width(); x += 2)
      if (QColor(image.pixel(x, y)).hsvSaturation() > 80) ++n;
  return n;
}

class Export : public ::testing::TestWithParam<const char*> {};

TEST_P(Export, ChartIsDrawnAtTheFixedSize) {
  const QString name = QString::fromUtf8(GetParam()) + QStringLiteral(".png");
  const QImage image = load(name);
  ASSERT_FALSE(image.isNull()) << "missing or unreadable: " << QDir(kDir).filePath(name).toStdString();
  EXPECT_EQ(image.width(), 1200);
  EXPECT_EQ(image.height(), 800);
  EXPECT_GT(distinct_colors(image), 20) << "looks blank";
  EXPECT_GT(colored_pixels(image), 500) << "no series drawn";
  // Axis labels: the y labels sit in the left strip, the x labels and title in the bottom band, the
  // chart title at the top.
  EXPECT_GT(dark_pixels(image, QRect(0, 60, 140, 640)), 80) << "no y-axis text";
  EXPECT_GT(dark_pixels(image, QRect(60, 640, 1100, 159)), 150) << "no x-axis text";
  EXPECT_GT(dark_pixels(image, QRect(100, 0, 1000, 50)), 100) << "no title";
}

INSTANTIATE_TEST_SUITE_P(Viewer, Export,
                         ::testing::Values("curves_loss", "curves_rel_residual", "ablation_loss",
                                           "ablation_task_loss", "scaling_memory.size_loss",
                                           "scaling_memory.size_task_loss", "traces_forward",
                                           "traces_backward"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& c : s)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

TEST(ExportWindow, TheWindowWithItsStudyTreeIsRendered) {
  const QImage image = load(QStringLiteral("window.png"));
  ASSERT_FALSE(image.isNull());
  EXPECT_EQ(image.size(), QSize(1500, 900));
  EXPECT_GT(distinct_colors(image), 20);
  // The tree on the left: text of the study, variants and trials; done trials in green.
  EXPECT_GT(dark_pixels(image, QRect(0, 0, 300, 400)), 200) << "no study tree text";
  int green = 0;
  for (int y = 0; y < 600; ++y)
    for (int x = 0; x < 320; ++x) {
      const QColor c(image.pixel(x, y));
      if (c.green() > 110 && c.red() < 80 && c.blue() < 80) ++green;
    }
  EXPECT_GT(green, 30) << "no done trial coloured green";
}

TEST(ExportBlank, AnEmptyImageFailsTheChecks) {
  QImage blank(1200, 800, QImage::Format_RGB32);
  blank.fill(Qt::white);
  EXPECT_LT(distinct_colors(blank), 20);
  EXPECT_EQ(colored_pixels(blank), 0);
  EXPECT_EQ(dark_pixels(blank, QRect(0, 60, 140, 640)), 0);
}

// A metric with one value over the whole study (lr, solver_tol, chance_accuracy; in this 4-step
// study also eval_accuracy, 0 everywhere) gets no PNG by default; the others do.
TEST(ExportFiles, ConstantMetricsAreSkipped) {
  const QDir dir(kDir);
  for (const char* constant : {"curves_lr", "curves_chance_accuracy", "curves_solver_tol", "ablation_parameter_count",
                               "scaling_memory.size_lr"})
    EXPECT_FALSE(dir.exists(QString::fromUtf8(constant) + ".png")) << constant << " is constant but was exported";
  for (const char* varying : {"curves_loss", "curves_task_loss", "ablation_loss"})
    EXPECT_TRUE(dir.exists(QString::fromUtf8(varying) + ".png")) << varying;
}

// --- the charts, in this process ------------------------------------------------------------------


// The tiny study's results file; every test that reads it draws, so the application is made here.
std::unique_ptr<StudyQuery> tiny() {
  app();
  return StudyQuery::open(MHD_VIEWER_TINY_DB);
}

// The charts the page titled `title` ("Training curves", "Ablation", "Scaling", "Solver traces")
// exports with `options`, as --export does.
std::vector<ExportChart> export_page(const QString& title, const StudyQuery& q, const ExportOptions& options) {
  app();
  QWidget holder;
  for (auto* page : mhd::viewer::make_chart_pages(&holder))
    if (page->title() == title) return page->exportCharts(q, options);
  ADD_FAILURE() << "no chart page titled " << title.toStdString();
  return {};
}

ExportOptions with_metrics(std::vector<std::string> metrics) {
  ExportOptions o;
  o.metrics = std::move(metrics);
  return o;
}

std::unique_ptr<QChart> only_chart(std::vector<ExportChart> charts, const QString& name) {
  for (auto& c : charts)
    if (c.name == name) return std::move(c.chart);
  ADD_FAILURE() << "no chart " << name.toStdString();
  return nullptr;
}

QLineSeries* line_named(QChart* chart, const QString& name) {
  for (auto* s : chart->series())
    if (auto* line = qobject_cast<QLineSeries*>(s); line && line->name() == name) return line;
  return nullptr;
}

QAbstractAxis* y_axis(QChart* chart) {
  const auto axes = chart->axes(Qt::Vertical);
  return axes.isEmpty() ? nullptr : axes.front();
}

TEST(ExportMetrics, ConstantMetricsAreLeftOutUnlessKept) {
  const auto q = tiny();
  // The rule tells them apart: lr has one value, loss many.
  EXPECT_EQ(q->distinct_values("lr").size(), 1u);
  EXPECT_GT(q->distinct_values("loss").size(), 1u);
  const auto drawn = mhd::viewer::export_metrics(*q, {}, false);
  auto has = [](const std::vector<std::string>& v, const char* m) { return std::find(v.begin(), v.end(), m) != v.end(); };
  // By default the headline metrics that vary; grad_norm varies but is not one of them.
  for (const char* m : {"loss", "task_loss", "rel_residual"}) EXPECT_TRUE(has(drawn, m)) << m;
  for (const char* m : {"lr", "chance_accuracy", "solver_tol", "parameter_count", "grad_norm"}) EXPECT_FALSE(has(drawn, m)) << m;
  for (const auto& m : drawn)
    EXPECT_NE(std::find(mhd::viewer::headline_metrics().begin(), mhd::viewer::headline_metrics().end(), m),
              mhd::viewer::headline_metrics().end()) << m;
  const auto all = mhd::viewer::export_metrics(*q, {}, false, /*all_metrics=*/true);
  EXPECT_TRUE(has(all, "grad_norm"));
  EXPECT_FALSE(has(all, "lr"));
  const auto kept = mhd::viewer::export_metrics(*q, {}, true, /*all_metrics=*/true);
  EXPECT_EQ(kept, q->metric_names());
  EXPECT_TRUE(has(kept, "lr"));
}

TEST(ExportMetrics, MetricFiltersTheChartsAndATypoIsOneLineWithAHint) {
  const auto q = tiny();
  // A named constant metric is drawn: the user asked for it.
  EXPECT_EQ(mhd::viewer::export_metrics(*q, {"loss", "lr", "loss"}, false), (std::vector<std::string>{"loss", "lr"}));
  std::vector<QString> names;
  for (const auto& c : export_page("Training curves", *q, with_metrics({"loss"}))) names.push_back(c.name);
  EXPECT_EQ(names, std::vector<QString>{"curves_loss"});
  names.clear();
  for (const auto& c : export_page("Ablation", *q, with_metrics({"grad_norm", "loss"}))) names.push_back(c.name);
  EXPECT_EQ(names, (std::vector<QString>{"ablation_grad_norm", "ablation_loss"}));
  try {
    mhd::viewer::export_metrics(*q, {"loss", "losss"}, false);
    FAIL() << "an unknown metric was accepted";
  } catch (const mhd::Error& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("unknown metric 'losss'; did you mean 'loss'?"), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

TEST(ExportCurves, PointsAreTheMeansOverSeedsInsideTheAxes) {
  const auto q = tiny();
  auto chart = only_chart(export_page("Training curves", *q, with_metrics({"loss"})), "curves_loss");
  ASSERT_TRUE(chart);
  const auto series = q->curves("loss");
  ASSERT_EQ(series.size(), 4u);  // 2 variants x 2 sweep points
  auto* y = qobject_cast<QValueAxis*>(y_axis(chart.get()));
  ASSERT_TRUE(y);
  EXPECT_GE(y->min(), 0.0) << "a loss gets no negative axis";
  for (const auto& s : series) {
    QLineSeries* line = line_named(chart.get(), QString::fromStdString(s.label));
    ASSERT_TRUE(line) << s.label;
    ASSERT_EQ(line->count(), static_cast<int>(s.x.size())) << s.label;
    for (int i = 0; i < line->count(); ++i) {
      EXPECT_DOUBLE_EQ(line->at(i).x(), s.x[i]);
      EXPECT_DOUBLE_EQ(line->at(i).y(), s.mean[i]);
      EXPECT_GE(line->at(i).y(), y->min());
      EXPECT_LE(line->at(i).y(), y->max());
    }
  }
}

TEST(ExportCurves, SmoothIsTheCurvesPagesSmoothing) {
  const auto q = tiny();
  ExportOptions o = with_metrics({"loss"});
  o.smoothing = 0.6;
  auto chart = only_chart(export_page("Training curves", *q, o), "curves_loss");
  ASSERT_TRUE(chart);
  int moved = 0;
  const auto raw = q->curves("loss");
  const auto smooth = q->curves("loss", 0.6);
  for (std::size_t k = 0; k < smooth.size(); ++k) {
    QLineSeries* line = line_named(chart.get(), QString::fromStdString(smooth[k].label));
    ASSERT_TRUE(line);
    ASSERT_EQ(line->count(), static_cast<int>(smooth[k].x.size()));
    for (int i = 0; i < line->count(); ++i) {
      EXPECT_DOUBLE_EQ(line->at(i).y(), smooth[k].mean[i]);
      if (std::abs(smooth[k].mean[i] - raw[k].mean[i]) > 1e-9) ++moved;
    }
  }
  EXPECT_GT(moved, 0) << "smoothing changed nothing";
}

TEST(ExportCurves, LogYGivesALogarithmicAxis) {
  const auto q = tiny();
  ExportOptions o = with_metrics({"loss"});
  auto linear = only_chart(export_page("Training curves", *q, o), "curves_loss");
  ASSERT_TRUE(linear);
  EXPECT_EQ(y_axis(linear.get())->type(), QAbstractAxis::AxisTypeValue);
  o.log_y = true;
  auto log = only_chart(export_page("Training curves", *q, o), "curves_loss");
  ASSERT_TRUE(log);
  auto* axis = qobject_cast<QLogValueAxis*>(y_axis(log.get()));
  ASSERT_TRUE(axis) << "--log-y did not give a log axis";
  EXPECT_GT(axis->min(), 0.0);
  auto scaling = only_chart(export_page("Scaling", *q, o), "scaling_memory.size_loss");
  ASSERT_TRUE(scaling);
  EXPECT_EQ(y_axis(scaling.get())->type(), QAbstractAxis::AxisTypeLogValue);
}

// A scaling study's charts: time against a positive sweep axis (memory.size) is log-log; a metric
// that is not a cost stays linear in y without --log-y (negative control), its x still logarithmic.
TEST(ExportScaling, TimeAgainstAPositiveAxisIsLogLog) {
  const auto q = tiny();
  auto charts = export_page("Scaling", *q, with_metrics({"step_ms", "loss"}));
  auto time = only_chart(std::move(charts), "scaling_memory.size_step_ms");
  ASSERT_TRUE(time);
  auto axis_of = [](QChart* chart, Qt::Orientation o) { return chart->axes(o).isEmpty() ? nullptr : chart->axes(o).front(); };
  ASSERT_TRUE(axis_of(time.get(), Qt::Horizontal));
  EXPECT_EQ(axis_of(time.get(), Qt::Horizontal)->type(), QAbstractAxis::AxisTypeCategory);
  EXPECT_EQ(y_axis(time.get())->type(), QAbstractAxis::AxisTypeLogValue);
  auto loss = only_chart(export_page("Scaling", *q, with_metrics({"loss"})), "scaling_memory.size_loss");
  ASSERT_TRUE(loss);
  EXPECT_EQ(axis_of(loss.get(), Qt::Horizontal)->type(), QAbstractAxis::AxisTypeCategory);
  EXPECT_EQ(y_axis(loss.get())->type(), QAbstractAxis::AxisTypeValue);
}

// The log x axis is labelled at the swept values (memory.size 4 and 8), not at powers of ten: the
// points sit at log10(x) and the labels there say x. Each error bar has caps at both ends.
TEST(ExportScaling, LogAxisTicksAreTheSweptValuesAndErrorBarsHaveCaps) {
  const auto q = tiny();
  auto chart = only_chart(export_page("Scaling", *q, with_metrics({"loss"})), "scaling_memory.size_loss");
  ASSERT_TRUE(chart);
  auto* x = qobject_cast<QCategoryAxis*>(chart->axes(Qt::Horizontal).front());
  ASSERT_TRUE(x);
  EXPECT_EQ(x->categoriesLabels(), (QStringList{"4", "8"}));
  EXPECT_DOUBLE_EQ(x->endValue("4"), std::log10(4.0));
  EXPECT_DOUBLE_EQ(x->endValue("8"), std::log10(8.0));
  EXPECT_LT(x->min(), std::log10(4.0));
  EXPECT_GT(x->max(), std::log10(8.0));
  const auto series = q->scaling("loss", "memory.size");
  ASSERT_FALSE(series.empty());
  int bars = 0;
  std::set<double> bar_x;
  for (const auto& s : series) {
    QLineSeries* line = line_named(chart.get(), QString::fromStdString(s.label));
    ASSERT_TRUE(line) << s.label;
    ASSERT_EQ(line->count(), static_cast<int>(s.x.size()));
    for (int i = 0; i < line->count(); ++i) EXPECT_DOUBLE_EQ(line->at(i).x(), std::log10(s.x[i]));
  }
  for (auto* s : chart->series()) {
    auto* err = qobject_cast<QLineSeries*>(s);
    if (!err || !err->name().isEmpty() || err->count() != 6) continue;
    ++bars;
    // (x - c, lo) (x + c, lo) (x, lo) (x, hi) (x - c, hi) (x + c, hi)
    EXPECT_LT(err->at(0).x(), err->at(2).x());
    EXPECT_GT(err->at(1).x(), err->at(2).x());
    EXPECT_EQ(err->at(0).y(), err->at(1).y());
    EXPECT_EQ(err->at(4).y(), err->at(5).y());
    EXPECT_LT(err->at(2).y(), err->at(3).y());
    EXPECT_EQ(err->at(2).x(), err->at(3).x());
    bar_x.insert(err->at(2).x());
  }
  EXPECT_GT(bars, 0) << "two seeds give every point a spread, hence a capped bar";
  // Dodged: no two bars share an x (two series at the same swept value stand side by side).
  EXPECT_EQ(static_cast<int>(bar_x.size()), bars);
}

// Equal lines lie on each other: each series has a dash pattern of its own, so the one below shows
// through the gaps of the one above.
TEST(ExportCurves, EachLineHasItsOwnDashPattern) {
  const auto q = tiny();
  auto chart = only_chart(export_page("Training curves", *q, with_metrics({"loss"})), "curves_loss");
  ASSERT_TRUE(chart);
  QSet<int> styles;
  int lines = 0;
  for (const auto& s : q->curves("loss")) {
    QLineSeries* line = line_named(chart.get(), QString::fromStdString(s.label));
    ASSERT_TRUE(line);
    styles.insert(static_cast<int>(line->pen().style()));
    ++lines;
  }
  EXPECT_EQ(lines, 4);
  EXPECT_EQ(styles.size(), lines);
}

TEST(ExportReferenceLines, ChanceOnAccuracyAndTolOnTheForwardResidual) {
  const auto q = tiny();
  const auto chance = q->distinct_values("chance_accuracy");
  const auto tol = q->distinct_values("solver_tol");
  ASSERT_EQ(chance.size(), 1u);
  ASSERT_EQ(tol.size(), 1u);
  auto at = [](QLineSeries* line, double y) {
    return line && line->count() == 2 && line->at(0).y() == y && line->at(1).y() == y;
  };
  auto find_prefix = [](QChart* chart, const QString& prefix) -> QLineSeries* {
    for (auto* s : chart->series())
      if (auto* line = qobject_cast<QLineSeries*>(s); line && line->name().startsWith(prefix)) return line;
    return nullptr;
  };
  const ExportOptions o = with_metrics({"train_accuracy", "rel_residual", "loss"});
  auto curves = export_page("Training curves", *q, o);
  auto acc = only_chart(std::move(curves), "curves_train_accuracy");
  ASSERT_TRUE(acc);
  EXPECT_TRUE(at(find_prefix(acc.get(), "chance "), chance[0])) << "no chance line at " << chance[0];
  auto res = only_chart(export_page("Training curves", *q, o), "curves_rel_residual");
  ASSERT_TRUE(res);
  EXPECT_TRUE(at(find_prefix(res.get(), "tol "), tol[0]));
  auto loss = only_chart(export_page("Training curves", *q, o), "curves_loss");
  ASSERT_TRUE(loss);
  EXPECT_FALSE(find_prefix(loss.get(), "chance ") || find_prefix(loss.get(), "tol ")) << "a loss has no reference";
  // The ablation's bars are horizontal: its chance line is vertical, at x = chance.
  auto bars = only_chart(export_page("Ablation", *q, o), "ablation_train_accuracy");
  ASSERT_TRUE(bars);
  QLineSeries* bar_chance = find_prefix(bars.get(), "chance ");
  EXPECT_TRUE(bar_chance && bar_chance->count() == 2 && bar_chance->at(0).x() == chance[0] &&
              bar_chance->at(1).x() == chance[0]);
  auto traces = export_page("Solver traces", *q, o);
  auto forward = only_chart(std::move(traces), "traces_forward");
  ASSERT_TRUE(forward);
  EXPECT_TRUE(at(find_prefix(forward.get(), "tol "), tol[0]));
  auto backward = only_chart(export_page("Solver traces", *q, o), "traces_backward");
  ASSERT_TRUE(backward);
  EXPECT_FALSE(find_prefix(backward.get(), "tol ")) << "the forward tol does not bound the backward solve";
}

// Renders a chart as --export does; the view owns the chart.
QImage render(QChartView& view, QChart* chart) {
  const QSize size(1200, 800);
  mhd::viewer::lay_out_for_export(chart, size);
  view.setChart(chart);
  view.setRenderHint(QPainter::Antialiasing);
  view.setFrameShape(QFrame::NoFrame);
  view.resize(size);
  view.show();
  return view.grab().toImage().convertToFormat(QImage::Format_RGB32);
}

// Whether a pixel within 2 px of `at` has (nearly) the colour `c`.
bool colour_near(const QImage& image, QPointF at, QColor c) {
  for (int dy = -2; dy <= 2; ++dy)
    for (int dx = -2; dx <= 2; ++dx) {
      const QPoint p(static_cast<int>(std::lround(at.x())) + dx, static_cast<int>(std::lround(at.y())) + dy);
      if (!image.rect().contains(p)) continue;
      const QColor px(image.pixel(p));
      if (std::abs(px.red() - c.red()) + std::abs(px.green() - c.green()) + std::abs(px.blue() - c.blue()) < 60)
        return true;
    }
  return false;
}

// Distance from `p` to the segment a-b, in pixels.
double segment_distance(QPointF p, QPointF a, QPointF b) {
  const QPointF d = b - a;
  const double len2 = QPointF::dotProduct(d, d);
  const double t = len2 > 0 ? std::clamp(QPointF::dotProduct(p - a, d) / len2, 0.0, 1.0) : 0.0;
  const QPointF q = a + t * d - p;
  return std::sqrt(QPointF::dotProduct(q, q));
}

// Each mean point is drawn in its line's colour where the axes put it (points that a line drawn later
// passes over are not counted); the same check at the points mirrored top to bottom in the plot finds
// the colour at most half the time (negative control).
TEST(ExportRender, EveryPointIsDrawnAtItsPlace) {
  const auto q = tiny();
  QChartView view;
  auto owned = only_chart(export_page("Training curves", *q, with_metrics({"loss"})), "curves_loss");
  ASSERT_TRUE(owned);
  QChart* chart = owned.release();
  const QImage image = render(view, chart);
  const QRectF plot = chart->plotArea();
  std::vector<QLineSeries*> lines;  // in drawing order
  for (auto* s : chart->series())
    if (auto* line = qobject_cast<QLineSeries*>(s)) lines.push_back(line);
  auto covered = [&](std::size_t k, QPointF at) {
    for (std::size_t later = k + 1; later < lines.size(); ++later)
      for (int i = 0; i + 1 < lines[later]->count(); ++i)
        if (segment_distance(at, chart->mapToPosition(lines[later]->at(i), lines[later]),
                             chart->mapToPosition(lines[later]->at(i + 1), lines[later])) < 4.0)
          return true;
    return false;
  };
  int points = 0, drawn = 0, mirrored = 0;
  for (const auto& s : q->curves("loss")) {
    QLineSeries* line = line_named(chart, QString::fromStdString(s.label));
    ASSERT_TRUE(line);
    const std::size_t k = std::find(lines.begin(), lines.end(), line) - lines.begin();
    for (int i = 0; i < line->count(); ++i) {
      const QPointF at = chart->mapToPosition(line->at(i), line);
      ASSERT_TRUE(plot.adjusted(-1, -1, 1, 1).contains(at)) << "point outside the plot";
      if (covered(k, at)) continue;
      ++points;
      drawn += colour_near(image, at, line->pen().color());
      mirrored += colour_near(image, QPointF(at.x(), plot.top() + plot.bottom() - at.y()), line->pen().color());
    }
  }
  ASSERT_GE(points, 4) << "too few uncovered points to check";
  EXPECT_GE(drawn, points * 9 / 10) << drawn << " of " << points << " points drawn at their place";
  EXPECT_LE(mirrored, points / 2) << "the check finds colour anywhere";
}

// No legend entry, category label or title is elided in any exported chart; Qt's own legend would
// elide these labels (negative control: the detector sees it).
TEST(ExportLayout, NoTextIsCut) {
  const auto q = tiny();
  ExportOptions o;
  o.metrics = mhd::viewer::export_metrics(*q, {}, true, /*all_metrics=*/true);
  for (const QString& title : {QStringLiteral("Training curves"), QStringLiteral("Ablation"), QStringLiteral("Scaling"),
                               QStringLiteral("Solver traces")})
    for (auto& item : export_page(title, *q, o)) {
      QChartView view;
      render(view, item.chart.release());
      EXPECT_TRUE(mhd::viewer::elided_texts(*view.scene()).isEmpty())
          << item.name.toStdString() << ": " << mhd::viewer::elided_texts(*view.scene()).join(", ").toStdString();
    }
}

std::unique_ptr<QChart> long_labels_chart() {
  auto chart = mhd::viewer::new_chart(QStringLiteral("long labels"));
  auto* set = new QBarSet(QStringLiteral("final accuracy of a variant with a long name"));
  QStringList categories;
  for (int i = 0; i < 10; ++i) {
    *set << i + 1;
    categories << QStringLiteral("fixed-point-anderson task.num_pairs=%1<br>memory.size=128 (n=3)").arg(i);
  }
  auto* bars = new QBarSeries();
  bars->append(set);
  chart->addSeries(bars);
  auto* x = new QBarCategoryAxis();
  x->append(categories);
  x->setLabelsAngle(-30);
  chart->addAxis(x, Qt::AlignBottom);
  bars->attachAxis(x);
  for (int i = 0; i < 12; ++i) {
    auto* line = new QLineSeries();
    line->setName(QStringLiteral("fixed-point task.num_pairs=%1 memory.size=128 seed=0 step 400").arg(i));
    line->append(0, i);
    line->append(9, i);
    chart->addSeries(line);
    line->attachAxis(x);
  }
  return chart;
}

TEST(ExportLayout, LongLegendsAndCategoryLabelsFitAndQtAloneCutsThem) {
  app();
  {
    QChartView qt_only(long_labels_chart().release());
    qt_only.resize(1200, 800);
    qt_only.show();
    qt_only.grab();
    EXPECT_FALSE(mhd::viewer::elided_texts(*qt_only.scene()).isEmpty()) << "the detector saw no elided text";
  }
  QChartView view;
  render(view, long_labels_chart().release());
  EXPECT_TRUE(mhd::viewer::elided_texts(*view.scene()).isEmpty())
      << mhd::viewer::elided_texts(*view.scene()).join(", ").toStdString();
}

}  // namespace
