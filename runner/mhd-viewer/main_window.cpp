#include "main_window.h"

#include <algorithm>

#include <QHeaderView>
#include <QMessageBox>
#include <QSplitter>
#include <QStatusBar>
#include <QTabWidget>
#include <QTimer>
#include <QTreeWidget>

#include "chart_page.h"
#include "mhd/error.h"

namespace mhd::viewer {

QColor status_color(TrialStatus status) {
  switch (status) {
    case TrialStatus::Done: return QColor(0x1e, 0x8c, 0x2c);
    case TrialStatus::Failed: return QColor(0xd0, 0x1c, 0x1c);
    case TrialStatus::Diverged: return QColor(0xe0, 0x7b, 0x00);
    case TrialStatus::Running: return QColor(0x1f, 0x5f, 0xd0);
    case TrialStatus::Pending: break;
  }
  return QColor(0x8a, 0x8a, 0x8a);
}

MainWindow::MainWindow(std::unique_ptr<StudyQuery> query, QWidget* parent)
    : QMainWindow(parent), query_(std::move(query)) {
  setWindowTitle(QStringLiteral("mhd-viewer \u2014 %1 (%2)").arg(qs(query_->path()), qs(query_->study().name)));
  auto* split = new QSplitter(this);
  tree_ = new QTreeWidget(split);
  tree_->setHeaderLabels({QStringLiteral("study / variant / sweep point / trial"), QStringLiteral("status")});
  tree_->header()->setSectionResizeMode(0, QHeaderView::ResizeToContents);
  tree_->header()->setSectionResizeMode(1, QHeaderView::ResizeToContents);
  tree_->header()->setStretchLastSection(false);
  tabs_ = new QTabWidget(split);
  pages_ = make_chart_pages(tabs_);
  for (auto* page : pages_) tabs_->addTab(page, page->title());
  split->addWidget(tree_);
  split->addWidget(tabs_);
  split->setStretchFactor(1, 1);
  split->setSizes({380, 1000});
  setCentralWidget(split);
  resize(1400, 860);

  fillTree();
  for (auto* page : pages_) page->setQuery(query_.get());
  updateStatus();

  timer_ = new QTimer(this);
  timer_->setInterval(2000);
  connect(timer_, &QTimer::timeout, this, &MainWindow::refresh);
  if (query_->active()) timer_->start();
}

MainWindow::~MainWindow() = default;

void MainWindow::refresh() {
  try {
    query_->reload();
  } catch (const std::exception& e) {
    statusBar()->showMessage(QStringLiteral("refresh failed: %1").arg(QString::fromUtf8(e.what())));
    return;
  }
  fillTree();
  for (auto* page : pages_) page->setQuery(query_.get());
  updateStatus();
  if (!query_->active()) timer_->stop();  // the study finished: the file no longer changes
}

void MainWindow::fillTree() {
  tree_->clear();
  const auto& study = query_->study();
  auto* root = new QTreeWidgetItem(tree_, {QStringLiteral("#%1 %2").arg(study.id).arg(qs(study.name)),
                                           study.finished_at.empty() ? QStringLiteral("unfinished")
                                                                     : QStringLiteral("finished")});
  root->setToolTip(0, qs(study.description + "\nstarted " + study.started_at +
                         (study.finished_at.empty() ? "" : "\nfinished " + study.finished_at) + "\ngit " +
                         study.git_revision + ", torch " + study.torch_version + ", " + study.host));
  const bool has_sweep = !query_->sweep_axes().empty();
  for (const auto& variant : query_->variants()) {
    int done = 0, total = 0;
    for (const auto& t : query_->trials())
      if (t.row.variant == variant) {
        ++total;
        done += t.row.status == TrialStatus::Done;
      }
    auto* v = new QTreeWidgetItem(root, {qs(variant), QStringLiteral("%1/%2 done").arg(done).arg(total)});
    if (variant == query_->baseline()) v->setText(0, qs(variant) + QStringLiteral("  (baseline)"));
    for (const auto& point : query_->sweep_points()) {
      QTreeWidgetItem* parent = v;
      for (const auto& t : query_->trials()) {
        if (t.row.variant != variant || t.row.sweep != point) continue;
        if (has_sweep && parent == v) parent = new QTreeWidgetItem(v, {qs(point.empty() ? "(no sweep)" : point)});
        QString status = QString::fromUtf8(to_string(t.row.status));
        if (t.row.wall_s > 0) status += QStringLiteral(" (%1 s)").arg(t.row.wall_s, 0, 'f', 1);
        auto* item = new QTreeWidgetItem(parent, {QStringLiteral("seed %1").arg(t.row.seed), status});
        const QColor color = status_color(t.row.status);
        item->setForeground(0, color);
        item->setForeground(1, color);
        item->setToolTip(0, QStringLiteral("trial %1, %2 parameters%3")
                                .arg(t.row.id)
                                .arg(t.row.param_count)
                                .arg(t.row.error.empty() ? QString() : "\n" + qs(t.row.error)));
        item->setToolTip(1, item->toolTip(0));
      }
    }
  }
  tree_->expandAll();
}

void MainWindow::updateStatus() {
  int counts[5] = {0, 0, 0, 0, 0};
  for (const auto& t : query_->trials()) ++counts[static_cast<int>(t.row.status)];
  QString text = QStringLiteral("%1 trial(s): %2 done, %3 failed, %4 diverged, %5 running, %6 pending")
                     .arg(query_->trials().size())
                     .arg(counts[static_cast<int>(TrialStatus::Done)])
                     .arg(counts[static_cast<int>(TrialStatus::Failed)])
                     .arg(counts[static_cast<int>(TrialStatus::Diverged)])
                     .arg(counts[static_cast<int>(TrialStatus::Running)])
                     .arg(counts[static_cast<int>(TrialStatus::Pending)]);
  if (query_->active()) text += QStringLiteral(" \u2014 refreshing every 2 s");
  statusBar()->showMessage(text);
}

}  // namespace mhd::viewer
