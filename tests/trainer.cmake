mhd_add_test(NAME test_trainer SOURCES test_trainer.cpp
             PLUGINS mamba hopfield fixed_point anderson contractive)
