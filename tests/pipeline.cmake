mhd_add_test(NAME test_pipeline SOURCES test_pipeline.cpp
             LIBS SQLite::SQLite3
             PLUGINS mamba hopfield fixed_point anderson contractive)
