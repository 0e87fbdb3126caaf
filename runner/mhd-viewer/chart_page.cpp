#include "chart_page.h"

#include <algorithm>
#include <cmath>

#include <QAbstractSeries>
#include <QBarCategoryAxis>
#include <QCategoryAxis>
#include <QFontMetricsF>
#include <QGraphicsLayout>
#include <QGraphicsLineItem>
#include <QGraphicsRectItem>
#include <QGraphicsScene>
#include <QGraphicsSimpleTextItem>
#include <QGraphicsTextItem>
#include <QLineSeries>
#include <QTextDocument>
#include <QChart>
#include <QChartView>
#include <QResizeEvent>
#include <QComboBox>
#include <QHBoxLayout>
#include <QLabel>
#include <QLegend>
#include <QLegendMarker>
#include <QLogValueAxis>
#include <QRegularExpression>
#include <QSignalBlocker>
#include <QValueAxis>
#include <QVBoxLayout>

#include "mhd/catalog.h"
#include "mhd/error.h"
#include "train/metric_names.h"

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

namespace {
// The window's chart view: category labels (the ablation's variant names) are fitted to the view as the
// export fits them to its PNG, again whenever the view is resized, so the tab shows what the export
// writes rather than Qt's elided labels.
class FittedChartView : public QChartView {
 public:
  using QChartView::QChartView;

 protected:
  void resizeEvent(QResizeEvent* event) override {
    QChartView::resizeEvent(event);
    if (chart()) fit_category_labels(chart(), size());
  }
};
}  // namespace

