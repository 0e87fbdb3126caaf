# Dense associative memory: discrete sign dynamics and capacity (capacity.h), the dense_am memory plugin.
mhd_add_test(NAME test_dense_am SOURCES test_dense_am.cpp PLUGINS dense_am)
