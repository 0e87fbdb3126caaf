mhd_add_test(NAME test_study SOURCES test_study.cpp PLUGINS mamba hopfield anderson fixed_point contractive)
# Every shipped study in studies/ validates; it loads every plugin of the build, so it depends on all.
mhd_add_test(NAME test_shipped_studies SOURCES test_shipped_studies.cpp
             PLUGINS mamba attention retnet rwkv hybrid_backbone hopfield dense_am anderson fixed_point hybrid lbfgs broyden
                     neural_ode contractive early_exit caching)
# Studies that must not run: positions and messages, cross-key constraints of tasks and plugins.
mhd_add_test(NAME test_study_errors SOURCES test_study_errors.cpp
             PLUGINS mamba hopfield anderson fixed_point contractive product_key attention learned)