ChartPage::ChartPage(QWidget* parent) : QWidget(parent) {
  auto* layout = new QVBoxLayout(this);
  controls_ = new QHBoxLayout();
  layout->addLayout(controls_);
  view_ = new FittedChartView(this);
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
    if (view_->width() > 0 && view_->height() > 0) fit_category_labels(view_->chart(), view_->size());
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

QPen series_pen(int index) {
  // Lines of equal values lie on each other: a dash pattern per series keeps the one below visible
  // through the gaps of the one above (and tells series apart in black and white).
  static const Qt::PenStyle styles[] = {Qt::SolidLine, Qt::DashLine, Qt::DotLine, Qt::DashDotLine, Qt::DashDotDotLine};
  QPen pen(series_color(index));
  pen.setWidthF(2.0);
  pen.setStyle(styles[index % 5]);
  return pen;
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
    // A quantity that is never negative (a loss, a norm) gets no negative axis below it.
    lo = lo >= 0 ? std::max(0.0, lo - margin) : lo - margin;
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

namespace {
// A log axis labelled at `ticks` (the chart's x are log10 of them): a category axis whose labels sit on
// the tick positions.
QAbstractAxis* make_log_tick_axis(double lo, double hi, const std::vector<double>& ticks, const QString& title) {
  auto* axis = new QCategoryAxis();
  const double margin = std::max(0.05, (hi - lo) * 0.08);
  axis->setRange(lo - margin, hi + margin);
  for (const double t : ticks) axis->append(QString::number(t, 'g', 6), std::log10(t));
  axis->setLabelsPosition(QCategoryAxis::AxisLabelsPositionOnValue);
  axis->setTitleText(title + QStringLiteral(" (log scale)"));
  QFont font;
  font.setPointSize(10);
  axis->setLabelsFont(font);
  return axis;
}
}  // namespace

void attach_axes(QChart* chart, const Range& range, const QString& x_title, const QString& y_title, bool log_x,
                 bool log_y, bool pad_x, const std::vector<double>& log_x_ticks) {
  Range r = range;
  if (r.empty()) r = Range{0, 1, 0, 1};
  QAbstractAxis* x = log_x && !log_x_ticks.empty() ? make_log_tick_axis(r.xmin, r.xmax, log_x_ticks, x_title)
                                                   : make_axis(r.xmin, r.xmax, log_x, x_title, pad_x);
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

// --- export: text that fits ------------------------------------------------------------------
namespace {

// One legend entry as lay_out_for_export draws it.
struct LegendEntry {
  QString text;
  QPen line;      // a line series: its pen (colour and dash); else Qt::NoPen
  QBrush fill;    // an area or a bar set: its fill
  double width = 0.0;
};

std::vector<LegendEntry> legend_entries(QChart* chart, const QFontMetricsF& fm, double swatch, double gap) {
  std::vector<LegendEntry> out;
  for (QLegendMarker* m : chart->legend()->markers()) {
    if (!m->isVisible()) continue;
    LegendEntry e;
    e.text = m->label();
    if (auto* line = qobject_cast<QLineSeries*>(m->series())) {
      e.line = line->pen();
      e.line.setWidthF(std::max(2.0, e.line.widthF()));
    } else {
      e.line = Qt::NoPen;
      e.fill = m->brush();
    }
    e.width = swatch + gap + fm.horizontalAdvance(e.text);
    out.push_back(e);
  }
  return out;
}

// The legend as rows of entries centred under the plot, in the space the bottom margin leaves.
void flow_legend(QChart* chart, const QSize& size) {
  QLegend* legend = chart->legend();
  if (!legend->isVisible()) return;
  const QFont font = legend->font();
  const QFontMetricsF fm(font);
  const double swatch = 2.0 * fm.height(), gap = 0.5 * fm.height(), spacing = 1.5 * fm.height();
  const double row_height = 1.35 * fm.height();
  const QMargins margins = chart->margins();
  const double available = size.width() - margins.left() - margins.right() - 16.0;
  auto entries = legend_entries(chart, fm, swatch, gap);
  if (entries.empty()) return;
  // Rows: as many entries as fit the width; an entry wider than the width gets a row of its own and
  // its text wraps (QGraphicsTextItem::setTextWidth), so nothing is elided.
  std::vector<std::vector<const LegendEntry*>> rows(1);
  double used = 0.0;
  for (const auto& e : entries) {
    const double w = std::min(e.width, available);
    if (!rows.back().empty() && used + spacing + w > available) {
      rows.emplace_back();
      used = 0.0;
    }
    used += (rows.back().empty() ? 0.0 : spacing) + w;
    rows.back().push_back(&e);
  }
  legend->setVisible(false);
  // Item heights first: a wrapped entry is taller than one line.
  std::vector<std::vector<QGraphicsTextItem*>> texts;
  std::vector<double> heights;
  double total = 0.0;
  for (const auto& row : rows) {
    texts.emplace_back();
    double h = row_height;
    for (const LegendEntry* e : row) {
      auto* text = new QGraphicsTextItem(e->text, chart);
      text->setFont(font);
      text->setDefaultTextColor(legend->labelColor());
      text->document()->setDocumentMargin(0);
      if (e->width > available) text->setTextWidth(available - swatch - gap);
      texts.back().push_back(text);
      h = std::max(h, text->boundingRect().height() + 0.35 * fm.height());
    }
    heights.push_back(h);
    total += h;
  }
  const int legend_height = static_cast<int>(std::ceil(total + 0.5 * fm.height()));
  chart->setMargins(QMargins(margins.left(), margins.top(), margins.right(), margins.bottom() + legend_height));
  double y = size.height() - margins.bottom() - legend_height + 0.25 * fm.height();
  for (std::size_t r = 0; r < rows.size(); ++r) {
    double row_width = 0.0;
    for (std::size_t k = 0; k < rows[r].size(); ++k)
      row_width += (k ? spacing : 0.0) + std::min(rows[r][k]->width, available);
    double x = (size.width() - row_width) / 2.0;
    for (std::size_t k = 0; k < rows[r].size(); ++k) {
      const LegendEntry& e = *rows[r][k];
      const double mid = y + fm.height() / 2.0;
      if (e.line.style() != Qt::NoPen) {
        auto* mark = new QGraphicsLineItem(x, mid, x + swatch, mid, chart);
        mark->setPen(e.line);
      } else {
        auto* mark = new QGraphicsRectItem(x + swatch * 0.2, mid - fm.height() * 0.35, swatch * 0.6,
                                           fm.height() * 0.7, chart);
        mark->setBrush(e.fill);
        mark->setPen(Qt::NoPen);
      }
      texts[r][k]->setPos(x + swatch + gap, y);
      x += std::min(e.width, available) + spacing;
    }
    y += heights[r];
  }
}

bool is_elided(const QString& text) {
  return text.contains(QStringLiteral("...")) || text.contains(QChar(0x2026));
}

// The visible texts under `item` (axis labels, title, legend texts) that Qt elided.
void collect_elided(const QGraphicsItem* item, QStringList& out) {
  for (const QGraphicsItem* child : item->childItems()) {
    if (!child->isVisible()) continue;
    QString text;
    if (auto* t = dynamic_cast<const QGraphicsTextItem*>(child)) text = t->toPlainText();
    else if (auto* t = dynamic_cast<const QGraphicsSimpleTextItem*>(child)) text = t->text();
    if (is_elided(text)) out << text;
    collect_elided(child, out);
  }
}

// A label without its line breaks and spaces: what must survive any re-breaking.
QString letters(QString text) {
  text.replace(QStringLiteral("<br>"), QStringLiteral(" "));
  text.remove(QRegularExpression(QStringLiteral("\\s")));
  return text;
}

// Whether Qt elided one of `axis`'s category labels when it last laid the chart out.
bool category_label_cut(const QChart* chart, QBarCategoryAxis* axis) {
  QStringList elided;
  collect_elided(chart, elided);
  for (QString text : elided) {
    text = letters(text);
    text.remove(QChar(0x2026));
    text.remove(QStringLiteral("..."));
    for (const QString& category : axis->categories())
      if (letters(category).startsWith(text)) return true;
  }
  return false;
}

void relayout(QChart* chart) {
  chart->layout()->invalidate();
  chart->layout()->activate();
}

// `label`'s lines ("<br>") re-broken at spaces into lines no wider than `width` where the words allow;
// with `break_words`, a word wider than `width` is also broken after a '_', '-', '.', '=', '/', ',' or
// ':' ("hierarchical_" / "memory"), so that a long variant name needs no elision. No character is lost.
QString wrap_label(const QString& label, const QFontMetricsF& fm, double width, bool break_words = false) {
  QStringList lines;
  for (const QString& part : label.split(QStringLiteral("<br>"))) {
    // Pieces of words, each with whether a space comes before it.
    std::vector<std::pair<QString, bool>> pieces;
    for (const QString& word : part.split(QLatin1Char(' '), Qt::SkipEmptyParts)) {
      if (!break_words || fm.horizontalAdvance(word) <= width) {
        pieces.emplace_back(word, true);
        continue;
      }
      QString piece;
      bool first = true;
      for (const QChar c : word) {
        piece += c;
        if (QStringLiteral("_-./=,:").contains(c)) {
          pieces.emplace_back(piece, first);
          piece.clear();
          first = false;
        }
      }
      if (!piece.isEmpty()) pieces.emplace_back(piece, first);
    }
    QString line;
    for (const auto& [piece, spaced] : pieces) {
      const QString longer = line.isEmpty() ? piece : line + (spaced ? QStringLiteral(" ") : QString()) + piece;
      if (!line.isEmpty() && fm.horizontalAdvance(longer) > width) {
        lines << line;
        line = piece;
      } else {
        line = longer;
      }
    }
    lines << line;
  }
  return lines.join(QStringLiteral("<br>"));
}

void set_categories(QBarCategoryAxis* axis, const QStringList& labels) {
  axis->clear();
  axis->append(labels);
}

// Category labels that Qt does not elide. Qt cuts a label on a bottom axis to its category's width (a
// slanted one too), a vertical one to a share of the chart's height, and a label on a left axis (the
// ablation's horizontal bars) to about 40% of the chart's width or to its category's height. Which
// layout fits is decided by Qt's own layout: each candidate is laid out and the first that Qt leaves
// whole is kept, in order of readability:
// * left axis: each line of the label ("variant<br>sweep (n=...)") re-broken to 30% of the width
//   (long names broken after '_' or '-'); then the lines run together (fewer lines per category when
//   categories are many); then the same at smaller font sizes.
// * bottom axis: horizontal, re-broken at spaces to the category's width as laid out; then vertical,
//   re-broken into lines no longer than the longest word (as low as the words allow); then smaller.
}  // namespace

void fit_category_labels(QChart* chart, const QSize& size) {
  for (QAbstractAxis* a : chart->axes()) {
    auto* axis = qobject_cast<QBarCategoryAxis*>(a);
    if (!axis || axis->count() == 0) continue;
    // The labels as built, kept on the axis: a refit (the window resized) starts from them, not from
    // the last fit's line breaks.
    const char* kOriginal = "mhd_original_categories";
    if (!axis->property(kOriginal).isValid()) axis->setProperty(kOriginal, axis->categories());
    const QStringList original = axis->property(kOriginal).toStringList();
    QFont font = axis->labelsFont();
    if (!axis->property("mhd_original_point_size").isValid())
      axis->setProperty("mhd_original_point_size", font.pointSize() > 0 ? font.pointSize() : 10);
    const bool left = axis->orientation() == Qt::Vertical;
    const int point_size = axis->property("mhd_original_point_size").toInt();
    for (int smaller = 0; smaller <= 3; ++smaller) {
      font.setPointSize(point_size - smaller);
      axis->setLabelsFont(font);
      const QFontMetricsF fm(font);
      if (left) {
        for (const bool run_together : {false, true}) {
          if (run_together && !original.join(QString()).contains(QStringLiteral("<br>"))) continue;
          QStringList wrapped;
          for (QString label : original) {
            if (run_together) label.replace(QStringLiteral("<br>"), QStringLiteral(" "));
            wrapped << wrap_label(label, fm, 0.3 * size.width(), true);
          }
          set_categories(axis, wrapped);
          axis->setLabelsAngle(0);
          relayout(chart);
          if (!category_label_cut(chart, axis)) return;
        }
        continue;
      }
      // Bottom axis: the category's width as Qt lays the plot out, less a margin on each side.
      set_categories(axis, original);
      axis->setLabelsAngle(0);
      relayout(chart);
      const double line_width = chart->plotArea().width() / axis->count() - 1.5 * fm.height();
      QStringList wrapped;
      for (const QString& label : original) wrapped << wrap_label(label, fm, line_width);
      set_categories(axis, wrapped);
      relayout(chart);
      if (!category_label_cut(chart, axis)) return;
      double longest_word = 0.0;
      for (const QString& label : original)
        for (const QString& part : label.split(QStringLiteral("<br>")))
          for (const QString& word : part.split(QLatin1Char(' '), Qt::SkipEmptyParts))
            longest_word = std::max(longest_word, fm.horizontalAdvance(word));
      wrapped.clear();
      for (const QString& label : original) wrapped << wrap_label(label, fm, longest_word);
      set_categories(axis, wrapped);
      axis->setLabelsAngle(-90);
      relayout(chart);
      if (!category_label_cut(chart, axis)) return;
    }
    // Nothing fits (hundreds of categories): the smallest try stays, and --export warns about the cut.
  }
}

void lay_out_for_export(QChart* chart, const QSize& size) {
  chart->resize(size);  // lays the chart out once: its legend and markers exist from here on
  // The legend first: it sets the bottom margin, which the category labels then have to live with.
  flow_legend(chart, size);
  relayout(chart);
  fit_category_labels(chart, size);
  // Again, synchronously, with the final margins and labels: the view's resize to the same size would
  // not.
  relayout(chart);
}

QStringList elided_texts(const QGraphicsScene& scene) {
  QStringList out;
  for (QGraphicsItem* item : scene.items()) {
    if (!item->isVisible()) continue;
    QString text;
    if (auto* t = dynamic_cast<QGraphicsTextItem*>(item)) text = t->toPlainText();
    else if (auto* t = dynamic_cast<QGraphicsSimpleTextItem*>(item)) text = t->text();
    if (is_elided(text)) out << text;
  }
  return out;
}

}  // namespace mhd::viewer
