mhd_add_test(NAME test_checkpoint SOURCES test_checkpoint.cpp
             PLUGINS mamba hopfield fixed_point anderson contractive)
