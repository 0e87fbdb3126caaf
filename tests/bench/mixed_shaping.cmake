# bench_mixed_shaping: mixed_precision's time per solve vs float32, energy_shaping's step cost; not run by ctest.
add_executable(bench_mixed_shaping bench_mixed_shaping.cpp)
target_link_libraries(bench_mixed_shaping PRIVATE mhd_framework)
target_compile_definitions(bench_mixed_shaping PRIVATE MHD_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
target_precompile_headers(bench_mixed_shaping REUSE_FROM mhd_pch_exe)
get_property(_plugin_targets GLOBAL PROPERTY MHD_PLUGIN_TARGETS)
if(_plugin_targets)
  add_dependencies(bench_mixed_shaping ${_plugin_targets})
endif()
