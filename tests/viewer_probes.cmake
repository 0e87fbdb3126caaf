# mhd-viewer's probe page: the query layer's probe functions on a hand-built results file, and a real
# tiny study with [probes.convergence] exported offscreen (Viewer.ProbesExport), whose PNGs
# test_viewer_probes inspects.
if(MHD_HAVE_VIEWER)
  set(_probes_out ${CMAKE_CURRENT_BINARY_DIR}/viewer_probes)
  add_test(NAME Viewer.ProbesExport
           COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/viewer/export_probes.sh $<TARGET_FILE:mhd> $<TARGET_FILE:mhd-viewer>
                   ${_probes_out})
  set_tests_properties(Viewer.ProbesExport PROPERTIES FIXTURES_SETUP viewer_probes_png TIMEOUT 180
                       ENVIRONMENT QT_QPA_PLATFORM=offscreen)

  find_package(Qt6 COMPONENTS Gui REQUIRED)
  add_executable(test_viewer_probes test_viewer_probes.cpp)
  target_link_libraries(test_viewer_probes PRIVATE mhd_viewer_query GTest::gtest GTest::gtest_main Qt6::Gui)
  target_compile_definitions(test_viewer_probes PRIVATE MHD_VIEWER_PROBES_PNG_DIR="${_probes_out}/png")
  set_target_properties(test_viewer_probes PROPERTIES BUILD_RPATH "${PROJECT_BINARY_DIR}/lib")
  add_dependencies(test_viewer_probes mhd mhd-viewer)
  gtest_discover_tests(test_viewer_probes DISCOVERY_TIMEOUT 60
                       PROPERTIES FIXTURES_REQUIRED viewer_probes_png TIMEOUT 60)
endif()
