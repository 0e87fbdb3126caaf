# What the docs show is what ships.
add_test(NAME Docs.ReadmeShowsTheShippedQuickstart
         COMMAND ${CMAKE_COMMAND} -DSOURCE_DIR=${PROJECT_SOURCE_DIR} -P ${CMAKE_CURRENT_SOURCE_DIR}/docs/check_readme_quickstart.cmake)
