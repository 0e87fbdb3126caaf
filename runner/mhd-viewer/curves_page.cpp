// Training curves: a metric against step, one line per variant (and sweep point) with the mean over
// seeds and a shaded band (min..max or +-std; none, and "one seed" in the title, for one seed), a dash
// pattern per line so equal lines stay visible, accuracies from 0, EMA smoothing, log-y, and the chance (accuracies) or tol
// (relative residual) line. --export draws with the same CurveOptions, set from its command line.
#include <algorithm>
#include <cmath>

#include <QAreaSeries>
#include <QChart>
#include <QCheckBox>
#include <QComboBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineSeries>
#include <QSlider>

#include "train/metric_names.h"
#include "chart_page.h"

namespace mhd::viewer {
namespace {

enum class Band { MinMax, Std, None };

struct CurveOptions {
  Band band = Band::MinMax;
  double smoothing = 0.0;
  bool log_y = false;
};

std::unique_ptr<QChart> build_curves(const StudyQuery& q, const std::string& metric, const CurveOptions& o) {
  const auto series = q.curves(metric, o.smoothing);
  if (series.empty()) return nullptr;
  int seeds = 0;
  for (const auto& s : series)
    for (const int n : s.n) seeds = std::max(seeds, n);
  // One seed has no spread: no band, and the title says so.
  const Band band = seeds > 1 ? o.band : Band::None;
  const QString band_text = band == Band::MinMax ? QStringLiteral(", band min..max")
                            : band == Band::Std  ? QStringLiteral(", band \u00b1 std")
                                                 : QString();
  auto chart = new_chart(seeds > 1 ? qs(metric) + QStringLiteral(" vs step (mean over %1 seeds").arg(seeds) + band_text + QStringLiteral(")")
                                   : qs(metric) + QStringLiteral(" vs step (one seed)"));
  Range range;
  auto ok = [&](double y) { return std::isfinite(y) && (!o.log_y || y > 0); };
  const bool from_zero = is_accuracy_metric(metric) && !o.log_y;  // an accuracy reads in proportion from 0
  int index = 0;
  for (const auto& s : series) {
    const QColor color = series_color(index);
    const QPen pen = series_pen(index);
    ++index;
    if (band != Band::None) {
      auto* area = new QAreaSeries();
      auto* upper = new QLineSeries(area);
      auto* lower = new QLineSeries(area);
      for (std::size_t i = 0; i < s.x.size(); ++i) {
        double lo = band == Band::MinMax ? s.min[i] : s.mean[i] - s.std[i];
        double hi = band == Band::MinMax ? s.max[i] : s.mean[i] + s.std[i];
        if (o.log_y) {
          if (!(hi > 0)) continue;
          if (!(lo > 0)) lo = std::min(hi, s.mean[i] > 0 ? s.mean[i] : hi) * 0.5;
        }
        upper->append(s.x[i], hi);
        lower->append(s.x[i], lo);
        range.add(s.x[i], hi);
        range.add(s.x[i], lo);
      }
      area->setUpperSeries(upper);
      area->setLowerSeries(lower);
      QColor fill = color;
      fill.setAlpha(45);
      area->setBrush(fill);
      area->setPen(Qt::NoPen);
      area->setName(qs(s.label) + " band");
      chart->addSeries(area);
      hide_from_legend(chart.get(), area);
    }
    auto* line = new QLineSeries();
    line->setName(qs(s.label));
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      if (!ok(s.mean[i])) continue;
      line->append(s.x[i], s.mean[i]);
      range.add(s.x[i], s.mean[i]);
      if (from_zero) range.add(s.x[i], 0.0);
    }
    line->setPen(pen);
    line->setPointsVisible(line->count() <= 30);  // sparse metrics (evaluations) show their points
    chart->addSeries(line);
  }
  if (!range.empty()) add_reference_lines(chart.get(), range, reference_lines(q, metric), range.xmin, range.xmax, o.log_y);
  attach_axes(chart.get(), range, QStringLiteral("step"), qs(metric), false, o.log_y);
  return chart;
}

class CurvesPage : public ChartPage {
 public:
  explicit CurvesPage(QWidget* parent) : ChartPage(parent) {
    metric_ = new QComboBox(this);
    metric_->setMinimumContentsLength(18);
    band_ = new QComboBox(this);
    band_->addItems({QStringLiteral("band: min..max"), QStringLiteral("band: \u00b1 std"), QStringLiteral("no band")});
    smoothing_ = new QSlider(Qt::Horizontal, this);
    smoothing_->setRange(0, 99);
    smoothing_->setMaximumWidth(160);
    smoothing_label_ = new QLabel(this);
    log_y_ = new QCheckBox(QStringLiteral("log y"), this);
    controls()->addWidget(new QLabel(QStringLiteral("metric"), this));
    controls()->addWidget(metric_);
    controls()->addWidget(band_);
    controls()->addWidget(new QLabel(QStringLiteral("smoothing"), this));
    controls()->addWidget(smoothing_);
    controls()->addWidget(smoothing_label_);
    controls()->addWidget(log_y_);
    controls()->addStretch(1);
    auto redraw = [this] { this->redraw(); };
    connect(metric_, &QComboBox::currentIndexChanged, this, redraw);
    connect(band_, &QComboBox::currentIndexChanged, this, redraw);
    connect(smoothing_, &QSlider::valueChanged, this, redraw);
    connect(log_y_, &QCheckBox::toggled, this, redraw);
  }

  QString title() const override { return QStringLiteral("Training curves"); }

  void setQuery(const StudyQuery* query) override {
    query_ = query;
    refill_choices(metric_, query->metric_names(), QString(mhd::metric::kLoss));
    redraw();
  }

  std::vector<ExportChart> exportCharts(const StudyQuery& query, const ExportOptions& options) const override {
    CurveOptions o;
    o.smoothing = options.smoothing;
    o.log_y = options.log_y;
    std::vector<ExportChart> out;
    for (const auto& m : options.metrics)
      if (auto chart = build_curves(query, m, o))
        out.push_back({QStringLiteral("curves_") + qs(m), std::move(chart)});
    return out;
  }

 private:
  void redraw() {
    if (!query_) return;
    CurveOptions o;
    o.band = static_cast<Band>(band_->currentIndex());
    o.smoothing = smoothing_->value() / 100.0;
    o.log_y = log_y_->isChecked();
    smoothing_label_->setText(QString::number(o.smoothing, 'f', 2));
    const std::string metric = metric_->currentText().toStdString();
    setChart(metric.empty() ? nullptr : build_curves(*query_, metric, o),
         QStringLiteral("No metrics recorded yet."));
  }

  const StudyQuery* query_ = nullptr;
  QComboBox* metric_;
  QComboBox* band_;
  QSlider* smoothing_;
  QLabel* smoothing_label_;
  QCheckBox* log_y_;
};

}  // namespace

ChartPage* new_curves_page(QWidget* parent) { return new CurvesPage(parent); }

}  // namespace mhd::viewer
