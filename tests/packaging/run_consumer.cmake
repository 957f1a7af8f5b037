# Packaging test driver, run as `cmake -P run_consumer.cmake` by ctest (see tests/CMakeLists.txt).
#
# Builds tests/packaging/consumer against toptheta, runs it and checks that it prints the expected
# version. MODE build-tree and install configure it as a CMake project (find_package(toptheta
# CONFIG)); MODE pkg-config installs toptheta and compiles consumer/main.cpp by hand with the flags
# of `pkg-config --cflags toptheta`. Inputs (-D...):
#   MODE                 build-tree | install | pkg-config
#   TOPTHETA_BUILD_DIR   the toptheta build directory under test
#   WORK_DIR             scratch directory owned by this test (wiped first)
#   CONSUMER_SOURCE_DIR  tests/packaging/consumer
#   EXPECTED_VERSION     e.g. 0.1.0
#   GENERATOR, MAKE_PROGRAM, CXX_COMPILER, EIGEN3_DIR, CONFIG   (optional)
#   PKG_CONFIG           the pkg-config executable (MODE pkg-config; CXX_COMPILER is required too)
#   PKGCONFIG_INSTALL_DIR  where toptheta.pc is installed, relative to the prefix [share/pkgconfig]
cmake_minimum_required(VERSION 3.25)

foreach(var IN ITEMS MODE TOPTHETA_BUILD_DIR WORK_DIR CONSUMER_SOURCE_DIR EXPECTED_VERSION)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT GENERATOR)
  set(GENERATOR Ninja)
endif()
if(NOT CONFIG)
  set(CONFIG Release)
endif()

