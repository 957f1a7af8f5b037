// toptheta-thresholds: inspect, convert and compare Top-theta threshold files.
// The command line lives in thresholds_cli.hpp so that the tests can run it in-process.

#include <iostream>

#include "thresholds_cli.hpp"

int main(int argc, char** argv) {
  return toptheta::tools::run_thresholds_cli(argc, argv, std::cout, std::cerr);
}
