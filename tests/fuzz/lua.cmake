framekit_add_fuzzer(lua_fuzzer SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/lua_fuzzer.cc
                    DEPS framekit::lua)
