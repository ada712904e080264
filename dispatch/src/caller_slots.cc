#include "framekit/dispatch/internal/caller_slots.h"

#include <linux/membarrier.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FRAMEKIT_CALLER_SLOTS_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define FRAMEKIT_CALLER_SLOTS_TSAN 1
#endif

namespace framekit::dispatch_internal {

// The slots of one executor. Shared with the threads that hold one of its slots, so that a
// thread ending after the executor still finds its slot's memory.
struct CallerSlots::Registry {
  ~Registry() {
    for (Slot* slot = head.load(std::memory_order_relaxed); slot != nullptr;) {
      Slot* next = slot->next;
      delete slot;
      slot = next;
    }
  }

  std::mutex mu;                     // claims and the list's growth
  std::atomic<Slot*> head{nullptr};  // pushed at the front, under mu; read without it
  std::atomic<bool> alive{true};     // false once the executor is destroyed
};

namespace {

// The process's heavy barrier, chosen once.
struct HeavyBarrier {
  HeavyBarrier() {
#if defined(FRAMEKIT_CALLER_SLOTS_TSAN)
    return;  // ThreadSanitizer models neither barrier: slots run symmetric, which it checks
#else
    membarrier = syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
#if defined(__x86_64__)
    page_size = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
    page = mmap(nullptr, page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) page = nullptr;
#endif
    usable = membarrier || page != nullptr;
#endif
  }

  // A full memory barrier on every CPU that runs a thread of this process.
  void Run() {
    if (membarrier && syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0) {
      return;
    }
    if (page != nullptr) {
      // Write-protect a page this process has just written: the kernel must flush it from the
      // TLB of every CPU that may cache it, which on x86-64 it does by an interrupt to each CPU
      // running a thread of this process, and an interrupt is a full barrier there.
      std::lock_guard<std::mutex> lock(mu);
      if (mprotect(page, page_size, PROT_READ | PROT_WRITE) == 0) {
        static_cast<volatile char*>(page)[0] = static_cast<char>(++writes);
        if (mprotect(page, page_size, PROT_READ) == 0) return;
      }
    }
    // Refused after a registration that succeeded (the registration survives fork, and only
    // execve clears it, so this is not expected): the global barrier needs none.
    if (syscall(__NR_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0) return;
    std::fprintf(
        stderr, "framekit: no memory barrier can order the executor's callers (errno %d)\n", errno);
    std::abort();
  }

  const char* Name() const {
    if (!usable) return "none";
    return membarrier ? "membarrier" : "mprotect";
  }

  bool usable = false;
  bool membarrier = false;
  void* page = nullptr;
  std::size_t page_size = 0;
  std::mutex mu;
  unsigned writes = 0;
};

HeavyBarrier& TheHeavyBarrier() {
  static HeavyBarrier* barrier = new HeavyBarrier();  // never destroyed: used at exit too
  return *barrier;
}

std::atomic<std::uint64_t> serials{1};

thread_local bool tls_claims_gone = false;  // set once the thread's Claims are destroyed

}  // namespace

thread_local constinit CallerSlots::Hot CallerSlots::hot_{};

// The slots the current thread holds, given back when it ends. Touched only on a claim (a
// thread's first call into an executor, or a switch between executors), never per call.
struct CallerSlots::Claims {
  struct Held {
    std::uint64_t serial;
    std::shared_ptr<Registry> registry;  // keeps the slot's memory
    Slot* slot;
  };
  ~Claims() {
    for (Held& h : held) h.slot->owned.store(false, std::memory_order_release);
    held.clear();
    hot_ = {};
    tls_claims_gone = true;
  }
  std::vector<Held> held;
};

thread_local CallerSlots::Claims CallerSlots::claims_;

const char* CallerSlots::BarrierName() { return TheHeavyBarrier().Name(); }

bool CallerSlots::UseMprotectBarrierForTesting() {
  HeavyBarrier& barrier = TheHeavyBarrier();
  if (barrier.page == nullptr) return false;
  barrier.membarrier = false;
  return true;
}

CallerSlots::CallerSlots(Mode mode)
    : asymmetric_(mode == Mode::kAsymmetric && TheHeavyBarrier().usable),
      serial_(serials.fetch_add(1, std::memory_order_relaxed)),
      registry_(std::make_shared<Registry>()) {}

CallerSlots::~CallerSlots() { registry_->alive.store(false, std::memory_order_release); }

CallerSlots::Slot* CallerSlots::Claim() {
  // A thread ending: its claims are gone, and a call made by a later thread_local destructor
  // takes a slot for that call only.
  const bool transient = tls_claims_gone;
  if (!transient) {
    std::vector<Claims::Held>& held = claims_.held;
    // Executors destroyed since: their slots are freed with their registries.
    std::erase_if(held, [](const Claims::Held& h) {
      return !h.registry->alive.load(std::memory_order_acquire);
    });
    for (const Claims::Held& h : held) {
      if (h.serial == serial_) {
        hot_ = {serial_, h.slot};
        return h.slot;
      }
    }
  }
  Slot* slot = nullptr;
  {
    std::lock_guard<std::mutex> lock(registry_->mu);
    for (Slot* s = registry_->head.load(std::memory_order_relaxed); s != nullptr; s = s->next) {
      bool expected = false;
      if (s->owned.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
        slot = s;
        break;
      }
    }
    if (slot == nullptr) {
      slot = new Slot();
      slot->owned.store(true, std::memory_order_relaxed);
      slot->next = registry_->head.load(std::memory_order_relaxed);
      registry_->head.store(slot, std::memory_order_release);
    }
  }
  slot->transient = transient;
  if (!transient) {
    claims_.held.push_back({serial_, registry_, slot});
    hot_ = {serial_, slot};
  }
  return slot;
}

void CallerSlots::Release(Slot* slot) {
  slot->transient = false;
  slot->owned.store(false, std::memory_order_release);
}

void CallerSlots::Barrier() const {
  if (asymmetric_) TheHeavyBarrier().Run();
}

int CallerSlots::Count() const {
  Barrier();
  int n = 0;
  for (const Slot* s = registry_->head.load(std::memory_order_acquire); s != nullptr; s = s->next) {
    n += s->calls.load(std::memory_order_seq_cst);
  }
  return n;
}

std::uint64_t CallerSlots::OldestEpoch() const {
  Barrier();
  std::uint64_t oldest = std::numeric_limits<std::uint64_t>::max();
  for (const Slot* s = registry_->head.load(std::memory_order_acquire); s != nullptr; s = s->next) {
    if (s->calls.load(std::memory_order_seq_cst) > 0) {
      oldest = std::min(oldest, s->epoch.load(std::memory_order_acquire));
    }
  }
  return oldest;
}

int CallerSlots::SlotCount() const {
  int n = 0;
  for (const Slot* s = registry_->head.load(std::memory_order_acquire); s != nullptr; s = s->next) {
    ++n;
  }
  return n;
}

}  // namespace framekit::dispatch_internal
