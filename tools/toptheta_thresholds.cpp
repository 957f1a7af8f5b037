// toptheta-thresholds: inspect, convert and compare Top-theta threshold files.
// The command line lives in thresholds_cli.hpp so that the tests can run it in-process.

#include <iostream>

#include "thresholds_cli.hpp"

int main(int argc, char** argv) {
  // Ignores SIGXFSZ, so a file size limit is an error (exit 1), not a kill mid-write.
  return toptheta::tools::thresholds_cli_main(argc, argv, std::cout, std::cerr);
}
