# The causality test runs over every backbone and memory plugin of the build, so it depends on all.
mhd_add_test(NAME test_causality SOURCES test_causality.cpp)
get_property(_mhd_all_plugins GLOBAL PROPERTY MHD_PLUGIN_TARGETS)
add_dependencies(test_causality ${_mhd_all_plugins})
