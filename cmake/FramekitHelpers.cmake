# Shared settings for framekit's own targets.

# Warnings for the project's own code only; consumers never inherit them.
function(framekit_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Werror
    # GCC 12 reports a false -Wrestrict inside libstdc++'s std::string concatenation at -O3
    # (GCC bug 105329, fixed in 13); it would turn every Release build into an error.
    $<$<AND:$<CXX_COMPILER_ID:GNU>,$<VERSION_LESS:$<CXX_COMPILER_VERSION>,13>>:-Wno-restrict>)
endfunction()

# Sanitizer flags, applied to every target in a sanitizer build (tests and libraries alike).
if(FRAMEKIT_SANITIZE STREQUAL "thread")
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
elseif(FRAMEKIT_SANITIZE STREQUAL "address")
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined
                      -fno-omit-frame-pointer
                      # GCC 12 reports a false -Wmaybe-uninitialized for the std::string inside
                      # a std::variant (OptionValue) once the sanitizers instrument it at -O2
                      # (a known class of GCC 12 false positives); -Werror would fail the build.
                      $<$<CXX_COMPILER_ID:GNU>:-Wno-maybe-uninitialized>)
  add_link_options(-fsanitize=address,undefined)
elseif(NOT FRAMEKIT_SANITIZE STREQUAL "")
  message(FATAL_ERROR "FRAMEKIT_SANITIZE must be '', 'thread' or 'address'")
endif()

# framekit_add_module(NAME SOURCES ... DEPS ...): a module library framekit_NAME with the alias
# framekit::NAME, its public headers under NAME/include, and install/export rules.
function(framekit_add_module name)
  cmake_parse_arguments(ARG "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(framekit_${name} ${ARG_SOURCES})
  add_library(framekit::${name} ALIAS framekit_${name})
  target_compile_features(framekit_${name} PUBLIC cxx_std_20)
  target_include_directories(framekit_${name} PUBLIC
    $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
  target_link_libraries(framekit_${name} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  set_target_properties(framekit_${name} PROPERTIES
    EXPORT_NAME ${name}
    POSITION_INDEPENDENT_CODE ON)
  framekit_set_warnings(framekit_${name})
  if(FRAMEKIT_INSTALL)
    # testing/ holds helpers for the project's own tests and examples; they are not installed.
    install(DIRECTORY include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
            PATTERN testing EXCLUDE)
    install(TARGETS framekit_${name} EXPORT framekitTargets
      ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
      LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
  endif()
endfunction()
