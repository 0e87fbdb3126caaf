# bench_generate: recurrent decode (UnifiedModel::step) vs re-running the full forward per token, and
# causal vs all-position held-out bits per byte, on an lm_bytes checkpoint; not run by ctest.
add_executable(bench_generate bench_generate.cpp)
target_link_libraries(bench_generate PRIVATE mhd_framework)
target_precompile_headers(bench_generate REUSE_FROM mhd_pch_exe)
