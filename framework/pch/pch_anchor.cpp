// Compiles the precompiled header once; the targets reuse it.
