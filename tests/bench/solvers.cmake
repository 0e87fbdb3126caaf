# bench_solvers: Anderson vs fixed point (time and f-evaluations), both loaded as plugins.
# No REUSE_FROM mhd_pch: the shared PCH is built position-independent (-fPIC) and an executable
# (-fPIE) would ignore it with a -Winvalid-pch warning.
add_executable(bench_solvers bench_solvers.cpp)
target_link_libraries(bench_solvers PRIVATE mhd_framework benchmark::benchmark)
foreach(_p fixed_point anderson)
  string(TOUPPER ${_p} _up)
  target_compile_definitions(bench_solvers PRIVATE MHD_PLUGIN_${_up}="$<TARGET_FILE:mhd_plugin_${_p}>")
  add_dependencies(bench_solvers mhd_plugin_${_p})
endforeach()
