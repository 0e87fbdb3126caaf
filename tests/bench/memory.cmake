# bench_memory: retrieval time and recall@1 of the memory plugins from 1K to 1M patterns (hopfield vs
# the sparse memories), loaded through the registry from the plugin targets built here; not run by ctest.
add_executable(bench_memory bench_memory.cpp)
target_link_libraries(bench_memory PRIVATE mhd_framework)
target_precompile_headers(bench_memory REUSE_FROM mhd_pch_exe)
foreach(_p hopfield hierarchical sparse_hash product_key)
  string(TOUPPER ${_p} _up)
  target_compile_definitions(bench_memory PRIVATE MHD_PLUGIN_${_up}="$<TARGET_FILE:mhd_plugin_${_p}>")
  add_dependencies(bench_memory mhd_plugin_${_p})
endforeach()
