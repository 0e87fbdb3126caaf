# Data-parallel training of one trial (data_parallel.h): two processes on loopback; the binary is
# its own second rank.
mhd_add_test(NAME test_data_parallel SOURCES test_data_parallel.cpp
             PLUGINS mamba hopfield fixed_point anderson contractive)
