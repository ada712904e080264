framekit_add_fuzzer(options_fuzzer SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/options_fuzzer.cc
                    DEPS framekit::ctx)
