# bench_platform: what the machine gives LibTorch (in-process sgemm GFLOP/s on the BLAS it loaded) and
# one training step of a vocabulary-8192 recall model with the head at every position vs only at the
# targets; not run by ctest.
add_executable(bench_platform bench_platform.cpp)
target_link_libraries(bench_platform PRIVATE mhd_framework benchmark::benchmark)
target_precompile_headers(bench_platform REUSE_FROM mhd_pch_exe)
get_property(_plugin_targets GLOBAL PROPERTY MHD_PLUGIN_TARGETS)
if(_plugin_targets)
  add_dependencies(bench_platform ${_plugin_targets})
endif()
