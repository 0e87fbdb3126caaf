// mhd-viewer FILE.sqlite [--export DIR [--metric NAME]... [--all-metrics] [--log-y] [--smooth W] [--keep-constant]] [--study ID]
// Browses a results file in a Qt Charts window, or with --export renders every chart to PNG offscreen
// (README, "Looking at results").
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <QApplication>
#include <QChart>
#include <QChartView>
#include <QDir>
#include <QMessageBox>
#include <QPixmap>

#include "chart_page.h"
#include "main_window.h"
#include "mhd/error.h"
#include "query.h"

namespace {

constexpr int kExportWidth = 1200;
constexpr int kExportHeight = 800;

const char* kUsage =
    "usage: mhd-viewer FILE.sqlite [--export DIR [--metric NAME]... [--all-metrics] [--log-y] [--smooth W]\n"
    "                              [--keep-constant]] [--study ID]\n"
    "  Browse an mhd results file: the study's variants, sweep points and trials, training curves,\n"
    "  ablation bars, scaling and solver traces. The file is opened read-only and re-read every 2 s\n"
    "  while a trial is pending or running.\n"
    "  --export DIR     render every chart to DIR/*.png (1200x800) and the window to DIR/window.png\n"
    "                   without a display, list the files written, exit\n"
    "  --metric NAME    with --export: curves, ablation and scaling charts of these metrics only\n"
    "                   (repeat it, or NAME,NAME,...); default: the headline metrics (loss, task_loss,\n"
    "                   eval_loss, the accuracies, rel_residual, solver_iters, converged_share,\n"
    "                   step_ms, peak_rss_mb) that the study has and that are not constant\n"
    "  --all-metrics    with --export: every metric of the study that is not constant\n"
    "  --log-y          with --export: logarithmic y axis on the curves and scaling charts (scaling\n"
    "                   charts of a positive sweep axis are log x, and log-log for *_ms, *_mb, *_bytes)\n"
    "  --smooth W       with --export: smooth each seed's curve by an exponential moving average of\n"
    "                   weight W in [0, 1) (the curves page's smoothing; default 0, none)\n"
    "  --keep-constant  with --export: also draw metrics that have one value over the whole study\n"
    "                   (lr, solver_tol, chance_accuracy, ...)\n"
    "  --study ID       the study to show (default: the latest in the file)\n";

int usage_error(const std::string& message) {
  std::cerr << "mhd-viewer: error: " << message << "\n" << kUsage;
  return 2;
}

QString file_safe(const QString& name) {
  QString out = name;
  for (QChar& c : out)
    if (!(c.isLetterOrNumber() || c == '_' || c == '-' || c == '.')) c = '_';
  return out;
}

// NAME,NAME,... -> the names (empty pieces dropped).
std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(',', start), text.size());
    if (end > start) out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// --smooth's weight: a number in [0, 1), as the curves page's slider (query.h, ema()).
std::optional<double> parse_weight(const std::string& text) {
  char* end = nullptr;
  const double w = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(w >= 0.0 && w < 1.0)) return std::nullopt;
  return w;
}

int export_all(const mhd::viewer::StudyQuery& query, const QString& dir, const mhd::viewer::ExportOptions& options,
               std::unique_ptr<mhd::viewer::StudyQuery> window_query) {
  if (!QDir().mkpath(dir)) {
    std::cerr << "mhd-viewer: error: cannot create " << dir.toStdString() << "\n";
    return 2;
  }
  int written = 0;
  QWidget holder;  // the pages are widgets; they only build charts here
  for (auto* page : mhd::viewer::make_chart_pages(&holder)) {
    for (auto& item : page->exportCharts(query, options)) {
      const QSize size(kExportWidth, kExportHeight);
      mhd::viewer::lay_out_for_export(item.chart.get(), size);
      QChartView view(item.chart.release());  // the view owns the chart
      view.setRenderHint(QPainter::Antialiasing);
      view.setFrameShape(QFrame::NoFrame);
      view.resize(size);
      view.show();
      const QString path = QDir(dir).filePath(file_safe(item.name) + ".png");
      const QImage image = view.grab().toImage().convertToFormat(QImage::Format_RGB32);
      // Nothing may be cut (lay_out_for_export); say so if Qt elided a text all the same.
      for (const QString& text : mhd::viewer::elided_texts(*view.scene()))
        std::cerr << "mhd-viewer: warning: " << path.toStdString() << ": text cut: '" << text.toStdString() << "'\n";
      if (!image.save(path, "PNG")) {
        std::cerr << "mhd-viewer: error: cannot write " << path.toStdString() << "\n";
        return 2;
      }
      std::cout << path.toStdString() << "\n";
      ++written;
    }
  }
  // The whole window as well (tree and the first tab), e.g. for a README.
  {
    mhd::viewer::MainWindow window(std::move(window_query));
    window.resize(1500, 900);
    window.show();
    QApplication::processEvents();
    const QString path = QDir(dir).filePath(QStringLiteral("window.png"));
    if (!window.grab().toImage().convertToFormat(QImage::Format_RGB32).save(path, "PNG")) {
      std::cerr << "mhd-viewer: error: cannot write " << path.toStdString() << "\n";
      return 2;
    }
    std::cout << path.toStdString() << "\n";
    ++written;
  }
  std::cout << written << " chart(s) written to " << dir.toStdString() << "\n";
  return 0;
}

