#include "chart_page.h"

#include <cmath>

#include <QAbstractSeries>
#include <QChart>
#include <QChartView>
#include <QComboBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QLegend>
#include <QLegendMarker>
#include <QLogValueAxis>
#include <QSignalBlocker>
#include <QValueAxis>
#include <QVBoxLayout>

namespace mhd::viewer {

// Each chart kind lives in its own file and contributes a factory here.
ChartPage* new_curves_page(QWidget* parent);
ChartPage* new_ablation_page(QWidget* parent);
ChartPage* new_scaling_page(QWidget* parent);
ChartPage* new_traces_page(QWidget* parent);
ChartPage* new_probes_page(QWidget* parent);

std::vector<ChartPage*> make_chart_pages(QWidget* parent) {
  return {new_curves_page(parent), new_ablation_page(parent), new_scaling_page(parent), new_traces_page(parent),
          new_probes_page(parent)};
}

ChartPage::ChartPage(QWidget* parent) : QWidget(parent) {
  auto* layout = new QVBoxLayout(this);
  controls_ = new QHBoxLayout();
  layout->addLayout(controls_);
  view_ = new QChartView(this);
  view_->setRenderHint(QPainter::Antialiasing);
  layout->addWidget(view_, 1);
  message_ = new QLabel(this);
  message_->setAlignment(Qt::AlignCenter);
  message_->hide();
  layout->addWidget(message_, 1);
}

ChartPage::~ChartPage() = default;

void ChartPage::setChart(std::unique_ptr<QChart> chart, const QString& message) {
  QChart* old = view_->chart();
  if (chart) {
    view_->setChart(chart.release());
    view_->show();
    message_->hide();
  } else {
    view_->setChart(new QChart());
    view_->hide();
    message_->setText(message);
    message_->show();
  }
  delete old;
}

QColor series_color(int index) {
  // Tableau 10: distinct, print-friendly.
  static const QColor colors[] = {QColor(0x1f, 0x77, 0xb4), QColor(0xff, 0x7f, 0x0e), QColor(0x2c, 0xa0, 0x2c),
                                  QColor(0xd6, 0x27, 0x28), QColor(0x94, 0x67, 0xbd), QColor(0x8c, 0x56, 0x4b),
                                  QColor(0xe3, 0x77, 0xc2), QColor(0x7f, 0x7f, 0x7f), QColor(0xbc, 0xbd, 0x22),
                                  QColor(0x17, 0xbe, 0xcf)};
  return colors[index % 10];
}

std::unique_ptr<QChart> new_chart(const QString& title) {
  auto chart = std::make_unique<QChart>();
  chart->setTitle(title);
  QFont f = chart->titleFont();
  f.setPointSize(13);
  f.setBold(true);
  chart->setTitleFont(f);
  chart->setAnimationOptions(QChart::NoAnimation);
  chart->legend()->setAlignment(Qt::AlignBottom);
  chart->setMargins(QMargins(8, 8, 8, 8));
  return chart;
}

}  // namespace mhd::viewer

namespace mhd::viewer {

void Range::add(double x, double y) {
  if (!std::isfinite(x) || !std::isfinite(y)) return;
  xmin = std::min(xmin, x);
  xmax = std::max(xmax, x);
  ymin = std::min(ymin, y);
  ymax = std::max(ymax, y);
}

namespace {
QAbstractAxis* make_axis(double lo, double hi, bool log, const QString& title, bool pad) {
  QFont font;
  font.setPointSize(10);
  if (log) {
    auto* axis = new QLogValueAxis();
    lo = lo > 0 ? lo : 1e-12;
    hi = hi > lo ? hi : lo * 10;
    if (pad) {
      lo /= 1.3;
      hi *= 1.3;
    }
    axis->setRange(lo, hi);
    // Labels sit at powers of the base: decades for a wide range; for a narrow one (a loss between 2.5
    // and 4) a base that puts about five labels on the axis.
    if (hi / lo >= 10.0) {
      axis->setBase(10.0);
      axis->setLabelFormat("%g");
      axis->setMinorTickCount(8);
    } else {
      axis->setBase(std::max(1.0001, std::pow(hi / lo, 1.0 / 5.0)));
      axis->setLabelFormat("%.3g");
      axis->setMinorTickCount(0);
    }
    axis->setTitleText(title);
    axis->setLabelsFont(font);
    return axis;
  }
  auto* axis = new QValueAxis();
  if (hi <= lo) {
    const double pad = lo == 0 ? 1.0 : std::abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  } else if (pad) {
    const double margin = (hi - lo) * 0.05;
    lo -= margin;
    hi += margin;
  }
  axis->setRange(lo, hi);
  if (pad) {
    axis->applyNiceNumbers();
  } else if (hi - lo >= 1 && std::floor(lo) == lo) {
    // Steps and iterations: integer ticks at a 1-2-5 interval, about 8 of them.
    const double raw = (hi - lo) / 8.0;
    const double decade = std::pow(10.0, std::floor(std::log10(std::max(raw, 1.0))));
    double interval = decade;
    for (double m : {1.0, 2.0, 5.0, 10.0})
      if (m * decade >= raw) {
        interval = m * decade;
        break;
      }
    axis->setTickType(QValueAxis::TicksDynamic);
    axis->setTickAnchor(0.0);
    axis->setTickInterval(std::max(1.0, interval));
  }
  axis->setLabelFormat("%g");
  axis->setTitleText(title);
  axis->setLabelsFont(font);
  return axis;
}
}  // namespace

void attach_axes(QChart* chart, const Range& range, const QString& x_title, const QString& y_title, bool log_x,
                 bool log_y, bool pad_x) {
  Range r = range;
  if (r.empty()) r = Range{0, 1, 0, 1};
  QAbstractAxis* x = make_axis(r.xmin, r.xmax, log_x, x_title, pad_x);
  QAbstractAxis* y = make_axis(r.ymin, r.ymax, log_y, y_title, true);
  chart->addAxis(x, Qt::AlignBottom);
  chart->addAxis(y, Qt::AlignLeft);
  for (QAbstractSeries* s : chart->series()) {
    s->attachAxis(x);
    s->attachAxis(y);
  }
}

void hide_from_legend(QChart* chart, QAbstractSeries* series) {
  for (QLegendMarker* m : chart->legend()->markers(series)) m->setVisible(false);
}

void refill_choices(QComboBox* box, const std::vector<std::string>& items, const QString& preferred) {
  const QString current = box->currentText();
  const QSignalBlocker block(box);
  box->clear();
  for (const auto& item : items) box->addItem(qs(item));
  const int i = box->findText(current.isEmpty() ? preferred : current);
  box->setCurrentIndex(i >= 0 ? i : 0);
}

}  // namespace mhd::viewer
