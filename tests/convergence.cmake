mhd_add_test(NAME test_convergence SOURCES test_convergence.cpp PLUGINS mamba hopfield fixed_point anderson contractive)
