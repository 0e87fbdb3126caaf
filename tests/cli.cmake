# The mhd command line end to end (exit codes, one-line errors, listings, a tiny run).
add_test(NAME Cli.CommandsExitCodesAndMessages COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/cli/check_cli.sh $<TARGET_FILE:mhd>)
set_tests_properties(Cli.CommandsExitCodesAndMessages PROPERTIES TIMEOUT 300)
# What mhd run prints is true: carried-over accuracy marked, checkpoints' place, a full results file.
add_test(NAME Cli.RunOutputIsTrue COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/cli/check_run_output.sh $<TARGET_FILE:mhd>)
set_tests_properties(Cli.RunOutputIsTrue PROPERTIES TIMEOUT 300)
