framekit_add_fuzzer(ops_fuzzer SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/ops_fuzzer.cc
                    DEPS framekit::framekit)
