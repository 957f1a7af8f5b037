# toptheta_add_instances(): the static library `toptheta_instances`, which compiles every entry
# point of attention.hpp and plan.hpp once per AttentionArgs<T, Q> pair (one generated source
# per pair, so that they build in parallel), and tells its consumers to only declare them
# (TOPTHETA_EXTERN_TEMPLATES). Our tests, examples and tools link it: each of their files then
# compiles in seconds instead of minutes, because it no longer instantiates the kernels for
# every SIMD path itself. The library stays header-only; this is a build-time saving, and the
# same pattern is open to users (docs/integration.md, "Compiling the kernels once").
#
# Needs toptheta_configure_target() (TopthetaWarnings.cmake): the instances get the same
# instruction-set, warning and OpenMP settings as the targets that link them.
include_guard(GLOBAL)

function(toptheta_add_instances)
  # Must match TOPTHETA_FOR_EACH_ARGS_TYPE (attention_args.hpp): a pair declared there and not
  # compiled here fails to link, one compiled here and not declared there is compiled twice.
  set(_pairs
      "f32|float|float"
      "f64|double|double"
      "f16|::Eigen::half|::Eigen::half"
      "f16_f32q|::Eigen::half|float"
      "bf16|::Eigen::bfloat16|::Eigen::bfloat16"
      "bf16_f32q|::Eigen::bfloat16|float"
      "q8_0|::toptheta::BlockQ8_0|float")
  set(_sources "")
  foreach(_pair IN LISTS _pairs)
    string(REPLACE "|" ";" _pair "${_pair}")
    list(GET _pair 0 _name)
    list(GET _pair 1 TT_T)
    list(GET _pair 2 TT_Q)
    set(_out "${PROJECT_BINARY_DIR}/toptheta_instances/${_name}.cpp")
    configure_file("${PROJECT_SOURCE_DIR}/cmake/toptheta_instances.cpp.in" "${_out}" @ONLY)
    list(APPEND _sources "${_out}")
  endforeach()
  add_library(toptheta_instances STATIC ${_sources})
  target_link_libraries(toptheta_instances PUBLIC toptheta::toptheta)
  target_compile_definitions(toptheta_instances INTERFACE TOPTHETA_EXTERN_TEMPLATES)
  toptheta_configure_target(toptheta_instances)
  if(TOPTHETA_USE_OPENMP AND TARGET OpenMP::OpenMP_CXX)
    # The instances run OpenMP regions: their consumers link the runtime too.
    target_link_libraries(toptheta_instances PUBLIC OpenMP::OpenMP_CXX)
  endif()
endfunction()
