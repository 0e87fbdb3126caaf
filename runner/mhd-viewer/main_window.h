// mhd-viewer's window: the study tree on the left, one tab per chart kind on the right; re-reads the
// results file every 2 s while a trial is pending or running.
#pragma once

#include <memory>
#include <vector>

#include <QMainWindow>

#include "query.h"

class QTabWidget;
class QTimer;
class QTreeWidget;

namespace mhd::viewer {

class ChartPage;

class MainWindow : public QMainWindow {
  Q_OBJECT

 public:
  explicit MainWindow(std::unique_ptr<StudyQuery> query, QWidget* parent = nullptr);
  ~MainWindow() override;

 private:
  void refresh();     // timer: re-query while the study is active
  void fillTree();
  void updateStatus();

  std::unique_ptr<StudyQuery> query_;
  QTreeWidget* tree_ = nullptr;
  QTabWidget* tabs_ = nullptr;
  std::vector<ChartPage*> pages_;
  QTimer* timer_ = nullptr;
};

// The colour of a trial status in the tree (done green, failed red, diverged orange, running blue,
// pending grey).
QColor status_color(TrialStatus status);

}  // namespace mhd::viewer
