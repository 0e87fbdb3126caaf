# The learned solver (meta-trained accelerator) and its meta-training (train/meta_train.h); it also runs in EverySolver.
mhd_add_test(NAME test_learned_solver SOURCES test_learned_solver.cpp
             PLUGINS mamba hopfield fixed_point anderson contractive learned)
# mhd meta-train end to end (a tiny run's checkpoint, the accelerator file driving a study).
add_test(NAME Cli.MetaTrain COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/cli/check_meta_train.sh $<TARGET_FILE:mhd>)
set_tests_properties(Cli.MetaTrain PROPERTIES TIMEOUT 300)
