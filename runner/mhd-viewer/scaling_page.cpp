// Scaling: the final value of a metric against a numeric sweep axis (memory size, sequence length, ...),
// one line per variant with points at the mean over seeds and capped +-std error bars; log-log option.
// The export draws a positive axis logarithmic (ticks at the swept values), and a cost metric (time,
// memory) against it log-log.
#include <algorithm>
#include <cmath>

#include <QChart>
#include <QCheckBox>
#include <QComboBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineSeries>
#include <QScatterSeries>

#include "train/metric_names.h"
#include "chart_page.h"

namespace mhd::viewer {
namespace {

// The swept values of the chart: its x ticks.
std::vector<double> swept_values(const std::vector<Series>& series) {
  std::vector<double> xs;
  for (const auto& s : series) xs.insert(xs.end(), s.x.begin(), s.x.end());
  std::sort(xs.begin(), xs.end());
  xs.erase(std::unique(xs.begin(), xs.end()), xs.end());
  return xs;
}

// A log x axis is labelled at the swept values (1024, 10240, 102400), not at powers of ten: the series
// hold log10(x) and the axis is a category axis at those positions (attach_axes' log_x_ticks).
std::unique_ptr<QChart> build_scaling(const StudyQuery& q, const std::string& metric, const std::string& axis,
                                      bool log_x, bool log_y) {
  const auto series = q.scaling(metric, axis);
  if (series.empty()) return nullptr;
  int seeds = 0;
  for (const auto& s : series)
    for (const int n : s.n) seeds = std::max(seeds, n);
  auto chart = new_chart(seeds > 1 ? QStringLiteral("final %1 vs %2 (mean \u00b1 std over %3 seeds)").arg(qs(metric), qs(axis)).arg(seeds)
                                   : QStringLiteral("final %1 vs %2 (one seed)").arg(qs(metric), qs(axis)));
  std::vector<double> ticks;
  if (log_x)
    for (const double x : swept_values(series))
      if (x > 0) ticks.push_back(x);
  auto at_x = [&](double x) { return log_x ? std::log10(x) : x; };
  Range range;
  auto ok = [&](double x, double y) { return (!log_x || x > 0) && (!log_y || y > 0); };
  // An error bar's caps span 2% of the x range either side.
  const double cap = log_x && ticks.size() > 1 ? 0.02 * (std::log10(ticks.back()) - std::log10(ticks.front()))
                     : [&] {
                         const auto xs = swept_values(series);
                         return xs.size() > 1 ? 0.02 * (xs.back() - xs.front()) : 0.05 * std::max(1.0, std::abs(xs.front()));
                       }();
  std::vector<QLineSeries*> errors;
  int index = 0;
  const bool accuracy = is_accuracy_metric(metric);
  // Error bars are dodged sideways by series (one cap width apart), so equal spreads of two series
  // stand side by side instead of hiding each other; the points stay at their x.
  const double count = static_cast<double>(series.size());
  for (const auto& s : series) {
    const QColor color = series_color(index);
    auto* line = new QLineSeries();
    line->setName(qs(s.label));
    line->setPen(series_pen(index));
    ++index;
    auto* dots = new QScatterSeries();
    dots->setColor(color);
    dots->setBorderColor(color);
    dots->setMarkerSize(9);
    for (std::size_t i = 0; i < s.x.size(); ++i) {
      if (!ok(s.x[i], s.mean[i])) continue;
      const double x = at_x(s.x[i]);
      line->append(x, s.mean[i]);
      dots->append(x, s.mean[i]);
      range.add(x, s.mean[i]);
      if (accuracy && !log_y) range.add(x, 0.0);  // an accuracy reads in proportion from 0
      if (s.std[i] > 0) {
        double lo = s.mean[i] - s.std[i], hi = s.mean[i] + s.std[i];
        if (log_y && !(lo > 0)) lo = s.mean[i] * 0.5;
        // The bar, then its caps: one polyline (lower cap, bar, upper cap).
        const double bx = x + (static_cast<double>(index - 1) - (count - 1) / 2.0) * cap;
        auto* err = new QLineSeries();
        *err << QPointF(bx - cap, lo) << QPointF(bx + cap, lo) << QPointF(bx, lo) << QPointF(bx, hi)
             << QPointF(bx - cap, hi) << QPointF(bx + cap, hi);
        QPen epen(color);
        epen.setWidthF(1.5);
        err->setPen(epen);
        errors.push_back(err);
        range.add(x, lo);
        range.add(x, hi);
      }
    }
    chart->addSeries(line);
    chart->addSeries(dots);
    hide_from_legend(chart.get(), dots);
  }
  for (auto* err : errors) chart->addSeries(err);
  for (auto* err : errors) hide_from_legend(chart.get(), err);
  if (!range.empty()) add_reference_lines(chart.get(), range, reference_lines(q, metric), range.xmin, range.xmax, log_y);
  attach_axes(chart.get(), range, qs(axis), qs(metric), log_x, log_y, /*pad_x=*/true, ticks);
  return chart;
}

// A cost (time, memory: step_ms, peak_rss_mb, memory_memory_bytes) grows by factors along a scale
// axis, so its export is log-log like the axis.
bool is_cost_metric(const std::string& metric) {
  for (const std::string suffix : {"_ms", "_mb", "_bytes"})
    if (metric.size() > suffix.size() && metric.compare(metric.size() - suffix.size(), suffix.size(), suffix) == 0)
      return true;
  return false;
}

// Whether every point of the axis is positive: a scale (sizes, lengths), drawn on a log axis.
bool positive_axis(const StudyQuery& q, const std::string& metric, const std::string& axis) {
  const auto series = q.scaling(metric, axis);
  bool any = false;
  for (const auto& s : series)
    for (const double x : s.x) {
      if (!(x > 0)) return false;
      any = true;
    }
  return any;
}

class ScalingPage : public ChartPage {
 public:
  explicit ScalingPage(QWidget* parent) : ChartPage(parent) {
    axis_ = new QComboBox(this);
    metric_ = new QComboBox(this);
    metric_->setMinimumContentsLength(18);
    log_log_ = new QCheckBox(QStringLiteral("log-log"), this);
    controls()->addWidget(new QLabel(QStringLiteral("sweep axis"), this));
    controls()->addWidget(axis_);
    controls()->addWidget(new QLabel(QStringLiteral("final metric"), this));
    controls()->addWidget(metric_);
    controls()->addWidget(log_log_);
    controls()->addStretch(1);
    auto redraw = [this] { this->redraw(); };
    connect(axis_, &QComboBox::currentIndexChanged, this, redraw);
    connect(metric_, &QComboBox::currentIndexChanged, this, redraw);
    connect(log_log_, &QCheckBox::toggled, this, redraw);
  }

