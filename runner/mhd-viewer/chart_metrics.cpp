// The metrics an export draws and the reference lines (chance, tol) of a metric's charts
// (chart_page.h).
#include <algorithm>
#include <string>
#include <vector>

#include <QLineSeries>
#include <QChart>
#include <QPen>

#include "chart_page.h"
#include "mhd/catalog.h"
#include "mhd/error.h"
#include "train/metric_names.h"

namespace mhd::viewer {

// --- export: metrics, reference lines, text that fits ------------------------------------------

std::vector<std::string> export_metrics(const StudyQuery& query, const std::vector<std::string>& requested,
                                        bool keep_constant, bool all_metrics) {
  const auto& known = query.metric_names();
  if (!requested.empty()) {
    std::vector<std::string> out;
    for (const auto& name : requested) {
      if (std::find(known.begin(), known.end(), name) == known.end())
        throw Error(query.path() + ": " + unknown_name_message("metric", name, known));
      if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
    }
    return out;
  }
  const auto& headline = headline_metrics();
  std::vector<std::string> out;
  for (const auto& name : known) {
    if (!all_metrics && std::find(headline.begin(), headline.end(), name) == headline.end()) continue;
    if (keep_constant || !query.constant_metric(name)) out.push_back(name);
  }
  return out;
}

bool is_accuracy_metric(const std::string& metric) {
  return metric != metric::kChanceAccuracy &&
         (metric.find("accuracy") != std::string::npos || metric.rfind(metric::kContinualAccuracyPrefix, 0) == 0);
}

const std::vector<std::string>& headline_metrics() {
  static const std::vector<std::string> names = {
      metric::kLoss,          metric::kTaskLoss,    metric::kEvalLoss,     metric::kEvalAccuracy,
      metric::kTrainAccuracy, metric::kValAccuracy, metric::kRelResidual,  metric::kSolverIters,
      metric::kConvergedShare, metric::kStepMs,     metric::kPeakRssMb};
  return names;
}

std::vector<ReferenceLine> reference_lines(const StudyQuery& query, const std::string& metric) {
  const char* source = is_accuracy_metric(metric) ? metric::kChanceAccuracy
                       : metric == metric::kRelResidual ? metric::kSolverTol
                                                        : nullptr;
  if (!source) return {};
  const auto values = query.distinct_values(source, 3);
  if (values.size() > 3) return {};
  const QString word = is_accuracy_metric(metric) ? QStringLiteral("chance") : QStringLiteral("tol");
  std::vector<ReferenceLine> out;
  for (const double v : values) out.push_back({word + QStringLiteral(" %1").arg(v, 0, 'g', 4), v});
  return out;
}

QPen reference_pen() {
  QPen pen(QColor(0x55, 0x55, 0x55));
  pen.setWidthF(1.6);
  pen.setStyle(Qt::DashLine);
  return pen;
}

void add_reference_lines(QChart* chart, Range& range, const std::vector<ReferenceLine>& lines, double x0,
                         double x1, bool log_y) {
  for (const auto& ref : lines) {
    if (log_y && !(ref.y > 0)) continue;
    auto* line = new QLineSeries();
    line->setName(ref.label);
    line->append(x0, ref.y);
    line->append(x1, ref.y);
    line->setPen(reference_pen());
    chart->addSeries(line);
    range.add(x0, ref.y);
    range.add(x1, ref.y);
  }
}


}  // namespace mhd::viewer
