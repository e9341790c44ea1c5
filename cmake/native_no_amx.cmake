# Injected into the native builds of the vendored tree (bench/run.py's build_native,
# through CMAKE_PROJECT_INCLUDE): the package's AMX rule (see CMakeLists.txt), so
# that llama-server, llama-bench and llama-batched-bench run the same CPU kernels as
# the package. ggml's AMX kernels crash at this pin on AMX CPUs (measured here:
# SIGSEGV in ggml_backend_amx_mul_mat in llama-batched-bench on a Xeon with AMX).
get_property(_cortex_no_amx_set GLOBAL PROPERTY CORTEX_NO_AMX_DEFERRED)
if(NOT _cortex_no_amx_set AND CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
    set_property(GLOBAL PROPERTY CORTEX_NO_AMX_DEFERRED TRUE)
    function(_cortex_no_amx)
        get_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}/ggml/src" PROPERTY BUILDSYSTEM_TARGETS)
        foreach(_t ${_targets})
            if(_t MATCHES "^ggml-cpu")
                target_compile_options(${_t} PRIVATE -mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
                message(STATUS "cortex-llama: AMX off in ${_t} (native tools)")
            endif()
        endforeach()
    endfunction()
    cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL _cortex_no_amx)
endif()
