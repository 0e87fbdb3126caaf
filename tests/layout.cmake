# The tree is the architecture: framework layers include only the layers below them, plugins only
# the SDK and the kits, and no framework file grows past the size limit (tests/layout/check_includes.cmake).
add_test(NAME Layout.IncludeRulesAndFileSizes
         COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${PROJECT_SOURCE_DIR} -P ${CMAKE_CURRENT_SOURCE_DIR}/layout/check_includes.cmake)
# A negative control: a file of `core` that includes `train` must be reported.
add_test(NAME Layout.ReportsAnUpwardInclude
         COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/layout/check_negative.sh ${CMAKE_COMMAND} ${CMAKE_CURRENT_SOURCE_DIR}/layout/check_includes.cmake)
