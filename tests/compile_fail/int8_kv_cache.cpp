// Must NOT compile: KvCache<int8_t> (tests/CMakeLists.txt, CompileFail.Int8KvCache).
#include <cstdint>

#include <toptheta/toptheta.hpp>

int main() {
  toptheta::KvCache<std::int8_t> cache;
  return int(cache.size());
}
