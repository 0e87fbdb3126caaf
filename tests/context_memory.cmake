# The memories' context source, over every memory plugin of the build (so it depends on all).
mhd_add_test(NAME test_context_memory SOURCES test_context_memory.cpp)
get_property(_mhd_all_plugins GLOBAL PROPERTY MHD_PLUGIN_TARGETS)
add_dependencies(test_context_memory ${_mhd_all_plugins})
