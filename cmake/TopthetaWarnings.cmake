# Settings for toptheta's OWN targets (tests, benchmarks, examples, tools, fuzzers).
# Never applied to the INTERFACE target toptheta::toptheta, so consumers inherit none of it.
#
#   toptheta_configure_target(<target>)
#
# adds, PRIVATE to <target>:
#   - warnings: -Wall -Wextra -Wpedantic (GCC/Clang), /W4 (MSVC); warnings are errors
#     (COMPILE_WARNING_AS_ERROR) when TOPTHETA_WERROR is ON;
#   - with GCC < 13 on x86, a forced include of cmake/compat/gcc_pr105593_immintrin.h, which
#     silences GCC bug 105593 (-Wmaybe-uninitialized inside GCC's own AVX-512 intrinsics, hundreds
#     of times per build through Eigen with -march=native) without turning the warning off for
#     our code;
#   - the instruction-set flags: TOPTHETA_ARCH_FLAGS when set (e.g. "-mavx2 -mfma", or "none"
#     for the compiler's baseline), otherwise -march=native when TOPTHETA_NATIVE is ON and the
#     compiler accepts it;
#   - OpenMP::OpenMP_CXX when TOPTHETA_USE_OPENMP is ON and OpenMP was found;
#   - C++ extensions off (the C++17 requirement itself comes from toptheta::toptheta).
# It does NOT link toptheta::toptheta; do that yourself.

include_guard(GLOBAL)

include(CheckCXXCompilerFlag)

if(TOPTHETA_USE_OPENMP)
  find_package(OpenMP COMPONENTS CXX)
  if(OpenMP_CXX_FOUND)
    message(STATUS "toptheta: OpenMP ${OpenMP_CXX_VERSION} found, used by our own targets")
  else()
    message(STATUS "toptheta: OpenMP not found, our own targets run single-threaded")
  endif()
endif()

set(TOPTHETA_ARCH_FLAGS "" CACHE STRING
    "Instruction-set flags of our own targets instead of -march=native (\"none\": no flags)")
if(TOPTHETA_ARCH_FLAGS STREQUAL "none")
  set(_toptheta_arch_flags "")
elseif(TOPTHETA_ARCH_FLAGS)
  separate_arguments(_toptheta_arch_flags UNIX_COMMAND "${TOPTHETA_ARCH_FLAGS}")
endif()
if(TOPTHETA_ARCH_FLAGS)
  message(STATUS "toptheta: instruction-set flags of our own targets: '${TOPTHETA_ARCH_FLAGS}'")
elseif(TOPTHETA_NATIVE AND NOT MSVC)
  check_cxx_compiler_flag(-march=native TOPTHETA_COMPILER_HAS_MARCH_NATIVE)
endif()

# GCC bug 105593: see cmake/compat/gcc_pr105593_immintrin.h. Fixed in GCC 13.
set(_toptheta_pr105593_header "")
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU"
   AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13
   AND CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64|i[3-6]86)$")
  set(_toptheta_pr105593_header
      "${CMAKE_CURRENT_LIST_DIR}/compat/gcc_pr105593_immintrin.h")
endif()

function(toptheta_configure_target tgt)
  if(NOT TARGET ${tgt})
    message(FATAL_ERROR "toptheta_configure_target: '${tgt}' is not a target")
  endif()
  if(MSVC)
    target_compile_options(${tgt} PRIVATE /W4 /permissive-)
  else()
    target_compile_options(${tgt} PRIVATE -Wall -Wextra -Wpedantic)
  endif()
  if(_toptheta_pr105593_header)
    target_compile_options(${tgt} PRIVATE "SHELL:-include \"${_toptheta_pr105593_header}\"")
  endif()
  if(TOPTHETA_WERROR)
    set_target_properties(${tgt} PROPERTIES COMPILE_WARNING_AS_ERROR ON)
  endif()
  if(TOPTHETA_ARCH_FLAGS)
    if(_toptheta_arch_flags)
      target_compile_options(${tgt} PRIVATE ${_toptheta_arch_flags})
    endif()
  elseif(TOPTHETA_NATIVE AND TOPTHETA_COMPILER_HAS_MARCH_NATIVE)
    target_compile_options(${tgt} PRIVATE -march=native)
  endif()
  if(TOPTHETA_USE_OPENMP AND TARGET OpenMP::OpenMP_CXX)
    target_link_libraries(${tgt} PRIVATE OpenMP::OpenMP_CXX)
  endif()
  set_target_properties(${tgt} PROPERTIES CXX_EXTENSIONS OFF)
endfunction()
