# The `docs` target: the Doxygen API reference of include/toptheta/ (without reference/), built
# into <build>/docs/html from docs/Doxyfile.in. Included by the top-level CMakeLists.txt when
# TOPTHETA_BUILD_DOCS is ON; without Doxygen it prints a note and adds nothing.
#
# Cache variables:
#   TOPTHETA_DOCS_WARN_AS_ERROR  OFF: warnings go to <build>/docs/doxygen-warnings.log only;
#                                ON: Doxygen's FAIL_ON_WARNINGS, the target fails on any warning
#                                (meant for CI once the headers are documented).
include_guard(GLOBAL)

set(TOPTHETA_DOCS_WARN_AS_ERROR OFF CACHE BOOL
    "Make Doxygen warnings fail the 'docs' target (WARN_AS_ERROR = FAIL_ON_WARNINGS)")

find_package(Doxygen)
if(NOT DOXYGEN_FOUND)
  message(STATUS "toptheta: Doxygen not found, no 'docs' target")
  return()
endif()

set(TOPTHETA_DOCS_OUTPUT_DIR "${PROJECT_BINARY_DIR}/docs")
if(TOPTHETA_DOCS_WARN_AS_ERROR)
  set(TOPTHETA_DOXYGEN_WARN_AS_ERROR FAIL_ON_WARNINGS)
else()
  set(TOPTHETA_DOXYGEN_WARN_AS_ERROR NO)
endif()
configure_file("${PROJECT_SOURCE_DIR}/docs/Doxyfile.in" "${TOPTHETA_DOCS_OUTPUT_DIR}/Doxyfile"
               @ONLY)

# Always reruns (a few seconds): the run prints the warning count and, with
# TOPTHETA_DOCS_WARN_AS_ERROR, fails on every build until the warnings are fixed.
add_custom_target(
  docs
  COMMAND "${CMAKE_COMMAND}" "-DDOXYGEN=$<TARGET_FILE:Doxygen::doxygen>"
          "-DDOXYFILE=${TOPTHETA_DOCS_OUTPUT_DIR}/Doxyfile"
          "-DLOGFILE=${TOPTHETA_DOCS_OUTPUT_DIR}/doxygen-warnings.log"
          -P "${CMAKE_CURRENT_LIST_DIR}/TopthetaRunDoxygen.cmake"
  WORKING_DIRECTORY "${TOPTHETA_DOCS_OUTPUT_DIR}"
  COMMENT "Doxygen: API reference in ${TOPTHETA_DOCS_OUTPUT_DIR}/html"
  VERBATIM)
