mhd_add_test(NAME test_implicit SOURCES test_implicit.cpp PLUGINS fixed_point anderson)
mhd_add_test(NAME test_task SOURCES test_task.cpp)
mhd_add_test(NAME test_model SOURCES test_model.cpp
             PLUGINS mamba hopfield fixed_point anderson contractive)
