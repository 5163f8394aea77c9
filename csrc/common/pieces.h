// Work handed out in pieces from a shared counter (host only): the threads of one
// at::parallel_for(0, at::get_num_threads(), 1, ...) region each take the next piece until
// none is left, so a thread whose core is busy elsewhere takes fewer pieces instead of the
// whole region waiting for its fixed share. Results must not depend on which thread runs a
// piece (each piece writes its own outputs).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace fastreg {

class Pieces {
 public:
  Pieces(int64_t total, int64_t size) : total_(total), size_(std::max<int64_t>(size, 1)) {}
  // Takes the next piece [begin, end); false when none is left. Thread-safe.
  bool next(int64_t& begin, int64_t& end) {
    begin = next_.fetch_add(size_, std::memory_order_relaxed);
    if (begin >= total_) return false;
    end = std::min(begin + size_, total_);
    return true;
  }

 private:
  const int64_t total_, size_;
  std::atomic<int64_t> next_{0};
};

}  // namespace fastreg
