mhd_add_test(NAME test_study SOURCES test_study.cpp PLUGINS mamba hopfield anderson fixed_point contractive)
