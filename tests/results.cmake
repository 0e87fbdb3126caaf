mhd_add_test(NAME test_results SOURCES test_results.cpp LIBS SQLite::SQLite3)
