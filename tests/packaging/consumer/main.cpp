// Packaging smoke test: compiles against the installed / exported toptheta package.
#include <toptheta/threshold_table.hpp>
#include <toptheta/version.hpp>

#include <cstdio>

int main() {
  const toptheta::ThresholdTable table(2, 4);
  if (table.num_layers() != 2 || table.num_heads() != 4) {
    std::fprintf(stderr, "unexpected table shape\n");
    return 1;
  }
  std::printf("toptheta %s\n", TOPTHETA_VERSION_STRING);
  return 0;
}
