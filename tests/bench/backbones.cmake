# bench_backbones: every backbone plugin's layer, forward and forward+backward, at one shape; not run
# by ctest. Loads the plugins this build made (their paths are compiled in).
add_executable(bench_backbones bench_backbones.cpp)
target_link_libraries(bench_backbones PRIVATE mhd_framework mhd_rwkv_core benchmark::benchmark)
target_precompile_headers(bench_backbones REUSE_FROM mhd_pch_exe)
foreach(_p mamba attention retnet rwkv hybrid_backbone)
  string(TOUPPER ${_p} _up)
  target_compile_definitions(bench_backbones PRIVATE MHD_PLUGIN_${_up}="$<TARGET_FILE:mhd_plugin_${_p}>")
  add_dependencies(bench_backbones mhd_plugin_${_p})
endforeach()