// Offscreen rendering makes Qt say things that are no news to someone exporting PNGs; anything else
// still reaches stderr.
QtMessageHandler g_default_handler = nullptr;
void quiet_offscreen(QtMsgType type, const QMessageLogContext& context, const QString& message) {
  if (message.contains(QLatin1String("propagateSizeHints")) || message.contains(QLatin1String("XDG_RUNTIME_DIR")))
    return;
  if (g_default_handler) g_default_handler(type, context, message);
}

}  // namespace

int main(int argc, char** argv) {
  std::string file;
  std::optional<std::string> export_dir;
  std::optional<std::int64_t> study_id;
  std::vector<std::string> metrics;  // --metric, in the order given
  mhd::viewer::ExportOptions options;
  bool chart_options = false;  // any option that only --export reads
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      return 0;
    } else if (arg == "--export" || arg == "--study") {
      if (i + 1 >= argc) return usage_error(arg + " needs a value");
      const std::string value = argv[++i];
      if (arg == "--export") {
        export_dir = value;
      } else {
        char* end = nullptr;
        const long long id = std::strtoll(value.c_str(), &end, 10);
        if (value.empty() || *end != '\0') return usage_error("--study expects a study id, got '" + value + "'");
        study_id = id;
      }
    } else if (arg == "--metric" || arg == "--smooth") {
      if (i + 1 >= argc) return usage_error(arg + " needs a value");
      const std::string value = argv[++i];
      chart_options = true;
      if (arg == "--metric") {
        const auto names = split_commas(value);
        if (names.empty()) return usage_error("--metric expects a metric name (or NAME,NAME,...), got '" + value + "'");
        metrics.insert(metrics.end(), names.begin(), names.end());
      } else if (auto w = parse_weight(value)) {
        options.smoothing = *w;
      } else {
        return usage_error("--smooth expects an averaging weight in [0, 1) (0.9 smooths strongly), got '" + value + "'");
      }
    } else if (arg == "--log-y") {
      options.log_y = chart_options = true;
    } else if (arg == "--all-metrics") {
      options.all_metrics = chart_options = true;
    } else if (arg == "--keep-constant") {
      options.keep_constant = chart_options = true;
    } else if (arg.size() > 1 && arg[0] == '-' && arg.rfind("-platform", 0) != 0) {
      return usage_error("unknown option " + arg);
    } else if (file.empty()) {
      file = arg;
    } else {
      return usage_error("one results file, got '" + file + "' and '" + arg + "'");
    }
  }
  if (file.empty()) return usage_error("no results file given");
  if (chart_options && !export_dir) return usage_error("--metric, --all-metrics, --log-y, --smooth and --keep-constant go with --export");

  // Open the file first, so that a bad file is one line on stderr before Qt prints anything.
  std::unique_ptr<mhd::viewer::StudyQuery> query;
  std::string open_error;
  try {
    query = mhd::viewer::StudyQuery::open(file, study_id);
    // Unknown --metric names are one line too ("did you mean"), before anything is drawn.
    if (export_dir) options.metrics = mhd::viewer::export_metrics(*query, metrics, options.keep_constant, options.all_metrics);
  } catch (const std::exception& e) {
    open_error = e.what();
  }
  if (!open_error.empty()) {
    std::cerr << "mhd-viewer: error: " << open_error << "\n";
    if (!export_dir && (!qEnvironmentVariableIsEmpty("DISPLAY") || !qEnvironmentVariableIsEmpty("WAYLAND_DISPLAY"))) {
      QApplication app(argc, argv);
      QMessageBox::critical(nullptr, QStringLiteral("mhd-viewer"), QString::fromStdString(open_error));
    }
    return 2;
  }

  // --export needs no display: render offscreen unless the caller chose a platform.
  if (export_dir && qEnvironmentVariableIsEmpty("QT_QPA_PLATFORM")) qputenv("QT_QPA_PLATFORM", "offscreen");
  if (export_dir) g_default_handler = qInstallMessageHandler(quiet_offscreen);
  QApplication app(argc, argv);
  QApplication::setApplicationName(QStringLiteral("mhd-viewer"));

  if (export_dir) {
    try {
      return export_all(*query, QString::fromStdString(*export_dir), options,
                        mhd::viewer::StudyQuery::open(file, study_id));
    } catch (const std::exception& e) {
      std::cerr << "mhd-viewer: error: " << e.what() << "\n";
      return 2;
    }
  }
  mhd::viewer::MainWindow window(std::move(query));
  window.show();
  return app.exec();
}
