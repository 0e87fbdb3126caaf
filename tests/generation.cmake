mhd_add_test(NAME test_generation SOURCES test_generation.cpp
             PLUGINS mamba attention hopfield fixed_point anderson contractive)
mhd_add_test(NAME test_lm_bytes SOURCES test_lm_bytes.cpp PLUGINS mamba hopfield fixed_point anderson contractive)
# `mhd generate` end to end: a tiny lm_bytes run with a checkpoint, generation, one-line errors.
add_test(NAME Cli.Generate COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/cli/check_generate.sh $<TARGET_FILE:mhd>)
set_tests_properties(Cli.Generate PROPERTIES TIMEOUT 300)
