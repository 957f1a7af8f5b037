# Bench.PerfReportSmoke (bench/CMakeLists.txt): runs scripts/perf_report.py on a small subset of
# toptheta-bench and checks the page it writes. Arguments: PYTHON, SCRIPT, BENCH, BENCH_PORTABLE,
# WORK_DIR. The portable comparison runs in two rounds of one small group.
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(_filter
    "^(probe/(read_bandwidth|read_blocks/block:32768|fma_peak)/threads:1"
    "|decode/[^/]+/L:1024/dtype:f16/layout:token/"
    "|decode_paired/L:1024/dtype:f16/layout:token|prefill/[^/]+/T:1024/dtype:f16/threads:1"
    "|prefill_paired/T:1024/dtype:f16"
    "|decode_resident/dense/L:16384/dtype:f16/layout:token/threads:1)")
string(JOIN "" _filter ${_filter})
execute_process(
  COMMAND "${PYTHON}" "${SCRIPT}" --bench "${BENCH}" --bench-portable "${BENCH_PORTABLE}"
          --portable-rounds 2 "--portable-group=^decode/dense/L:1024/dtype:f16/layout:token/threads:1"
          --no-plot --repetitions 1
          --min-time 0.01 "--filter=${_filter}" --json-out "${WORK_DIR}/results.json"
          --out "${WORK_DIR}/performance.md"
  RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "perf_report.py failed (status ${_rc})")
endif()
file(READ "${WORK_DIR}/performance.md" _page)
# Every family of the subset reached the page with numbers: the paired section has a row on 1 and
# on 2 threads (rounds, top-k speed-up, the recommended variant's speed-up with its quartiles),
# the decode and prefill tables have rows, prefill_paired has a row per thread count, and the
# decode ratio targets say they are paired.
string(FIND "${_page}" "## Decode: paired ratios" _at)
if(_at EQUAL -1)
  message(FATAL_ERROR "${WORK_DIR}/performance.md has no paired-ratio section")
endif()
string(SUBSTRING "${_page}" ${_at} -1 _paired)
string(FIND "${_paired}" "\n## " _end)
string(SUBSTRING "${_paired}" 0 ${_end} _paired)
foreach(_t 1 2)
  if(NOT _paired MATCHES
     "\\| 1024 \\| f16 \\| token \\| ${_t} \\| [0-9]+ \\| [0-9.]+x \\| [0-9.]+x \\([0-9.]+-[0-9.]+\\) \\|")
    message(FATAL_ERROR "no paired row for 1024 f16 token ${_t} thread(s) in:\n${_paired}")
  endif()
endforeach()
foreach(_re "\\| threads \\| read GB/s \\| shuffled 32 KiB blocks GB/s \\| FMA GFLOP/s \\|"
            "\\| 1 \\| [0-9.]+ \\| [0-9.]+ \\| [0-9.]+ \\|"
            "Each probe ran at the start of the run and again at its end"
            "\\| `probe/read_bandwidth/threads:1` \\| [0-9.]+ GB/s \\| [0-9.]+ GB/s \\|"
            "\\| 1024 \\| f16 \\| token \\| 1 \\| dense \\| [0-9.]+ \\|"
            "\\| 1024 \\| f16 \\| 1 \\| dense \\| [0-9.]+ \\|"
            "### Prefill: paired ratios"
            "\\| 1024 \\| f16 \\| 1 \\| 16 \\| [0-9.]+x \\| [0-9.]+x \\([0-9.]+-[0-9.]+\\) \\|"
            "\\| 1024 \\| f16 \\| 2 \\| 16 \\| [0-9.]+x \\| [0-9.]+x \\([0-9.]+-[0-9.]+\\) \\|"
            "## Decode: the dense walk's compute ceiling"
            "\\| f16 \\| 1 \\| 256 \\| [0-9.]+ \\| [0-9.]+ \\| [0-9]+% \\| — \\| — \\| — \\| — \\|"
            "- f16, 1 thread: the resident walk reads at [0-9.]+ of the probe, against the dense-decode target.s 0.60: .* [0-9]+ ns per token resident; its 16384 FLOP per token take [0-9]+ ns"
            "speed-up over top-k \\(k = 64\\), all L \\[paired\\] \\| >= 1.00x \\| [0-9.]+ \\|"
            "After the main run, 2 rounds each ran the benchmarks below"
            "\\| decode/dense/L:1024/f16/token/t=1 \\| [0-9.]+ \\| [0-9.]+ \\| (0\\.[1-9]|[1-9]\\.)[0-9]* \\| 2 \\|"
            "median over rounds of the two binaries run back to back \\| <= 1.10 \\| [0-9.]+ \\|")
  if(NOT _page MATCHES "${_re}")
    message(FATAL_ERROR "${WORK_DIR}/performance.md has nothing matching ${_re}")
  endif()
endforeach()
foreach(_f results.json results.probe_end.json)
  file(READ "${WORK_DIR}/${_f}" _json)
  string(FIND "${_json}" "\"error_occurred\": true" _err)
  if(NOT _err EQUAL -1)
    message(FATAL_ERROR "a benchmark of the subset failed: see ${WORK_DIR}/${_f}")
  endif()
endforeach()
message(STATUS "perf_report smoke run: ${WORK_DIR}/performance.md")
