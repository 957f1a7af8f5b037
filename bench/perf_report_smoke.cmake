# Bench.PerfReportSmoke (bench/CMakeLists.txt): runs scripts/perf_report.py on a small subset of
# toptheta-bench and checks the page it writes. Arguments: PYTHON, SCRIPT, BENCH, WORK_DIR.
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(_filter
    "^(probe/(read_bandwidth|fma_peak)/threads:1|decode/[^/]+/L:1024/dtype:f16/layout:token/"
    "|decode_paired/L:1024/dtype:f16/layout:token|prefill/[^/]+/T:1024/dtype:f16/threads:1)")
string(JOIN "" _filter ${_filter})
execute_process(
  COMMAND "${PYTHON}" "${SCRIPT}" --bench "${BENCH}" --no-portable --no-plot --repetitions 1
          --min-time 0.01 "--filter=${_filter}" --json-out "${WORK_DIR}/results.json"
          --out "${WORK_DIR}/performance.md"
  RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "perf_report.py failed (status ${_rc})")
endif()
file(READ "${WORK_DIR}/performance.md" _page)
# Every family of the subset reached the page: a paired row on 1 and on 2 threads, the decode
# and prefill tables, and no benchmark skipped with an error.
foreach(_want "| 1024 | f16 | token | 1 | " "| 1024 | f16 | token | 2 | " "## Decode: paired ratios"
              "## Prefill: GFLOP/s" "[paired]")
  string(FIND "${_page}" "${_want}" _at)
  if(_at EQUAL -1)
    message(FATAL_ERROR "${WORK_DIR}/performance.md lacks \"${_want}\"")
  endif()
endforeach()
file(READ "${WORK_DIR}/results.json" _json)
string(FIND "${_json}" "\"error_occurred\": true" _err)
if(NOT _err EQUAL -1)
  message(FATAL_ERROR "a benchmark of the subset failed: see ${WORK_DIR}/results.json")
endif()
message(STATUS "perf_report smoke run: ${WORK_DIR}/performance.md")
