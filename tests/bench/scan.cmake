# Fused selective scan vs the naive per-timestep loop (plugins/backbones/mamba); not run by ctest.
add_executable(bench_scan bench_scan.cpp)
target_link_libraries(bench_scan PRIVATE mhd_mamba_core benchmark::benchmark)
# The executables' PCH (built -fPIE like this target; mhd_pch is -fPIC for libraries).
target_precompile_headers(bench_scan REUSE_FROM mhd_pch_exe)
