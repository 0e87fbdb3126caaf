// A chart kind of mhd-viewer: one tab in the window (its controls and a chart view) and the charts it
// contributes to --export. A new kind of chart is one new ChartPage subclass plus one line in
// make_chart_pages().
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include <QString>
#include <QWidget>

#include "query.h"

class QAbstractSeries;
class QChart;
class QChartView;
class QVBoxLayout;
class QHBoxLayout;
class QLabel;
class QComboBox;

namespace mhd::viewer {

// A chart to write as a PNG: file name stem (e.g. "curves_loss") and the chart (owned by the caller).
struct ExportChart {
  QString name;
  std::unique_ptr<QChart> chart;
};

class ChartPage : public QWidget {
 public:
  explicit ChartPage(QWidget* parent = nullptr);
  ~ChartPage() override;

  virtual QString title() const = 0;
  // The study changed (first load, or a refresh while it is written): refill controls, redraw.
  virtual void setQuery(const StudyQuery* query) = 0;
  // Every chart of this kind for --export, with the default settings.
  virtual std::vector<ExportChart> exportCharts(const StudyQuery& query) const = 0;

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
// A chart with the viewer's look: title, legend at the bottom, no animation.
std::unique_ptr<QChart> new_chart(const QString& title);
// The data range of a chart, grown point by point; attach_axes() turns it into the chart's axes
// (value or log axes; y with a margin, x with one when pad_x), attached to every series the chart has.
struct Range {
  double xmin = 1e300, xmax = -1e300, ymin = 1e300, ymax = -1e300;
  void add(double x, double y);
  bool empty() const { return xmin > xmax; }
};
void attach_axes(QChart* chart, const Range& range, const QString& x_title, const QString& y_title,
                 bool log_x, bool log_y, bool pad_x = false);
// Hides the legend entry of a helper series (a band, an error bar).
void hide_from_legend(QChart* chart, QAbstractSeries* series);
// QString from std::string.
inline QString qs(const std::string& s) { return QString::fromStdString(s); }
// Refills a choice box with `items`, keeping the current choice when it is still there, else picking
// `preferred` (or the first item), without emitting change signals.
void refill_choices(QComboBox* box, const std::vector<std::string>& items, const QString& preferred);

}  // namespace mhd::viewer
