# The caching optimization and the early_exit solver (own behaviour; early_exit also runs in EverySolver).
mhd_add_test(NAME test_caching_early_exit SOURCES test_caching_early_exit.cpp
             PLUGINS mamba hopfield fixed_point anderson contractive early_exit caching)
