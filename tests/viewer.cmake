# mhd-viewer: the query layer on hand-built results files, and the program end to end — a real tiny
# study exported offscreen (Viewer.TinyStudyExport), whose PNGs test_viewer_export then inspects, the
# export's text layout with long variant names (test_viewer_export_layout), and the window itself
# (test_viewer_window).
if(MHD_HAVE_VIEWER)
  mhd_add_test(NAME test_viewer_query SOURCES test_viewer_query.cpp LIBS mhd_viewer_query)

  set(_viewer_out ${CMAKE_CURRENT_BINARY_DIR}/viewer_tiny)
  add_test(NAME Viewer.TinyStudyExport
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/viewer/export_tiny.sh $<TARGET_FILE:mhd> $<TARGET_FILE:mhd-viewer>
                   ${_viewer_out})
  set_tests_properties(Viewer.TinyStudyExport PROPERTIES FIXTURES_SETUP viewer_png TIMEOUT 300
                       ENVIRONMENT QT_QPA_PLATFORM=offscreen)

  # Reads the exported PNGs and builds the same charts from the same results file in process (the
  # pages' exportCharts); no viewer source includes LibTorch (so no torch PCH). Runs after the export.
  add_executable(test_viewer_export test_viewer_export.cpp)
  target_link_libraries(test_viewer_export PRIVATE mhd_viewer_ui GTest::gtest GTest::gtest_main)
  set_target_properties(test_viewer_export PROPERTIES BUILD_RPATH "${PROJECT_BINARY_DIR}/lib")
  target_compile_definitions(test_viewer_export PRIVATE MHD_VIEWER_PNG_DIR="${_viewer_out}/png"
                                                        MHD_VIEWER_TINY_DB="${_viewer_out}/tiny.sqlite")
  add_dependencies(test_viewer_export mhd mhd-viewer)
  gtest_discover_tests(test_viewer_export DISCOVERY_TIMEOUT 60
                       PROPERTIES FIXTURES_REQUIRED viewer_png TIMEOUT 120 ENVIRONMENT QT_QPA_PLATFORM=offscreen)

  # `make figures` / `make charts` (scripts/charts.sh) on copies of the tiny study's results file: the
  # missing-results error (script and Makefile), the target's commands, one folder per results file.
  add_test(NAME Viewer.Charts
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/viewer/check_charts.sh ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR}
                   ${_viewer_out}/tiny.sqlite ${CMAKE_CURRENT_BINARY_DIR}/viewer_charts)
  set_tests_properties(Viewer.Charts PROPERTIES FIXTURES_REQUIRED viewer_png TIMEOUT 300
                       ENVIRONMENT QT_QPA_PLATFORM=offscreen)

  # The export's label layout on a hand-built results file with the ablation ladder's names (no study run).
  add_executable(test_viewer_export_layout test_viewer_export_layout.cpp)
  target_link_libraries(test_viewer_export_layout PRIVATE mhd_viewer_ui GTest::gtest GTest::gtest_main)
  set_target_properties(test_viewer_export_layout PROPERTIES BUILD_RPATH "${PROJECT_BINARY_DIR}/lib")
  gtest_discover_tests(test_viewer_export_layout DISCOVERY_TIMEOUT 60
                       PROPERTIES TIMEOUT 60 ENVIRONMENT QT_QPA_PLATFORM=offscreen)

  # The window offscreen: tree, tabs, controls, refresh while a study is written.
  add_executable(test_viewer_window test_viewer_window.cpp)
  target_link_libraries(test_viewer_window PRIVATE mhd_viewer_ui GTest::gtest GTest::gtest_main)
  set_target_properties(test_viewer_window PROPERTIES BUILD_RPATH "${PROJECT_BINARY_DIR}/lib")
  gtest_discover_tests(test_viewer_window DISCOVERY_TIMEOUT 60
                       PROPERTIES TIMEOUT 60 ENVIRONMENT QT_QPA_PLATFORM=offscreen)
endif()
