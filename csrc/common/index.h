// Flat-index helpers shared by the per-element math headers: a voxel's flat C-order index
// within one channel <-> its per-axis indices (first spatial axis first).
#pragma once

#include <cstdint>

#include "host_device.h"

namespace fastreg {

// Splits a flat index of a grid of the given sizes into per-axis indices.
template <int NDIM>
FASTREG_HOST_DEVICE void unravel(int64_t v, const int64_t* size, int64_t* idx) {
  for (int a = NDIM - 1; a >= 0; --a) {
    idx[a] = v % size[a];
    v /= size[a];
  }
}

// Advances per-axis indices by one voxel in C order, wrapping to 0 after the last voxel
// (the cheap step of CPU loops).
template <int NDIM>
FASTREG_HOST_DEVICE void advance(const int64_t* size, int64_t* idx) {
  for (int a = NDIM - 1; a >= 0; --a) {
    if (++idx[a] < size[a]) return;
    idx[a] = 0;
  }
}

}  // namespace fastreg
