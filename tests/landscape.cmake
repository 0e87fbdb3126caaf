# The energy-landscape probe (issue 3, brief 001 §6.2): its mathematics on known problems.
mhd_add_test(NAME test_landscape SOURCES test_landscape.cpp)
