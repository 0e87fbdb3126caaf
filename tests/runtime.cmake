# What the process runs on (framework runtime.h): BLAS, threads, CPU features.
mhd_add_test(NAME test_runtime SOURCES test_runtime.cpp)
