framekit_add_fuzzer(net_fuzzer SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/net_fuzzer.cc
                    DEPS framekit::net)
