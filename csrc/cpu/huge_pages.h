// Transparent-huge-page advice for the CPU kernels' fresh outputs.
//
// PyTorch's CPU allocator hands out fresh mmap'ed memory for large tensors, so the kernel is the
// first to touch an output and pays one page fault per 4 KiB page. For SAM-decoder sizes that
// costs as much as the sampling itself (a 32 MiB output: about 9 ms of a 16 ms forward on the
// 2-core EPYC in benchmarks/RESULTS.md). Advising huge pages on the 2 MiB-aligned interior of the
// buffer before the kernel writes it turns that into one fault per 2 MiB. It is advice only: the
// memory stays the allocator's, and kernels without THP (or with it set to "never") ignore it.
// STABLE_SAM_OPS_CPU_HUGE_PAGES=0 switches it off.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace stable_sam_ops {
namespace cpu {

inline bool huge_page_advice_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("STABLE_SAM_OPS_CPU_HUGE_PAGES");
    return env == nullptr || std::strcmp(env, "0") != 0;
  }();
  return enabled;
}

inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  if (!huge_page_advice_enabled() || t.nbytes() < 2 * kHugePage) {
    return;  // smaller buffers come from the heap, already faulted in
  }
  const auto start = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (start + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (start + t.nbytes()) & ~(kHugePage - 1);
  if (last > first) {
    // Failure only means no huge pages: the 4 KiB path is still correct.
    (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#else
  (void)t;
#endif
}

}  // namespace cpu
}  // namespace stable_sam_ops
