# The "mamba" backbone: scan kernel, block and plugin (plugins/backbones/mamba).
mhd_add_test(NAME test_mamba SOURCES test_mamba.cpp LIBS mhd_mamba_core PLUGINS mamba)
# mhd_pch is compiled as PIC; an executable's default -fPIE would make GCC reject the PCH
# (-Winvalid-pch) and parse every header again, so compile this test as PIC too.
set_target_properties(test_mamba PROPERTIES POSITION_INDEPENDENT_CODE OFF)
target_compile_options(test_mamba PRIVATE -fPIC)
