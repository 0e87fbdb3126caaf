# bench_model_size: the unified model at 125M / 350M / 760M parameters, forward-only time and peak
# resident memory per token, one training step where it fits; not run by ctest.
add_executable(bench_model_size bench_model_size.cpp)
target_link_libraries(bench_model_size PRIVATE mhd_framework)
target_precompile_headers(bench_model_size REUSE_FROM mhd_pch_exe)
foreach(_p mamba hopfield anderson)
  string(TOUPPER ${_p} _up)
  target_compile_definitions(bench_model_size PRIVATE MHD_PLUGIN_${_up}="$<TARGET_FILE:mhd_plugin_${_p}>")
  add_dependencies(bench_model_size mhd_plugin_${_p})
endforeach()
