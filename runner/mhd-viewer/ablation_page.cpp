// Ablation: the final value of a metric per variant (and sweep point) as bars, mean over the done
// seeds with +-std error bars, sorted best first, the baseline variant in its own colour.
#include <algorithm>
#include <cmath>

#include <QBarCategoryAxis>
#include <QBarSet>
#include <QChart>
#include <QComboBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineSeries>
#include <QStackedBarSeries>
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
  // Two stacked sets, each bar non-zero in exactly one of them: the baseline gets its own colour
  // and its own legend entry.
  auto* base = new QBarSet(QStringLiteral("baseline (%1)").arg(qs(q.baseline())));
  auto* others = new QBarSet(QStringLiteral("variant"));
  base->setColor(QColor(0x7f, 0x7f, 0x7f));
  others->setColor(series_color(0));
  // Category labels on two lines (variant, then sweep point and seed count) so they fit under a bar.
  QStringList categories;
  double lo = 0.0, hi = 0.0;
  // A quantity that is never negative keeps its axis at 0 however wide a spread is (its error bars are
  // cut at 0 instead).
  const bool nonnegative = std::all_of(bars.begin(), bars.end(), [](const Bar& b) { return b.mean >= 0; });
  for (const auto& b : bars) {
    *base << (b.baseline ? b.mean : 0.0);
    *others << (b.baseline ? 0.0 : b.mean);
    QString label = (b.baseline ? QStringLiteral("\u2605 ") : QString()) + qs(b.variant) + QStringLiteral("<br>") +
                    (b.sweep.empty() ? QString() : qs(b.sweep) + QStringLiteral(" ")) +
                    QStringLiteral("(n=%1)").arg(b.n);
    categories << label;
    lo = std::min(lo, nonnegative ? 0.0 : b.mean - b.std);
    hi = std::max(hi, b.mean + b.std);
  }
  const auto references = reference_lines(q, metric);
  for (const auto& ref : references) {
    lo = std::min(lo, ref.y);
    hi = std::max(hi, ref.y);
  }
  auto* series = new QStackedBarSeries();
  series->append(base);
  series->append(others);
  series->setBarWidth(0.6);
  chart->addSeries(series);

  auto* x = new QBarCategoryAxis();
  x->append(categories);
  if (categories.size() > 4) x->setLabelsAngle(-30);
  auto* y = new QValueAxis();
  const double pad = (hi - lo) > 0 ? (hi - lo) * 0.08 : 1.0;
  y->setRange(lo < 0 ? lo - pad : 0.0, hi + pad);
  y->applyNiceNumbers();
  y->setLabelFormat("%g");
  y->setTitleText(qs(metric));
  chart->addAxis(x, Qt::AlignBottom);
  chart->addAxis(y, Qt::AlignLeft);
  series->attachAxis(x);
  series->attachAxis(y);

  // Error bars: a polyline per bar (top cap, stem, bottom cap) at the category's x.
  for (std::size_t i = 0; i < bars.size(); ++i) {
    const auto& b = bars[i];
    if (!(b.std > 0)) continue;
    const double c = static_cast<double>(i), w = 0.08, top = b.mean + b.std;
    const double bottom = nonnegative ? std::max(0.0, b.mean - b.std) : b.mean - b.std;
    auto* err = new QLineSeries();
    *err << QPointF(c - w, top) << QPointF(c + w, top) << QPointF(c, top) << QPointF(c, bottom)
         << QPointF(c - w, bottom) << QPointF(c + w, bottom);
    QPen pen(Qt::black);
    pen.setWidthF(1.6);
    err->setPen(pen);
    chart->addSeries(err);
    err->attachAxis(x);
    err->attachAxis(y);
    hide_from_legend(chart.get(), err);
  }
  // Chance on accuracy bars, across every category (the category axis places bar i at x = i).
  Range unused;
  add_reference_lines(chart.get(), unused, references, -0.5, static_cast<double>(bars.size()) - 0.5, false);
  for (QAbstractSeries* s : chart->series())
    if (s->attachedAxes().isEmpty()) {
      s->attachAxis(x);
      s->attachAxis(y);
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
    std::vector<ExportChart> out;
    for (const auto& m : options.metrics)
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
