// The kept-buffer allocator behind empty_output (why it exists: output_cache.h).
#include "output_cache.h"

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(_WIN32)
#include <malloc.h>
#else
#include <pthread.h>
#endif

namespace stable_sam_ops {
namespace cpu {

namespace {

// Buffers are whole, aligned 2 MiB huge pages: a buffer kept for reuse stays backed by huge
// pages, and a fresh one costs one page fault per 2 MiB instead of one per 4 KiB.
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kDefaultKeptMiB = 256;

size_t kept_cap_from_env() {
  const char* env = std::getenv("STABLE_SAM_OPS_CPU_OUTPUT_CACHE_MB");
  if (env == nullptr || *env == '\0') {
    return kDefaultKeptMiB << 20;
  }
  char* end = nullptr;
  errno = 0;
  const unsigned long long mib = std::strtoull(env, &end, 10);
  TORCH_CHECK(*end == '\0' && errno == 0 && env[0] != '-' && mib <= (size_t(1) << 24),
              "STABLE_SAM_OPS_CPU_OUTPUT_CACHE_MB must be a whole number of MiB from 0 (keep "
              "nothing) to 16777216, got '", env, "'");
  return static_cast<size_t>(mib) << 20;
}

bool huge_page_advice_enabled() {
  const char* env = std::getenv("STABLE_SAM_OPS_CPU_HUGE_PAGES");
  return env == nullptr || std::strcmp(env, "0") != 0;
}

void* map_buffer(size_t bytes) {
  void* p = nullptr;
#if defined(_WIN32)
  p = _aligned_malloc(bytes, kHugePage);
#else
  if (posix_memalign(&p, kHugePage, bytes) != 0) {
    return nullptr;
  }
#endif
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool advise = huge_page_advice_enabled();
  if (advise) {
    // Advice only: kernels without transparent huge pages ignore it.
    (void)madvise(p, bytes, MADV_HUGEPAGE);
  }
#endif
  return p;
}

class OutputBufferCache final : public c10::Allocator {
 public:
  using Buffers = std::list<std::pair<size_t, void*>>;

  OutputBufferCache() : cap_(kept_cap_from_env()) {
#if !defined(_WIN32)
    // A child forked (a DataLoader worker, say) while another thread held the lock would
    // otherwise inherit it held, and its first output would wait forever.
    pthread_atfork([] { instance().mutex_.lock(); }, [] { instance().mutex_.unlock(); },
                   [] { instance().mutex_.unlock(); });
#endif
  }

  c10::DataPtr allocate(size_t n) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n == 0) {
      return {nullptr, nullptr, &release, cpu};
    }
    const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
    void* p = take_kept(bytes);
    if (p == nullptr) {
      p = map_buffer(bytes);
      if (p == nullptr) {
        empty();  // the kept buffers may be what stands in the way
        p = map_buffer(bytes);
      }
      TORCH_CHECK_WITH(OutOfMemoryError, p != nullptr,
                       "deformable_sample (cpu): out of memory allocating ", bytes, " bytes");
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_[p] = bytes;
    }
    return {p, p, &release, cpu};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

  size_t kept_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return kept_bytes_;
  }

  void empty() {
    Buffers freed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      freed.swap(kept_);
      kept_bytes_ = 0;
    }
    free_all(freed);
  }

  static OutputBufferCache& instance() {
    // Never destroyed: tensors freed while the process exits still return their buffers here.
    static OutputBufferCache* cache = new OutputBufferCache();
    return *cache;
  }

 private:
  static void release(void* p) {
    if (p != nullptr) {
      instance().keep(p);
    }
  }

  void* take_kept(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = kept_.begin(); it != kept_.end(); ++it) {
      if (it->first == bytes) {
        void* p = it->second;
        kept_bytes_ -= bytes;
        kept_.erase(it);
        return p;
      }
    }
    return nullptr;
  }

  // Keeps a freed buffer, most recent first; frees the least recently freed past the cap, and
  // a buffer larger than the cap at once (it would push out everything kept and still not fit).
  void keep(void* p) {
    Buffers freed;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = live_.find(p);
      TORCH_INTERNAL_ASSERT(it != live_.end(), "output cache: freeing a buffer it did not make");
      const size_t bytes = it->second;
      live_.erase(it);
      if (bytes > cap_) {
        freed.emplace_back(bytes, p);
      } else {
        kept_.emplace_front(bytes, p);
        kept_bytes_ += bytes;
        while (kept_bytes_ > cap_) {
          kept_bytes_ -= kept_.back().first;
          freed.splice(freed.end(), kept_, std::prev(kept_.end()));
        }
      }
    }
    free_all(freed);  // outside the lock: unmapping takes a while
  }

  static void free_all(const Buffers& buffers) {
    for (const auto& entry : buffers) {
#if defined(_WIN32)
      _aligned_free(entry.second);
#else
      std::free(entry.second);
#endif
    }
  }

  const size_t cap_;
  std::mutex mutex_;
  Buffers kept_;  // (bytes, buffer), most recently freed first
  size_t kept_bytes_ = 0;
  std::unordered_map<void*, size_t> live_;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t nbytes = static_cast<size_t>(c10::multiply_integers(sizes)) *
                        options.dtype().itemsize();
  if (nbytes < kMinCachedBytes) {
    return at::empty(sizes, options);
  }
  return at::detail::empty_generic(sizes, &OutputBufferCache::instance(),
                                   c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()),
                                   c10::MemoryFormat::Contiguous);
}

size_t output_cache_kept_bytes() { return OutputBufferCache::instance().kept_bytes(); }

void empty_output_cache() { OutputBufferCache::instance().empty(); }

}  // namespace cpu
}  // namespace stable_sam_ops
