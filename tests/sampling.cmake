# Sampling from the model's next-token distribution (core/generate.h): temperature, top-k, top-p.
mhd_add_test(NAME test_sampling SOURCES test_sampling.cpp)
