# A task kind added in one file of the test suite (tests/tasks/copy_task.cpp).
mhd_add_test(NAME test_task_registration SOURCES test_task_registration.cpp tasks/copy_task.cpp PLUGINS mamba hopfield fixed_point anderson contractive)
