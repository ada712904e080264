framekit_add_fuzzer(isolate_wire_fuzzer SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/isolate_wire_fuzzer.cc
                    DEPS framekit::isolate)
target_include_directories(isolate_wire_fuzzer PRIVATE ${PROJECT_SOURCE_DIR})
