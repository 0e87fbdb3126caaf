# The build itself: a missing part stops configure instead of being left out without a word.
add_test(NAME Build.ConfigureWithoutQtStopsUnlessTheViewerIsOff
         COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/build/check_configure.sh ${PROJECT_SOURCE_DIR})
set_tests_properties(Build.ConfigureWithoutQtStopsUnlessTheViewerIsOff PROPERTIES TIMEOUT 300)
