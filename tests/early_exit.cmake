# The early_exit solver wrapped around every solver plugin, and its trained convergence predictor.
mhd_add_test(NAME test_early_exit SOURCES test_early_exit.cpp
             PLUGINS early_exit fixed_point anderson broyden neural_ode lbfgs hybrid learned)
