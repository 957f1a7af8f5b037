// Must NOT compile: int8_t is not a storage type. The test (tests/CMakeLists.txt,
// CompileFail.Int8Storage) checks that the compiler names the supported types.
#include <cstdint>

#include <toptheta/toptheta.hpp>

int main() {
  toptheta::AttentionArgs<std::int8_t> args;
  return toptheta::decode(args, toptheta::AttentionOptions{}).ok() ? 0 : 1;
}
