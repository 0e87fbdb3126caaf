# The "retnet" backbone (plugins/backbones/retnet).
mhd_add_test(NAME test_retnet SOURCES test_retnet.cpp PLUGINS retnet)
