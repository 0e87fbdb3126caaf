# The neural_ode and broyden solver plugins: exact fixed points, maps without one, traces, parameter
# validation, and their use as backward solvers (gradients against anderson and fixed_point).
# The Broyden core is compiled in as well, to test it the way another solver would reuse it.
mhd_add_test(NAME test_ode_broyden
             SOURCES test_ode_broyden.cpp ${PROJECT_SOURCE_DIR}/plugins/solvers/broyden/broyden_core.cpp
             PLUGINS fixed_point anderson neural_ode broyden)
target_include_directories(test_ode_broyden PRIVATE ${PROJECT_SOURCE_DIR}/plugins/solvers/broyden)
