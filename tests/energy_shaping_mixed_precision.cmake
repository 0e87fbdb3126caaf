# The energy_shaping and mixed_precision optimizations (own behaviour, and with every solver).
mhd_add_test(NAME test_energy_shaping_mixed_precision SOURCES test_energy_shaping_mixed_precision.cpp
             PLUGINS mamba hopfield fixed_point anderson contractive caching broyden hybrid lbfgs early_exit
                     neural_ode learned energy_shaping mixed_precision)
