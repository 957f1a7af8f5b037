# Runs Doxygen for the `docs` target (cmake/TopthetaDocs.cmake) and reports its warnings.
#   cmake -DDOXYGEN=<doxygen> -DDOXYFILE=<Doxyfile> -DLOGFILE=<its WARN_LOGFILE> -P this-file
# Prints "toptheta docs: N Doxygen warnings (<log>)"; fails when Doxygen fails (which it does on
# warnings when the Doxyfile says WARN_AS_ERROR = FAIL_ON_WARNINGS).
cmake_minimum_required(VERSION 3.25)
foreach(var IN ITEMS DOXYGEN DOXYFILE LOGFILE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "TopthetaRunDoxygen.cmake: -D${var}=... is required")
  endif()
endforeach()

file(REMOVE "${LOGFILE}")
execute_process(COMMAND "${DOXYGEN}" "${DOXYFILE}" RESULT_VARIABLE rc)

set(count 0)
if(EXISTS "${LOGFILE}")
  # With WARN_AS_ERROR, Doxygen labels its warnings "error:".
  file(STRINGS "${LOGFILE}" warnings REGEX ": (warning|error): ")
  list(LENGTH warnings count)
endif()
message(STATUS "toptheta docs: ${count} Doxygen warnings (${LOGFILE})")
if(NOT rc EQUAL 0)
  if(EXISTS "${LOGFILE}")
    file(READ "${LOGFILE}" log)
    message("${log}")
  endif()
  message(FATAL_ERROR "toptheta docs: doxygen failed (exit ${rc})")
endif()
