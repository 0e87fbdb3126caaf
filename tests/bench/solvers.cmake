# bench_solvers: Anderson, hybrid (three modes), L-BFGS, neural_ode and broyden vs fixed point (time and
# f-evaluations), all loaded as plugins through the registry, from the paths of the plugin targets built here.
add_executable(bench_solvers bench_solvers.cpp)
target_link_libraries(bench_solvers PRIVATE mhd_framework benchmark::benchmark)
target_precompile_headers(bench_solvers REUSE_FROM mhd_pch_exe)
foreach(_p fixed_point anderson hybrid lbfgs neural_ode broyden early_exit learned)
  string(TOUPPER ${_p} _up)
  target_compile_definitions(bench_solvers PRIVATE MHD_PLUGIN_${_up}="$<TARGET_FILE:mhd_plugin_${_p}>")
  add_dependencies(bench_solvers mhd_plugin_${_p})
endforeach()
