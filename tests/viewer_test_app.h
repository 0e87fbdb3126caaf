// The one QApplication a viewer test process needs, on Qt's offscreen platform unless QT_QPA_PLATFORM
// says otherwise (the tests run without a display).
#pragma once

#include <QApplication>

inline QApplication& app() {
  static int argc = 1;
  static char name[] = "mhd_viewer_test";
  static char* argv[] = {name, nullptr};
  static QApplication* a = [] {
    if (qEnvironmentVariableIsEmpty("QT_QPA_PLATFORM")) qputenv("QT_QPA_PLATFORM", "offscreen");
    return new QApplication(argc, argv);
  }();
  return *a;
}
