# The properties every backbone has (tests/backbone_checks.h), over every backbone plugin of the build.
mhd_add_test(NAME test_every_backbone SOURCES test_every_backbone.cpp
             PLUGINS mamba attention retnet rwkv hybrid_backbone)
