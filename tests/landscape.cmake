# The energy-landscape probe: its mathematics on known problems, and the
# probe on a small unified model.
mhd_add_test(NAME test_landscape SOURCES test_landscape.cpp
             PLUGINS mamba hopfield fixed_point anderson contractive)
