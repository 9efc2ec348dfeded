// Scratch of the CPU backward (deformable_sample_backward_kernel.cpp): its query, sort and
// gather passes hand each other per-(query, group) arrays carved from one block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <type_traits>

namespace stable_sam_ops {
namespace cpu {
namespace detail {

// The backward's scratch (about 72 bytes per (query, group): 20 MiB at B=8, C=256, 64x64,
// G=8) lives in a workspace kept per calling thread and grown to the largest call, so that its
// pages are faulted in once, not on every call: freshly mapped, they cost about 4000 page faults
// a call there (/proc/vmstat). Calls that need more than kRetainedScratchBytes get scratch of
// their own, freed when they return, so no thread keeps more than that.
constexpr size_t kRetainedScratchBytes = size_t(64) << 20;
constexpr size_t kScratchAlign = 64;

inline char* thread_workspace(size_t bytes) {
  thread_local std::unique_ptr<char[]> buffer;
  thread_local size_t capacity = 0;
  if (bytes > capacity) {
    buffer.reset();
    buffer.reset(new char[bytes]);
    capacity = bytes;
  }
  return buffer.get();
}

template <typename T>
size_t scratch_bytes(int64_t n) {
  return (static_cast<size_t>(n) * sizeof(T) + kScratchAlign - 1) / kScratchAlign * kScratchAlign;
}

// Hands out consecutive, cache-line-aligned arrays of scratch.
class ScratchCarver {
 public:
  explicit ScratchCarver(size_t bytes) {
    const size_t total = bytes + kScratchAlign;
    if (total <= kRetainedScratchBytes) {
      next_ = align(thread_workspace(total));
    } else {
      owned_.reset(new char[total]);
      next_ = align(owned_.get());
    }
  }

  template <typename T>
  T* take(int64_t n) {
    static_assert(std::is_trivially_default_constructible_v<T> && alignof(T) <= kScratchAlign);
    T* p = reinterpret_cast<T*>(next_);
    next_ += scratch_bytes<T>(n);
    return p;
  }

 private:
  static char* align(char* p) {
    const auto u = reinterpret_cast<uintptr_t>(p);
    return p + (kScratchAlign - u % kScratchAlign) % kScratchAlign;
  }
  std::unique_ptr<char[]> owned_;
  char* next_;
};

}  // namespace detail
}  // namespace cpu
}  // namespace stable_sam_ops
