// Probes: what a trial's probes stored for charts (table probe_points, probe.h), for any probe and
// series, drawn by the shape of the data (query.h, ProbeShape): curves of value against x (one per i),
// a heatmap of value over an i x j grid, or paths (x, y) in a plane (one per i).
#include <algorithm>
#include <cmath>
#include <map>

#include <QChart>
#include <QComboBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QLineSeries>
#include <QScatterSeries>

#include "chart_page.h"

namespace mhd::viewer {
namespace {

constexpr int kMaxLines = 24;   // curves and paths beyond this many i are not drawn (legend stays legible)
constexpr int kHeatLevels = 10;  // colour levels of a heatmap, each one legend entry

std::string series_text(const std::pair<std::string, std::string>& s) { return s.first + " / " + s.second; }

std::string trial_text(const Trial& t) {
  return t.row.variant + (t.row.sweep.empty() ? "" : " " + t.row.sweep) + " seed=" + std::to_string(t.row.seed);
}

// Viridis-like ramp from dark blue (low) through green to yellow (high); t in [0, 1].
QColor ramp(double t) {
  static const QColor stops[] = {QColor(68, 1, 84), QColor(59, 82, 139), QColor(33, 145, 140), QColor(94, 201, 98),
                                 QColor(253, 231, 37)};
  t = std::clamp(t, 0.0, 1.0) * 4.0;
  const int k = std::min(3, static_cast<int>(t));
  const double f = t - k;
  const QColor a = stops[k], b = stops[k + 1];
  return QColor::fromRgbF(a.redF() + f * (b.redF() - a.redF()), a.greenF() + f * (b.greenF() - a.greenF()),
                          a.blueF() + f * (b.blueF() - a.blueF()));
}

void draw_lines(QChart* chart, const std::vector<ProbePoint>& points, bool paths, Range& range) {
  std::map<std::int64_t, QLineSeries*> lines;
  for (const auto& p : points) {
    const double x = paths ? p.x : (std::isnan(p.x) ? static_cast<double>(p.j) : p.x);
    const double y = paths ? p.y : p.value;
    if (!std::isfinite(x) || !std::isfinite(y)) continue;
    auto it = lines.find(p.i);
    if (it == lines.end()) {
      if (static_cast<int>(lines.size()) >= kMaxLines) continue;
      auto* line = new QLineSeries();
      line->setName(QStringLiteral("i = %1").arg(p.i));
      QPen pen(series_color(static_cast<int>(lines.size())));
      pen.setWidthF(1.8);
      line->setPen(pen);
      it = lines.emplace(p.i, line).first;
    }
    it->second->append(x, y);
    range.add(x, y);
  }
  for (auto& [i, line] : lines) {
    line->setPointsVisible(line->count() < 40);
    chart->addSeries(line);
  }
  // One point per i (a per-sample value): a scatter reads better than one-point lines.
  const bool single = std::all_of(lines.begin(), lines.end(), [](const auto& l) { return l.second->count() == 1; });
  if (single && !lines.empty()) {
    for (auto& [i, line] : lines) chart->removeSeries(line), delete line;
    auto* dots = new QScatterSeries();
    dots->setName(QStringLiteral("value per i"));
    dots->setMarkerSize(9);
    dots->setColor(series_color(0));
    for (const auto& p : points) {
      const double x = std::isnan(p.x) ? static_cast<double>(p.i) : p.x;
      if (std::isfinite(x) && std::isfinite(p.value)) dots->append(x, p.value);
    }
    chart->addSeries(dots);
  }
}

// A heatmap as square markers at the cells' (x, y), one scatter series per colour level, so the
// legend reads as the colour scale.
void draw_grid(QChart* chart, const std::vector<ProbePoint>& points, Range& range) {
  double lo = 1e300, hi = -1e300;
  std::map<std::int64_t, bool> is, js;
  for (const auto& p : points) {
    is[p.i] = js[p.j] = true;
    if (std::isfinite(p.value)) lo = std::min(lo, p.value), hi = std::max(hi, p.value);
  }
  if (lo > hi) return;
  const double span = hi > lo ? hi - lo : 1.0;
  std::vector<QScatterSeries*> levels(kHeatLevels, nullptr);
  // Cells tile a plot area of about 1000 x 620 pixels (the export size).
  const double cell = std::max(3.0, std::min(1000.0 / static_cast<double>(is.size()), 620.0 / static_cast<double>(js.size())));
  for (const auto& p : points) {
    if (!std::isfinite(p.value)) continue;
    const double x = std::isnan(p.x) ? static_cast<double>(p.i) : p.x;
    const double y = std::isnan(p.y) ? static_cast<double>(p.j) : p.y;
    const int k = std::min(kHeatLevels - 1, static_cast<int>((p.value - lo) / span * kHeatLevels));
    if (!levels[k]) {
      auto* s = new QScatterSeries();
      const double a = lo + span * k / kHeatLevels, b = lo + span * (k + 1) / kHeatLevels;
      s->setName(QStringLiteral("%1 .. %2").arg(a, 0, 'g', 3).arg(b, 0, 'g', 3));
      s->setMarkerShape(QScatterSeries::MarkerShapeRectangle);
      s->setMarkerSize(cell);
      const QColor c = ramp((k + 0.5) / kHeatLevels);
      s->setColor(c);
      s->setBorderColor(c);
      levels[k] = s;
    }
    levels[k]->append(x, y);
    range.add(x, y);
  }
  for (auto* s : levels)
    if (s) chart->addSeries(s);
  chart->legend()->setAlignment(Qt::AlignRight);
}

std::unique_ptr<QChart> build_probe_chart(const StudyQuery& q, const std::pair<std::string, std::string>& series,
                                          const Trial& trial, int shape_choice) {
  const auto points = q.probe_points(trial.row.id, series.first, series.second);
  if (points.empty()) return nullptr;
  const ProbeShape shape = shape_choice > 0 ? static_cast<ProbeShape>(shape_choice - 1) : probe_shape(points);
  auto chart = new_chart(QStringLiteral("%1: %2 (%3, %4)")
                             .arg(qs(series.first), qs(series.second), qs(trial_text(trial)), qs(to_string(shape))));
  Range range;
  QString x_title = QStringLiteral("x (j where x is not stored)"), y_title = QStringLiteral("value");
  if (shape == ProbeShape::Grid) {
    draw_grid(chart.get(), points, range);
    x_title = QStringLiteral("x (i)");
    y_title = QStringLiteral("y (j); colour: value");
  } else {
    draw_lines(chart.get(), points, shape == ProbeShape::Paths, range);
    if (shape == ProbeShape::Paths) x_title = QStringLiteral("x"), y_title = QStringLiteral("y");
  }
  if (chart->series().isEmpty()) return nullptr;
  if (chart->series().size() > kMaxLines) chart->legend()->hide();
  attach_axes(chart.get(), range, x_title, y_title, false, false, shape == ProbeShape::Grid);
  return chart;
}

class ProbesPage : public ChartPage {
 public:
  explicit ProbesPage(QWidget* parent) : ChartPage(parent) {
    series_ = new QComboBox(this);
    trial_ = new QComboBox(this);
    shape_ = new QComboBox(this);
    shape_->addItems({QStringLiteral("auto"), QStringLiteral("curves"), QStringLiteral("grid"), QStringLiteral("paths")});
    controls()->addWidget(new QLabel(QStringLiteral("series"), this));
    controls()->addWidget(series_, 1);
    controls()->addWidget(new QLabel(QStringLiteral("trial"), this));
    controls()->addWidget(trial_, 1);
    controls()->addWidget(new QLabel(QStringLiteral("draw as"), this));
    controls()->addWidget(shape_);
    connect(series_, &QComboBox::currentIndexChanged, this, [this] { refill_trials(); });
    connect(trial_, &QComboBox::currentIndexChanged, this, [this] { redraw(); });
    connect(shape_, &QComboBox::currentIndexChanged, this, [this] { redraw(); });
  }

