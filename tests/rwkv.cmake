# The "rwkv" backbone: fused WKV kernel, block and plugin (plugins/backbones/rwkv).
mhd_add_test(NAME test_rwkv SOURCES test_rwkv.cpp LIBS mhd_rwkv_core PLUGINS rwkv)
