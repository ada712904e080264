// WorkerPool: the threads that run FunctionExecutor's deadline calls.
//
// Every task gets a thread at once: an idle one when there is one, a new one otherwise. Nothing
// waits in a queue behind a busy worker, so a handler stuck past its deadline (or a handler
// waiting on a nested call) never delays another call; the executor bounds the number of tasks
// it admits, which bounds the threads. Up to `keep_idle` idle threads are kept for reuse; the
// others exit when their task ends.
//
// Each thread holds the pool by shared_ptr: a thread still stuck in a task when Shutdown gives
// up touches nothing that its owner frees. Threads that have ended are joined (by the next Run,
// and by Shutdown), so that a pool that shut down cleanly leaves no thread behind; a thread
// still stuck when the pool is destroyed is detached.
//
// Thread-safety: thread-safe.
#ifndef FRAMEKIT_DISPATCH_SRC_WORKER_POOL_H_
#define FRAMEKIT_DISPATCH_SRC_WORKER_POOL_H_

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "framekit/ctx/frame.h"

namespace framekit::dispatch_internal {

class WorkerPool : public std::enable_shared_from_this<WorkerPool> {
 public:
  using Task = absl::AnyInvocable<void() &&>;

  static std::shared_ptr<WorkerPool> Create(int keep_idle);

  // Runs `task` on a pool thread. False (and `task` dropped unrun) after Shutdown or when no
  // thread can be started.
  bool Run(Task task);
  // Refuses later tasks, lets idle threads exit and waits until `until` for every thread but
  // the calling one to end. Returns how many are still running: they stay detached.
  int Shutdown(Deadline until);
  // True on a thread of this pool.
  bool OnWorkerThread() const;

  explicit WorkerPool(int keep_idle) : keep_idle_(keep_idle) {}
  ~WorkerPool();

 private:
  void Loop(Task first);
  // Takes the threads that have ended out of threads_, for the caller to join unlocked.
  std::vector<std::thread> TakeFinishedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const int keep_idle_;
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable exited_cv_;
  std::deque<Task> queue_ ABSL_GUARDED_BY(mu_);
  int idle_ ABSL_GUARDED_BY(mu_) = 0;
  int live_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::unordered_map<std::thread::id, std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread::id> finished_ ABSL_GUARDED_BY(mu_);
};

}  // namespace framekit::dispatch_internal

#endif  // FRAMEKIT_DISPATCH_SRC_WORKER_POOL_H_
