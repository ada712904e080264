// CallerSlots: who is inside an object (the function executor), and since which epoch, kept
// without an atomic read-modify-write on the callers' path.
//
// The executor must know which calls are inside it: Shutdown and the destructor wait for them,
// and a function table replaced by Register or Deploy is freed only once no call can still read
// it. A shared counter did this with two locked read-modify-writes per call (an add on entry
// and a subtract on exit) on one cache line all callers write: about 17 ns of an Invoke's
// overhead, and more when threads contend.
//
// Here each thread has its own slot per executor, which only that thread writes: the number of
// its calls inside, and the epoch its outermost call entered in. Entering is two plain stores
// to the thread's own cache line; leaving one. The ordering a counter's locked instruction gave
// (a call's entry visible before it reads the table or the shut-down flag) is moved to the
// rare side with an asymmetric fence:
//   - the caller: store to its slot, a compiler-only fence, then read the table;
//   - the writer (Register, Deploy, Remove, Shutdown): publish, then a heavy barrier, then read
//     every slot. The heavy barrier is membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), which runs
//     a full memory barrier on every CPU running a thread of this process; where the kernel
//     refuses it (a process forked after registering, for instance), an mprotect of a page of
//     our own that the kernel must shoot down from every such CPU's TLB, which has the same
//     effect (the technique FlushProcessWriteBuffers implementations use on Linux).
// Either a caller's entry is visible to the writer's scan, or the caller's later read sees
// what the writer published before the barrier: the writer and a caller cannot both miss
// each other.
//
// Where the process cannot register for membarrier or map the page, and in ThreadSanitizer
// builds (which cannot model either barrier), slots run symmetric: a caller enters with a
// sequentially consistent exchange on its own slot, the writer publishes and reads with
// sequentially consistent operations. Correct by the C++ memory model alone, and checked by
// ThreadSanitizer; slower (one read-modify-write per call, on the thread's own line).
//
// Slots are claimed per thread on its first call into an executor and found again through a
// one-entry thread-local cache keyed by the executor's serial (never reused, so a new executor
// at a freed address cannot match). A thread that ends gives its slots back for other threads
// to reuse, so their number stays at the peak number of threads that called at once, not the
// number that ever did. An executor destroyed before such a thread ends leaves its slots to be
// freed with the last thread that still holds one.
//
// Thread-safety: Enter and Leave are called by the calling thread only, on the slot Enter
// returned, and Leave in the reverse order of Enter. Count, OldestEpoch and SlotCount are
// thread-safe and may run concurrently with any number of Enter/Leave.
#ifndef FRAMEKIT_DISPATCH_INTERNAL_CALLER_SLOTS_H_
#define FRAMEKIT_DISPATCH_INTERNAL_CALLER_SLOTS_H_

#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>

namespace framekit::dispatch_internal {

class CallerSlots {
 public:
  enum class Mode {
    kAsymmetric,  // plain stores on the callers' path, a heavy barrier on the writer's
    kSymmetric,   // a sequentially consistent exchange per entry, no barrier on the writer's
  };

  // One thread's calls into one executor. Its own cache line: each caller writes its slot at
  // every call.
  struct alignas(64) Slot {
    std::atomic<int> calls{0};            // written by the owning thread only
    std::atomic<std::uint64_t> epoch{0};  // at its outermost entry; owning thread only
    std::atomic<bool> owned{false};       // claimed by a live thread
    bool transient = false;               // claimed for one call only (see Claim)
    Slot* next = nullptr;                 // the registry's list; immutable once published
  };

  // kAsymmetric when the process supports it (see above), kSymmetric otherwise; `mode`
  // kSymmetric forces symmetric slots (tests).
  explicit CallerSlots(Mode mode = Mode::kAsymmetric);
  ~CallerSlots();
  CallerSlots(const CallerSlots&) = delete;
  CallerSlots& operator=(const CallerSlots&) = delete;

  Mode mode() const { return asymmetric_ ? Mode::kAsymmetric : Mode::kSymmetric; }

  // Counts a call of the current thread as inside, in the epoch `epoch` holds now (read
  // inside). Until the matching Leave, a writer's Count and OldestEpoch see it. Returns the slot
  // to pass to Leave. After it returns, the caller may read what a writer published before its
  // next Count or OldestEpoch, with ordinary acquire loads.
  Slot* Enter(const std::atomic<std::uint64_t>& epoch) {
    Slot* slot = hot_.serial == serial_ ? hot_.slot : Claim();
    const int calls = slot->calls.load(std::memory_order_relaxed);
    if (calls == 0) {
      // Release: a writer that reads this epoch may free what this thread's previous call
      // read, so that call's reads must happen before (ThreadSanitizer caught it relaxed).
      slot->epoch.store(epoch.load(std::memory_order_seq_cst), std::memory_order_release);
    }
    if (asymmetric_) {
      slot->calls.store(calls + 1, std::memory_order_release);
      std::atomic_signal_fence(std::memory_order_seq_cst);  // the writer's barrier does the rest
    } else {
      slot->calls.exchange(calls + 1, std::memory_order_seq_cst);
    }
    return slot;
  }

  // The call that Enter returned `slot` for has left: after this, it must not touch what the
  // executor guards.
  static void Leave(Slot* slot) {
    const int calls = slot->calls.load(std::memory_order_relaxed) - 1;
    slot->calls.store(calls, std::memory_order_release);
    if (calls == 0 && slot->transient) [[unlikely]]
      Release(slot);
  }

  // Calls inside, after the heavy barrier: a call that Enter counted before this began, and
  // that has not left, is included. The writer's own stores made before this call (a flag it
  // set, a table it published) are visible to every call not included.
  int Count() const;

  // The oldest epoch a call still inside entered in, after the heavy barrier; the maximum
  // value when none is inside. A table retired in epoch E (published over while epoch held E,
  // then epoch advanced) can be freed when E < OldestEpoch().
  std::uint64_t OldestEpoch() const;

  // Slots ever created for this object (claimed or free): for tests of their reuse.
  int SlotCount() const;

  // The process's heavy barrier: "membarrier", "mprotect" or "none" (slots run symmetric).
  static const char* BarrierName();
  // Tests: makes the heavy barrier the mprotect fallback from now on, where the platform has
  // it (x86-64); returns whether it does. Call before any executor exists.
  static bool UseMprotectBarrierForTesting();

 private:
  struct Registry;
  struct Claims;
  struct Hot {
    std::uint64_t serial = 0;
    Slot* slot = nullptr;
  };

  // The calling thread's slot, claimed on its first call (or its first after a switch to
  // another executor).
  Slot* Claim();
  // Gives a transient slot back when its call leaves.
  static void Release(Slot* slot);
  // The heavy barrier (asymmetric mode only).
  void Barrier() const;

  static thread_local constinit Hot hot_;
  static thread_local Claims claims_;  // the slots the thread holds; touched only by Claim

  const bool asymmetric_;
  const std::uint64_t serial_;
  const std::shared_ptr<Registry> registry_;
};

}  // namespace framekit::dispatch_internal

#endif  // FRAMEKIT_DISPATCH_INTERNAL_CALLER_SLOTS_H_
