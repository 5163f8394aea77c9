// Launch helpers shared by the CUDA sources (every kernel is a grid-stride loop, so the
// block count is capped and the loop covers the rest).
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>

namespace fastreg {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535LL * 32;

// Blocks of kThreads threads for `total` elements: at least 1, at most kMaxBlocks.
inline unsigned int blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>(blocks, kMaxBlocks)));
}

// Whether every element count fits an int32 index (the kernels' narrow index type).
inline bool fits_int32(std::initializer_list<int64_t> numels) {
  for (int64_t n : numels) {
    if (n >= std::numeric_limits<int32_t>::max()) return false;
  }
  return true;
}

}  // namespace fastreg
