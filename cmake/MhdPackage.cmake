# Exports the framework as a CMake package so plugins can be built out of tree:
#   find_package(mhd REQUIRED)   # with mhd_DIR=<build>/ or CMAKE_PREFIX_PATH=<install prefix>
#   mhd_add_plugin(NAME mine KIND memory SOURCES mine.cpp)
include(CMakePackageConfigHelpers)

set(_cfg_in ${PROJECT_SOURCE_DIR}/cmake/mhdConfig.cmake.in)

# Build-tree package: usable straight from build/ without installing.
export(EXPORT mhdTargets NAMESPACE mhd:: FILE ${PROJECT_BINARY_DIR}/mhdTargets.cmake)
set(MHD_PLUGIN_HELPER ${PROJECT_SOURCE_DIR}/cmake/MhdPlugin.cmake)
configure_package_config_file(${_cfg_in} ${PROJECT_BINARY_DIR}/mhdConfig.cmake
  INSTALL_DESTINATION ${PROJECT_BINARY_DIR} PATH_VARS MHD_PLUGIN_HELPER)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/mhdConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)

# Install-tree package.
include(GNUInstallDirs)
set(_pkgdir ${CMAKE_INSTALL_LIBDIR}/cmake/mhd)
install(EXPORT mhdTargets NAMESPACE mhd:: DESTINATION ${_pkgdir})
# Installed headers: the SDK and the kits only (framework/CMakeLists.txt).
install(DIRECTORY framework/sdk/include/mhd framework/kits/include/mhd DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
set(MHD_PLUGIN_HELPER ${_pkgdir}/MhdPlugin.cmake)
configure_package_config_file(${_cfg_in} ${PROJECT_BINARY_DIR}/install/mhdConfig.cmake
  INSTALL_DESTINATION ${_pkgdir} PATH_VARS MHD_PLUGIN_HELPER)
install(FILES ${PROJECT_BINARY_DIR}/install/mhdConfig.cmake ${PROJECT_BINARY_DIR}/mhdConfigVersion.cmake
  cmake/MhdPlugin.cmake DESTINATION ${_pkgdir})
