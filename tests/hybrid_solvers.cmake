# The batched L-BFGS core and the `hybrid` and `lbfgs` solver plugins.
mhd_add_test(NAME test_hybrid_solvers SOURCES test_hybrid_solvers.cpp
             PLUGINS hybrid lbfgs fixed_point anderson mamba hopfield contractive)
