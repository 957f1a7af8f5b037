#pragma once
/// \file sequence.hpp
/// Types shared by the runner's drivers: a token sequence and a progress callback.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace llama2c {

/// Token ids, BOS (1) first.
using Sequence = std::vector<std::int32_t>;
/// Progress callback: (done, total) units of work.
using ProgressFn = std::function<void(std::size_t, std::size_t)>;

}  // namespace llama2c