  QString title() const override { return QStringLiteral("Probes"); }

  void setQuery(const StudyQuery* query) override {
    query_ = query;
    series_list_ = query->probe_series();
    std::vector<std::string> names;
    for (const auto& s : series_list_) names.push_back(series_text(s));
    refill_choices(series_, names, {});
    refill_trials();
  }

  // One chart per series, of the first trial that stored it.
  std::vector<ExportChart> exportCharts(const StudyQuery& query, const ExportOptions&) const override {
    std::vector<ExportChart> out;
    for (const auto& s : query.probe_series()) {
      const auto trials = query.probe_trials(s.first, s.second);
      if (trials.empty()) continue;
      if (auto chart = build_probe_chart(query, s, *trials.front(), 0))
        out.push_back({qs("probe_" + s.first + "_" + s.second), std::move(chart)});
    }
    return out;
  }

 private:
  const std::pair<std::string, std::string>* current_series() const {
    const int k = series_->currentIndex();
    return k >= 0 && k < static_cast<int>(series_list_.size()) ? &series_list_[k] : nullptr;
  }

  void refill_trials() {
    trials_.clear();
    std::vector<std::string> names;
    if (const auto* s = current_series()) {
      trials_ = query_->probe_trials(s->first, s->second);
      for (const auto* t : trials_) names.push_back(trial_text(*t));
    }
    refill_choices(trial_, names, {});
    redraw();
  }

  void redraw() {
    const auto* s = current_series();
    const int k = trial_->currentIndex();
    if (!query_ || !s || k < 0 || k >= static_cast<int>(trials_.size())) {
      setChart(nullptr, QStringLiteral("No probe data in this study (add a [probes.NAME] table to the study)."));
      return;
    }
    setChart(build_probe_chart(*query_, *s, *trials_[k], shape_->currentIndex()),
             QStringLiteral("No drawable points in this series."));
  }

  const StudyQuery* query_ = nullptr;
  std::vector<std::pair<std::string, std::string>> series_list_;
  std::vector<const Trial*> trials_;
  QComboBox* series_;
  QComboBox* trial_;
  QComboBox* shape_;
};

}  // namespace

ChartPage* new_probes_page(QWidget* parent) { return new ProbesPage(parent); }

}  // namespace mhd::viewer