function(run_checked what)
  string(REPLACE ";" " " pretty "${ARGN}")
  message(STATUS "[${what}] ${pretty}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "[${what}] failed (exit ${rc})\n--- stdout ---\n${out}\n--- stderr ---\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(consumer_build "${WORK_DIR}/consumer-build")

# Keep the consumer's search honest: no user/system package registries, and only the location
# under test is given for toptheta.
set(configure_args
    -S "${CONSUMER_SOURCE_DIR}" -B "${consumer_build}" -G "${GENERATOR}"
    -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
    -DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF)
if(MAKE_PROGRAM)
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CXX_COMPILER)
  list(APPEND configure_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(EIGEN3_DIR)
  list(APPEND configure_args "-DEigen3_DIR=${EIGEN3_DIR}")
endif()

# install and pkg-config: install the build tree into a fresh prefix first.
if(MODE STREQUAL "install" OR MODE STREQUAL "pkg-config")
  set(prefix "${WORK_DIR}/prefix")
  run_checked(install "${CMAKE_COMMAND}" --install "${TOPTHETA_BUILD_DIR}" --config "${CONFIG}"
              --prefix "${prefix}")
  if(NOT EXISTS "${prefix}/include/toptheta/toptheta.hpp")
    message(FATAL_ERROR "install: ${prefix}/include/toptheta/toptheta.hpp missing")
  endif()
endif()

if(MODE STREQUAL "build-tree")
  set(expected_dir "${TOPTHETA_BUILD_DIR}")
  list(APPEND configure_args "-Dtoptheta_DIR=${TOPTHETA_BUILD_DIR}")
elseif(MODE STREQUAL "install")
  set(expected_dir "${prefix}")
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${prefix}")
elseif(MODE STREQUAL "pkg-config")
  foreach(var IN ITEMS PKG_CONFIG CXX_COMPILER)
    if(NOT ${var})
      message(FATAL_ERROR "run_consumer.cmake: MODE pkg-config needs -D${var}=...")
    endif()
  endforeach()
  # toptheta.pc lives beside the CMake package (header-only: share/, not lib/). Searched first;
  # Eigen's eigen3.pc comes from pkg-config's default search path.
  if(NOT PKGCONFIG_INSTALL_DIR)
    set(PKGCONFIG_INSTALL_DIR share/pkgconfig)
  endif()
  set(pc_dir "${prefix}/${PKGCONFIG_INSTALL_DIR}")
  if(NOT EXISTS "${pc_dir}/toptheta.pc")
    message(FATAL_ERROR "install: ${pc_dir}/toptheta.pc missing")
  endif()
  set(ENV{PKG_CONFIG_PATH} "${pc_dir}")
  # The .pc file must be the one under test, and carry the project's version.
  run_checked(pcfiledir "${PKG_CONFIG}" --variable=pcfiledir toptheta)
  string(STRIP "${last_output}" found_pc_dir)
  file(REAL_PATH "${found_pc_dir}" found_pc_real)
  file(REAL_PATH "${pc_dir}" pc_real)
  if(NOT found_pc_real STREQUAL pc_real)
    message(FATAL_ERROR "pkg-config found toptheta.pc in '${found_pc_real}', expected '${pc_real}'")
  endif()
  run_checked(modversion "${PKG_CONFIG}" --modversion toptheta)
  string(STRIP "${last_output}" pc_version)
  if(NOT pc_version STREQUAL EXPECTED_VERSION)
    message(FATAL_ERROR "pkg-config --modversion toptheta: '${pc_version}', expected "
                        "'${EXPECTED_VERSION}'")
  endif()
  run_checked(cflags "${PKG_CONFIG}" --cflags toptheta)
  string(STRIP "${last_output}" cflags)
  message(STATUS "pkg-config --cflags toptheta: ${cflags}")
  separate_arguments(cflags UNIX_COMMAND "${cflags}")
  # The include directory must be the installed one (a relocatable ${pcfiledir}-based path).
  file(REAL_PATH "${prefix}/include" want_include)
  set(has_include FALSE)
  foreach(flag IN LISTS cflags)
    if(flag MATCHES "^-I(.+)$")
      file(REAL_PATH "${CMAKE_MATCH_1}" inc)
      if(inc STREQUAL want_include)
        set(has_include TRUE)
      endif()
    endif()
  endforeach()
  if(NOT has_include)
    message(FATAL_ERROR "pkg-config --cflags toptheta has no -I for '${want_include}': ${cflags}")
  endif()
  set(exe "${WORK_DIR}/toptheta_consumer")
  # -std=c++17 is the consumer's business with pkg-config (a .pc file cannot require it).
  run_checked(build "${CXX_COMPILER}" -std=c++17 ${cflags} "${CONSUMER_SOURCE_DIR}/main.cpp"
              -o "${exe}")
  run_checked(run "${exe}")
  message(STATUS "consumer output: ${last_output}")
  string(FIND "${last_output}" "toptheta ${EXPECTED_VERSION}" pos)
  if(pos EQUAL -1)
    message(FATAL_ERROR "consumer did not print 'toptheta ${EXPECTED_VERSION}', got:\n${last_output}")
  endif()
  message(STATUS "Packaging test (${MODE}) passed: toptheta.pc found in ${found_pc_real}")
  return()
else()
  message(FATAL_ERROR "run_consumer.cmake: unknown MODE '${MODE}' (build-tree | install | pkg-config)")
endif()

run_checked(configure "${CMAKE_COMMAND}" ${configure_args})
run_checked(build "${CMAKE_COMMAND}" --build "${consumer_build}" --config Release)

# The consumer must have used the package under test, not some other toptheta on the system.
file(STRINGS "${consumer_build}/CMakeCache.txt" found_dir REGEX "^toptheta_DIR:")
string(REGEX REPLACE "^toptheta_DIR:[A-Z]+=" "" found_dir "${found_dir}")
file(REAL_PATH "${found_dir}" found_real)
file(REAL_PATH "${expected_dir}" expected_real)
string(FIND "${found_real}/" "${expected_real}/" pos)
if(NOT pos EQUAL 0)
  message(FATAL_ERROR "consumer found toptheta in '${found_real}', expected under '${expected_real}'")
endif()

set(exe "${consumer_build}/toptheta_consumer")
if(NOT EXISTS "${exe}")
  file(GLOB_RECURSE exe "${consumer_build}/toptheta_consumer" "${consumer_build}/toptheta_consumer.exe")
  list(GET exe 0 exe)
endif()
run_checked(run "${exe}")
message(STATUS "consumer output: ${last_output}")
string(FIND "${last_output}" "toptheta ${EXPECTED_VERSION}" pos)
if(pos EQUAL -1)
  message(FATAL_ERROR "consumer did not print 'toptheta ${EXPECTED_VERSION}', got:\n${last_output}")
endif()
message(STATUS "Packaging test (${MODE}) passed: toptheta found in ${found_real}")