  QString title() const override { return QStringLiteral("Scaling"); }

  void setQuery(const StudyQuery* query) override {
    query_ = query;
    refill_choices(axis_, query->numeric_sweep_axes(), QString());
    refill_choices(metric_, query->metric_names(), QString(mhd::metric::kLoss));
    redraw();
  }

  std::vector<ExportChart> exportCharts(const StudyQuery& query, const ExportOptions& options) const override {
    std::vector<ExportChart> out;
    for (const auto& axis : query.numeric_sweep_axes())
      for (const auto& m : options.metrics) {
        // A positive axis is a scale: log x; a cost along it log y too (--log-y: every metric).
        const bool log_x = positive_axis(query, m, axis);
        if (auto chart = build_scaling(query, m, axis, log_x, options.log_y || (log_x && is_cost_metric(m))))
          out.push_back({QStringLiteral("scaling_%1_%2").arg(qs(axis), qs(m)), std::move(chart)});
      }
    return out;
  }

 private:
  void redraw() {
    if (!query_) return;
    if (axis_->count() == 0) {
      setChart(nullptr, QStringLiteral("This study has no numeric [sweep] axis."));
      return;
    }
    setChart(build_scaling(*query_, metric_->currentText().toStdString(), axis_->currentText().toStdString(),
                           log_log_->isChecked(), log_log_->isChecked()),
             QStringLiteral("No finished trial has this metric yet."));
  }

  const StudyQuery* query_ = nullptr;
  QComboBox* axis_;
  QComboBox* metric_;
  QCheckBox* log_log_;
};

}  // namespace

ChartPage* new_scaling_page(QWidget* parent) { return new ScalingPage(parent); }

}  // namespace mhd::viewer
