# Optimization plugins: contractive (spectral normalisation, damping, Lipschitz probe).
mhd_add_test(NAME test_contractive SOURCES test_contractive.cpp PLUGINS contractive)
