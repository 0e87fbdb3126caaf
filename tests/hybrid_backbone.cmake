# The "hybrid" backbone (plugins/backbones/hybrid; CMake name hybrid_backbone, since the solver
# plugin "hybrid" owns mhd_plugin_hybrid).
mhd_add_test(NAME test_hybrid_backbone SOURCES test_hybrid_backbone.cpp PLUGINS hybrid_backbone)
