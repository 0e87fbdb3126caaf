# Studies you can trust: crash isolation, kill + resume, changed configurations, --jobs,
# shards + merge, Slurm scripts, concurrent readers and writers, reproducibility; driven through
# the mhd command line with a purpose-built faulty solver plugin.
add_library(mhd_test_plugin_faulty_solver MODULE plugins/faulty_solver.cpp)
target_link_libraries(mhd_test_plugin_faulty_solver PRIVATE mhd_framework)
set_target_properties(mhd_test_plugin_faulty_solver PROPERTIES
  OUTPUT_NAME "mhd_faulty" PREFIX "lib"
  LIBRARY_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/test_plugins_faulty/solver CXX_VISIBILITY_PRESET hidden)

add_test(NAME Robustness.CrashResumeJobsShardsMerge
  COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/robustness/check_robustness.sh $<TARGET_FILE:mhd>
          ${PROJECT_BINARY_DIR}/test_plugins_faulty)
set_tests_properties(Robustness.CrashResumeJobsShardsMerge PROPERTIES TIMEOUT 400)
