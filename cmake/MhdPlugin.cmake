# mhd_add_plugin(NAME <name> KIND <backbone|memory|solver|optimization> SOURCES <src...>)
#
# The one way a plugin is built, in this tree and out of it (find_package(mhd) provides the same
# function). A plugin is a MODULE library that links only the framework (and through it LibTorch);
# it lands in <plugin root>/<kind>/ where the host's discovery finds it.
function(mhd_add_plugin)
  cmake_parse_arguments(ARG "" "NAME;KIND;OUTPUT_DIR" "SOURCES" ${ARGN})
  if(NOT ARG_NAME OR NOT ARG_KIND OR NOT ARG_SOURCES)
    message(FATAL_ERROR "mhd_add_plugin: NAME, KIND and SOURCES are required")
  endif()
  set(_kinds backbone memory solver optimization)
  if(NOT ARG_KIND IN_LIST _kinds)
    message(FATAL_ERROR "mhd_add_plugin(${ARG_NAME}): KIND must be one of ${_kinds}, got '${ARG_KIND}'")
  endif()
  set(_target mhd_plugin_${ARG_NAME})
  add_library(${_target} MODULE ${ARG_SOURCES})
  if(TARGET mhd_framework)
    target_link_libraries(${_target} PRIVATE mhd_framework)
    if(TARGET mhd_pch)
      target_precompile_headers(${_target} REUSE_FROM mhd_pch)
    endif()
  else()
    target_link_libraries(${_target} PRIVATE mhd::framework)
  endif()
  # Hidden visibility: one plugin's internals never shadow another's; only the manifest is exported.
  set_target_properties(${_target} PROPERTIES
    OUTPUT_NAME "mhd_${ARG_NAME}"
    PREFIX "lib"
    CXX_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON)
  if(ARG_OUTPUT_DIR)
    set(_out ${ARG_OUTPUT_DIR})
  elseif(DEFINED MHD_PLUGIN_OUTPUT_ROOT)
    set(_out ${MHD_PLUGIN_OUTPUT_ROOT}/${ARG_KIND})
  else()
    set(_out ${CMAKE_CURRENT_BINARY_DIR}/plugins/${ARG_KIND})
  endif()
  set_target_properties(${_target} PROPERTIES LIBRARY_OUTPUT_DIRECTORY ${_out})
  set_property(GLOBAL APPEND PROPERTY MHD_PLUGIN_TARGETS ${_target})
endfunction()
