// Solver traces: residual against solver iteration (log y) for chosen training steps, forward or
// backward solve, one line per trial and step — to compare solvers across variants.
#include <algorithm>
#include <cmath>
#include <map>

#include <QChart>
#include <QComboBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineSeries>
#include <QListWidget>

#include "chart_page.h"
#include "train/metric_names.h"

namespace mhd::viewer {
namespace {

std::unique_ptr<QChart> build_traces(const StudyQuery& q, const std::string& phase,
                                     const std::vector<std::int64_t>& steps, bool relative) {
  const auto traces = q.traces(phase, steps, relative);
  if (traces.empty()) return nullptr;
  const QString what = relative ? QStringLiteral("relative residual") : QStringLiteral("absolute residual");
  auto chart = new_chart(QStringLiteral("%1 solve: %2 vs iteration (%3)")
                             .arg(qs(phase), what,
                                  steps.empty() ? QStringLiteral("last traced step")
                                                : QStringLiteral("%1 step(s)").arg(steps.size())));
  Range range;
  // A variant's trials share a hue, each a shade of its own; lines of further steps dashed.
  const auto variants = q.variants();
  std::map<std::string, int> shade;
  for (const auto& t : traces) {
    const auto v = std::find(variants.begin(), variants.end(), t.variant) - variants.begin();
    auto* line = new QLineSeries();
    line->setName(qs(t.label));
    const int k = shade[t.variant]++;
    const QColor base = series_color(static_cast<int>(v));
    QPen pen(k % 2 ? base.lighter(100 + 25 * ((k + 1) / 2)) : base.darker(100 + 20 * (k / 2)));
    pen.setWidthF(1.8);
    if (!steps.empty() && t.step != steps.front()) pen.setStyle(Qt::DashLine);
    line->setPen(pen);
    line->setPointsVisible(t.iteration.size() < 40);
    for (std::size_t i = 0; i < t.iteration.size(); ++i) {
      if (!(t.residual[i] > 0)) continue;
      line->append(t.iteration[i], t.residual[i]);
      range.add(t.iteration[i], t.residual[i]);
    }
    chart->addSeries(line);
  }
  chart->legend()->setAlignment(Qt::AlignRight);
  if (traces.size() > 24) chart->legend()->hide();
  // The forward solve stops at the study's tol on the relative residual: draw it (docs/design.md §4).
  if (relative && phase == "forward" && !range.empty())
    add_reference_lines(chart.get(), range, reference_lines(q, mhd::metric::kRelResidual), range.xmin, range.xmax,
                        true);
  attach_axes(chart.get(), range, QStringLiteral("solver iteration"), what, false, true);
  return chart;
}

class TracesPage : public ChartPage {
 public:
  explicit TracesPage(QWidget* parent) : ChartPage(parent) {
    phase_ = new QComboBox(this);
    phase_->addItems({QStringLiteral("forward"), QStringLiteral("backward")});
    residual_ = new QComboBox(this);
    residual_->addItems({QStringLiteral("relative residual"), QStringLiteral("absolute residual")});
    steps_ = new QListWidget(this);
    steps_->setSelectionMode(QAbstractItemView::ExtendedSelection);
    steps_->setFlow(QListView::LeftToRight);
    steps_->setMaximumHeight(48);
    steps_->setToolTip(QStringLiteral("Training steps to show (none selected: each trial's last traced step)"));
    controls()->addWidget(new QLabel(QStringLiteral("solve"), this));
    controls()->addWidget(phase_);
    controls()->addWidget(residual_);
    controls()->addWidget(new QLabel(QStringLiteral("steps"), this));
    controls()->addWidget(steps_, 1);
    auto redraw = [this] { this->redraw(); };
    connect(phase_, &QComboBox::currentIndexChanged, this, redraw);
    connect(residual_, &QComboBox::currentIndexChanged, this, redraw);
    connect(steps_, &QListWidget::itemSelectionChanged, this, redraw);
  }

  QString title() const override { return QStringLiteral("Solver traces"); }

  void setQuery(const StudyQuery* query) override {
    query_ = query;
    {
      const QSignalBlocker block(steps_);
      QSet<QString> selected;
      for (auto* item : steps_->selectedItems()) selected.insert(item->text());
      steps_->clear();
      for (const auto step : query->trace_steps()) {
        auto* item = new QListWidgetItem(QString::number(step), steps_);
        item->setSelected(selected.contains(item->text()));
      }
    }
    redraw();
  }

  std::vector<ExportChart> exportCharts(const StudyQuery& query, const ExportOptions&) const override {
    std::vector<ExportChart> out;
    for (const char* phase : {"forward", "backward"})
      if (auto chart = build_traces(query, phase, {}, true))
        out.push_back({QStringLiteral("traces_") + phase, std::move(chart)});
    return out;
  }

 private:
  void redraw() {
    if (!query_) return;
    std::vector<std::int64_t> steps;
    for (auto* item : steps_->selectedItems()) steps.push_back(item->text().toLongLong());
    std::sort(steps.begin(), steps.end());
    setChart(build_traces(*query_, phase_->currentText().toStdString(), steps, residual_->currentIndex() == 0),
             QStringLiteral("No solver traces for this selection."));
  }

  const StudyQuery* query_ = nullptr;
  QComboBox* phase_;
  QComboBox* residual_;
  QListWidget* steps_;
};

}  // namespace

ChartPage* new_traces_page(QWidget* parent) { return new TracesPage(parent); }

}  // namespace mhd::viewer
