// Ablation: the final value of a metric per variant (and sweep point) as horizontal bars, mean over
// the done seeds with +-std error bars, sorted best first (at the top), the baseline variant in its own
// colour.
#include <algorithm>
#include <cmath>

#include <QBarCategoryAxis>
#include <QBarSet>
#include <QChart>
#include <QComboBox>
#include <QHBoxLayout>
#include <QHorizontalStackedBarSeries>
#include <QLabel>
#include <QLineSeries>
#include <QValueAxis>

#include "train/metric_names.h"
#include "chart_page.h"

namespace mhd::viewer {
namespace {

std::unique_ptr<QChart> build_ablation(const StudyQuery& q, const std::string& metric) {
  const auto bars = q.ablation(metric);
  if (bars.empty()) return nullptr;
  auto chart = new_chart(QStringLiteral("final %1 per variant (mean \u00b1 std over seeds, %2 first)")
                             .arg(qs(metric), higher_is_better(metric) ? "highest" : "lowest"));
  // Horizontal bars, best at the top: the variants' names (often long: "hierarchical_memory",
  // "all_with_early_exit", with a sweep point) read left to right beside their bar instead of slanted
  // under it, where Qt cuts them to the bar's width. Qt puts category 0 at the bottom, so the bars go
  // in from the last (worst) to the first (best): bar i of `bars` sits at y = n - 1 - i.
  // Two stacked sets, each bar non-zero in exactly one of them: the baseline gets its own colour
  // and its own legend entry.
  auto* base = new QBarSet(QStringLiteral("baseline (%1)").arg(qs(q.baseline())));
  auto* others = new QBarSet(QStringLiteral("variant"));
  base->setColor(QColor(0x7f, 0x7f, 0x7f));
  others->setColor(series_color(0));
  // Category labels on two lines (variant, then sweep point and seed count); lay_out_for_export
  // re-breaks them to fit.
  QStringList categories;
  double lo = 0.0, hi = 0.0;
  // A quantity that is never negative keeps its axis at 0 however wide a spread is (its error bars are
  // cut at 0 instead).
  const bool nonnegative = std::all_of(bars.begin(), bars.end(), [](const Bar& b) { return b.mean >= 0; });
  const int n = static_cast<int>(bars.size());
  for (int i = n - 1; i >= 0; --i) {
    const Bar& b = bars[i];
    *base << (b.baseline ? b.mean : 0.0);
    *others << (b.baseline ? 0.0 : b.mean);
    categories << (b.baseline ? QStringLiteral("\u2605 ") : QString()) + qs(b.variant) + QStringLiteral("<br>") +
                      (b.sweep.empty() ? QString() : qs(b.sweep) + QStringLiteral(" ")) +
                      QStringLiteral("(n=%1)").arg(b.n);
  }
  for (const Bar& b : bars) {
    lo = std::min(lo, nonnegative ? 0.0 : b.mean - b.std);
    hi = std::max(hi, b.mean + b.std);
  }
  const auto references = reference_lines(q, metric);
  for (const auto& ref : references) {
    lo = std::min(lo, ref.y);
    hi = std::max(hi, ref.y);
  }
  auto* series = new QHorizontalStackedBarSeries();
  series->append(base);
  series->append(others);
  series->setBarWidth(0.6);
  chart->addSeries(series);

  auto* y = new QBarCategoryAxis();
  y->append(categories);
  auto* x = new QValueAxis();
  const double pad = (hi - lo) > 0 ? (hi - lo) * 0.08 : 1.0;
  x->setRange(lo < 0 ? lo - pad : 0.0, hi + pad);
  x->applyNiceNumbers();
  x->setLabelFormat("%g");
  x->setTitleText(qs(metric));
  chart->addAxis(x, Qt::AlignBottom);
  chart->addAxis(y, Qt::AlignLeft);
  series->attachAxis(x);
  series->attachAxis(y);

  // Error bars: a polyline per bar (left cap, stem, right cap) at the category's y.
  for (int i = 0; i < n; ++i) {
    const auto& b = bars[i];
    if (!(b.std > 0)) continue;
    const double c = static_cast<double>(n - 1 - i), w = 0.08, right = b.mean + b.std;
    const double left = nonnegative ? std::max(0.0, b.mean - b.std) : b.mean - b.std;
    auto* err = new QLineSeries();
    *err << QPointF(right, c - w) << QPointF(right, c + w) << QPointF(right, c) << QPointF(left, c)
         << QPointF(left, c - w) << QPointF(left, c + w);
    QPen pen(Qt::black);
    pen.setWidthF(1.6);
    err->setPen(pen);
    chart->addSeries(err);
    err->attachAxis(x);
    err->attachAxis(y);
    hide_from_legend(chart.get(), err);
  }
  // Chance on accuracy bars: a vertical line across every category (bar k sits at y = k).
  for (const auto& ref : references) {
    auto* line = new QLineSeries();
    line->setName(ref.label);
    line->append(ref.y, -0.5);
    line->append(ref.y, n - 0.5);
    line->setPen(reference_pen());
    chart->addSeries(line);
    line->attachAxis(x);
    line->attachAxis(y);
  }
  return chart;
}

class AblationPage : public ChartPage {
 public:
  explicit AblationPage(QWidget* parent) : ChartPage(parent) {
    metric_ = new QComboBox(this);
    metric_->setMinimumContentsLength(18);
    controls()->addWidget(new QLabel(QStringLiteral("final metric"), this));
    controls()->addWidget(metric_);
    controls()->addStretch(1);
    connect(metric_, &QComboBox::currentIndexChanged, this, [this] { redraw(); });
  }

  QString title() const override { return QStringLiteral("Ablation"); }

  void setQuery(const StudyQuery* query) override {
    query_ = query;
    refill_choices(metric_, query->metric_names(), QString(mhd::metric::kEvalAccuracy));
    redraw();
  }

  std::vector<ExportChart> exportCharts(const StudyQuery& query, const ExportOptions& options) const override {
    // A study of one variant at one sweep point (the quickstart) would give one bar per metric, which
    // compares nothing: no ablation charts then.
    std::vector<ExportChart> out;
    for (const auto& m : options.metrics)
      if (query.ablation(m).size() >= 2)
        if (auto chart = build_ablation(query, m)) out.push_back({QStringLiteral("ablation_") + qs(m), std::move(chart)});
    return out;
  }

 private:
  void redraw() {
    if (!query_) return;
    const std::string metric = metric_->currentText().toStdString();
    setChart(metric.empty() ? nullptr : build_ablation(*query_, metric),
             QStringLiteral("No finished trial has this metric yet."));
  }

  const StudyQuery* query_ = nullptr;
  QComboBox* metric_;
};

}  // namespace

ChartPage* new_ablation_page(QWidget* parent) { return new AblationPage(parent); }

}  // namespace mhd::viewer
