# toptheta_check_eigen_version()
#
# Call after find_package(Eigen3 CONFIG). Fails with a clear message when Eigen is older than
# 3.4. Eigen is found without a version argument on purpose: Eigen 5 uses semantic versioning and
# its version file would reject a "3.4" request, yet it is compatible with us.
set(TOPTHETA_MIN_EIGEN_VERSION 3.4)

function(toptheta_check_eigen_version)
  if(DEFINED Eigen3_VERSION AND NOT "${Eigen3_VERSION}" STREQUAL "")
    set(_version "${Eigen3_VERSION}")
  elseif(DEFINED EIGEN3_VERSION_STRING AND NOT "${EIGEN3_VERSION_STRING}" STREQUAL "")
    set(_version "${EIGEN3_VERSION_STRING}")
  else()
    message(FATAL_ERROR
      "toptheta: found Eigen3 at '${Eigen3_DIR}' but it reports no version "
      "(neither Eigen3_VERSION nor EIGEN3_VERSION_STRING is set). toptheta needs Eigen >= "
      "${TOPTHETA_MIN_EIGEN_VERSION}. On Debian/Ubuntu: apt-get install libeigen3-dev.")
  endif()
  if(_version VERSION_LESS TOPTHETA_MIN_EIGEN_VERSION)
    message(FATAL_ERROR
      "toptheta: Eigen ${_version} found at '${Eigen3_DIR}', but toptheta needs Eigen >= "
      "${TOPTHETA_MIN_EIGEN_VERSION}. Point Eigen3_DIR (or CMAKE_PREFIX_PATH) at a newer Eigen.")
  endif()
  message(STATUS "toptheta: using Eigen ${_version} (${Eigen3_DIR})")
endfunction()
