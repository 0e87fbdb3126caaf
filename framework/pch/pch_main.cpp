// Compiles the executables' precompiled header once (see framework/CMakeLists.txt).
int main() { return 0; }
