# bench_step: where a training step of the quickstart model goes, scan build avx2 vs auto; not run by ctest.
add_executable(bench_step bench_step.cpp)
target_link_libraries(bench_step PRIVATE mhd_framework)
target_compile_definitions(bench_step PRIVATE MHD_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
target_precompile_headers(bench_step REUSE_FROM mhd_pch_exe)
get_property(_plugin_targets GLOBAL PROPERTY MHD_PLUGIN_TARGETS)
if(_plugin_targets)
  add_dependencies(bench_step ${_plugin_targets})
endif()
