# The neural_ode and broyden solver plugins: exact fixed points, maps without one, traces, parameter
# validation, and their use as backward solvers (gradients against anderson and fixed_point); the
# Broyden core (mhd/kits/broyden.h, in the framework) tested the way another solver reuses it, and
# Anderson's fallback to it.
mhd_add_test(NAME test_ode_broyden SOURCES test_ode_broyden.cpp PLUGINS fixed_point anderson neural_ode broyden)
