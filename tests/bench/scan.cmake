# Fused selective scan vs the naive per-timestep loop (plugins/backbones/mamba); not run by ctest.
add_executable(bench_scan bench_scan.cpp)
target_link_libraries(bench_scan PRIVATE mhd_mamba_core benchmark::benchmark)
target_precompile_headers(bench_scan REUSE_FROM mhd_pch)
# mhd_pch is compiled as PIC; an executable's default -fPIE would make GCC reject the PCH
# (-Winvalid-pch) and parse every header again, so compile this one as PIC too.
set_target_properties(bench_scan PROPERTIES POSITION_INDEPENDENT_CODE OFF)
target_compile_options(bench_scan PRIVATE -fPIC)
