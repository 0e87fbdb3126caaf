// A chart kind of mhd-viewer: one tab in the window (its controls and a chart view) and the charts it
// contributes to --export. A new kind of chart is one new ChartPage subclass plus one line in
// make_chart_pages().
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include <QPen>
#include <QSize>
#include <QString>
#include <QStringList>
#include <QWidget>

#include "query.h"

class QAbstractSeries;
class QChart;
class QChartView;
class QVBoxLayout;
class QHBoxLayout;
class QLabel;
class QComboBox;
class QGraphicsScene;

namespace mhd::viewer {

// A chart to write as a PNG: file name stem (e.g. "curves_loss") and the chart (owned by the caller).
struct ExportChart {
  QString name;
  std::unique_ptr<QChart> chart;
};

// How `mhd-viewer --export` draws (README, "Looking at results"): the command line's --metric,
// --all-metrics, --log-y, --smooth and --keep-constant. The curve settings are those of the curves
// page's controls.
struct ExportOptions {
  // The metrics whose curves, ablation and scaling charts are written, as export_metrics() resolves
  // them; traces, probe charts and the window do not depend on it.
  std::vector<std::string> metrics;
  bool log_y = false;        // curves and scaling: logarithmic y axis (values <= 0 are left out)
  double smoothing = 0.0;    // curves: EMA weight in [0, 1), as the curves page's smoothing slider
  bool keep_constant = false;
  bool all_metrics = false;
};

// The metrics an export draws: `requested` as given when it is not empty (every name must be one of the
// study's metrics: mhd::Error "unknown metric 'X'; did you mean 'Y'? (known: ...)" otherwise), else
// the study's headline metrics (headline_metrics()), or with `all_metrics` every metric of the study;
// of those, the ones that are not constant over it (StudyQuery::constant_metric), or all with
// `keep_constant`.
std::vector<std::string> export_metrics(const StudyQuery& query, const std::vector<std::string>& requested,
                                        bool keep_constant, bool all_metrics = false);
// What a paper's figures show by default: the objective and task losses, the accuracies, the forward
// solve (residual, iterations, share converged) and the cost (step time, peak memory).
const std::vector<std::string>& headline_metrics();
// An accuracy (not chance_accuracy itself): its charts carry the chance line and start at 0.
bool is_accuracy_metric(const std::string& metric);

class ChartPage : public QWidget {
 public:
  explicit ChartPage(QWidget* parent = nullptr);
  ~ChartPage() override;

  virtual QString title() const = 0;
  // The study changed (first load, or a refresh while it is written): refill controls, redraw.
  virtual void setQuery(const StudyQuery* query) = 0;
  // Every chart of this kind for --export, drawn as `options` say.
  virtual std::vector<ExportChart> exportCharts(const StudyQuery& query, const ExportOptions& options) const = 0;

 protected:
  // Builds the shared layout: a row of controls above the chart view.
  QHBoxLayout* controls() const { return controls_; }
  // Shows `chart` in the view (taking ownership), or `message` in place of a chart when it is null.
  void setChart(std::unique_ptr<QChart> chart, const QString& message = {});

 private:
  QHBoxLayout* controls_ = nullptr;
  QChartView* view_ = nullptr;
  QLabel* message_ = nullptr;
};

std::vector<ChartPage*> make_chart_pages(QWidget* parent);

// --- shared chart helpers (chart_page.cpp) -----------------------------------------------------
QColor series_color(int index);
// The line of series `index`: its colour, width 2, and a dash pattern of its own (solid, dash, dot, ...).
QPen series_pen(int index);
// A chart with the viewer's look: title, legend at the bottom, no animation.
std::unique_ptr<QChart> new_chart(const QString& title);
// The data range of a chart, grown point by point; attach_axes() turns it into the chart's axes
// (value or log axes; y with a margin, x with one when pad_x), attached to every series the chart has.
struct Range {
  double xmin = 1e300, xmax = -1e300, ymin = 1e300, ymax = -1e300;
  void add(double x, double y);
  bool empty() const { return xmin > xmax; }
};
// With log_x and `log_x_ticks` (the swept values), the series hold log10(x) and the x axis is labelled at
// those values instead of at powers of ten.
void attach_axes(QChart* chart, const Range& range, const QString& x_title, const QString& y_title,
                 bool log_x, bool log_y, bool pad_x = false, const std::vector<double>& log_x_ticks = {});
// Hides the legend entry of a helper series (a band, an error bar).
void hide_from_legend(QChart* chart, QAbstractSeries* series);

// A horizontal line a chart of `metric` shows for reference: chance accuracy on accuracy charts, the
// forward solver's tol on the relative residual (docs/design.md §4: a solve has converged when the
// largest rel is below tol). Taken from the study's own `chance_accuracy` and `solver_tol` metrics,
// one line per distinct value (none when a study has more than 3).
struct ReferenceLine {
  QString label;  // "chance 0.0625", "tol 0.001"
  double y = 0.0;
};
std::vector<ReferenceLine> reference_lines(const StudyQuery& query, const std::string& metric);
// The dashed grey pen of a reference line.
QPen reference_pen();
// Adds each line as a dashed grey series from x0 to x1 (with a legend entry) and grows `range` to show
// it; a line at y <= 0 is left out of a log axis. Call before attach_axes().
void add_reference_lines(QChart* chart, Range& range, const std::vector<ReferenceLine>& lines, double x0,
                         double x1, bool log_y);

// Lays a chart out for a PNG of `size` so that no text is cut: the legend as rows of entries under the
// plot (Qt's own legend elides labels that do not fit in one row), with the bottom margin measured
// from the legend font's metrics, and category labels re-broken into lines (and, when many, set
// smaller) until Qt's own layout draws every one whole: on a left axis (the ablation's horizontal
// bars) lines of at most 30% of the width; on a bottom axis horizontal lines that fit their category,
// else vertical ones (Qt elides slanted ones).
void lay_out_for_export(QChart* chart, const QSize& size);
// Only the category labels' part of that, for a chart shown at `size` (the window's view calls it on each
// resize); a refit starts from the labels as built.
void fit_category_labels(QChart* chart, const QSize& size);
// The texts of `scene` that Qt elided ("fixed-point task.num_p..."): empty when nothing is cut.
QStringList elided_texts(const QGraphicsScene& scene);
// QString from std::string.
inline QString qs(const std::string& s) { return QString::fromStdString(s); }
// Refills a choice box with `items`, keeping the current choice when it is still there, else picking
// `preferred` (or the first item), without emitting change signals.
void refill_choices(QComboBox* box, const std::vector<std::string>& items, const QString& preferred);

}  // namespace mhd::viewer
