# Purpose-built faulty plugins, kept out of build/plugins so normal discovery never sees them.
foreach(_bad wrong_abi throwing_memory)
  add_library(mhd_test_plugin_${_bad} MODULE plugins/${_bad}.cpp)
  target_link_libraries(mhd_test_plugin_${_bad} PRIVATE mhd_framework)
  set_target_properties(mhd_test_plugin_${_bad} PROPERTIES
    LIBRARY_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/test_plugins CXX_VISIBILITY_PRESET hidden)
endforeach()

mhd_add_test(NAME test_plugins SOURCES test_plugins.cpp PLUGINS anderson hopfield)
target_compile_definitions(test_plugins PRIVATE
  MHD_TEST_WRONG_ABI="$<TARGET_FILE:mhd_test_plugin_wrong_abi>"
  MHD_TEST_THROWING="$<TARGET_FILE:mhd_test_plugin_throwing_memory>"
  MHD_FRAMEWORK_LIB="$<TARGET_FILE:mhd_framework>")
add_dependencies(test_plugins mhd_test_plugin_wrong_abi mhd_test_plugin_throwing_memory)

# A plugin built out of tree with find_package(mhd), then listed by `mhd plugins`.
add_test(NAME OutOfTreePlugin.BuildsWithFindPackageAndLoads
  COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/out_of_tree/run.sh ${PROJECT_BINARY_DIR} $<TARGET_FILE:mhd>
          ${CMAKE_CURRENT_SOURCE_DIR}/out_of_tree)
set_tests_properties(OutOfTreePlugin.BuildsWithFindPackageAndLoads PROPERTIES TIMEOUT 600)
