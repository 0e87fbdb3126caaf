mhd_add_test(NAME test_generation SOURCES test_generation.cpp
             PLUGINS mamba attention hopfield fixed_point anderson contractive)
mhd_add_test(NAME test_lm_bytes SOURCES test_lm_bytes.cpp PLUGINS mamba hopfield fixed_point anderson contractive)
