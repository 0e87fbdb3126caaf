# Memory plugins: hopfield retrieval, energy, queue writes, stats.
mhd_add_test(NAME test_hopfield SOURCES test_hopfield.cpp PLUGINS hopfield)
