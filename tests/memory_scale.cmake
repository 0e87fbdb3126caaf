# Memory at scale: the sparse memories (sparse_hash, product_key) against dense hopfield retrieval,
# finite differences, causality of the context source, memory use, parameter errors.
mhd_add_test(NAME test_memory_scale SOURCES test_memory_scale.cpp PLUGINS hopfield sparse_hash product_key hierarchical)
# The sparse memories' bucket index: filing, refiling after router changes, state, the router gradient.
mhd_add_test(NAME test_memory_index SOURCES test_memory_index.cpp PLUGINS hopfield sparse_hash product_key hierarchical)
# The sparse memories in the model's forward solve: candidates fixed per solve reach tol, per call not.
mhd_add_test(NAME test_sparse_solve SOURCES test_sparse_solve.cpp PLUGINS mamba anderson sparse_hash product_key)
