# The "mamba" backbone: scan kernel, block and plugin (plugins/backbones/mamba).
mhd_add_test(NAME test_mamba SOURCES test_mamba.cpp LIBS mhd_mamba_core PLUGINS mamba)
mhd_add_test(NAME test_mamba_block SOURCES test_mamba_block.cpp LIBS mhd_mamba_core PLUGINS mamba)
