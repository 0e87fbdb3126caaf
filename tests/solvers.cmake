# Solver plugins: fixed_point, anderson, neural_ode, broyden, early_exit and learned (without a file: plain Anderson), forward and backward-type problems.
mhd_add_test(NAME test_solvers SOURCES test_solvers.cpp PLUGINS fixed_point anderson neural_ode broyden early_exit learned)
