# The "attention" backbone (plugins/backbones/attention).
mhd_add_test(NAME test_attention SOURCES test_attention.cpp PLUGINS attention)
