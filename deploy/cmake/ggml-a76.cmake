# ggml-a76.cmake: makes llama.cpp's CPU kernels target the RK3588's cores (armv8.2-a with dotprod and fp16) in the arm64 build.
#
# deploy/cross-build.sh hands this file to llama.cpp's cmake run as
# CMAKE_PROJECT_INCLUDE (llama-cpp-sys-2's build script forwards every CMAKE_*
# variable of the environment), so cmake runs it after each project() call,
# before ggml reads its options.
#
# Why it is needed: ggml takes the ARM architecture from GGML_CPU_ARM_ARCH and
# compiles its CPU kernels with -march=<that>, after every flag from CFLAGS, so
# a -march in CFLAGS loses. llama-cpp-sys-2 forwards GGML_* variables from the
# environment too, but on aarch64 Linux it then defines GGML_CPU_ARM_ARCH=armv8-a
# itself, later on the command line, which wins: without this file every arm64
# build gets the plain armv8-a kernels (no sdot/udot, no fp16 arithmetic), the
# slowest ones ggml has for the board. This file runs inside cmake, after the
# command line, and puts the environment's value back.
if(DEFINED ENV{GGML_CPU_ARM_ARCH} AND NOT "$ENV{GGML_CPU_ARM_ARCH}" STREQUAL "")
    if(NOT "${GGML_CPU_ARM_ARCH}" STREQUAL "$ENV{GGML_CPU_ARM_ARCH}")
        message(STATUS "rocksteady: GGML_CPU_ARM_ARCH ${GGML_CPU_ARM_ARCH} -> $ENV{GGML_CPU_ARM_ARCH}")
    endif()
    set(GGML_CPU_ARM_ARCH "$ENV{GGML_CPU_ARM_ARCH}" CACHE STRING "ggml: CPU architecture for ARM" FORCE)
endif()
