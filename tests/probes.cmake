mhd_add_test(NAME test_probes SOURCES test_probes.cpp PLUGINS mamba hopfield fixed_point anderson contractive)
