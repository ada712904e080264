framekit_add_fuzzer(rpc_fuzzer SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/rpc_fuzzer.cc
                    DEPS framekit::rpc)
