#include "worker_pool.h"

#include <system_error>
#include <thread>
#include <utility>

namespace framekit::dispatch_internal {
namespace {

thread_local const WorkerPool* tls_pool = nullptr;

}  // namespace

std::shared_ptr<WorkerPool> WorkerPool::Create(int keep_idle) {
  return std::make_shared<WorkerPool>(keep_idle);
}

WorkerPool::~WorkerPool() {
  // Only threads still stuck in a task can be left (the last reference may be such a thread's
  // own): they run on detached.
  for (auto& [id, thread] : threads_) {
    if (thread.joinable()) thread.detach();
  }
}

std::vector<std::thread> WorkerPool::TakeFinishedLocked() {
  std::vector<std::thread> out;
  for (const std::thread::id id : finished_) {
    const auto it = threads_.find(id);
    if (it == threads_.end()) continue;
    out.push_back(std::move(it->second));
    threads_.erase(it);
  }
  finished_.clear();
  return out;
}

bool WorkerPool::Run(Task task) {
  std::vector<std::thread> finished;
  bool ran = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    finished = TakeFinishedLocked();
    if (stop_) {
      ran = false;
    } else if (static_cast<std::size_t>(idle_) > queue_.size()) {
      queue_.push_back(std::move(task));
      work_cv_.notify_one();
    } else {
      try {
        std::thread thread([self = shared_from_this(), first = std::move(task)]() mutable {
          self->Loop(std::move(first));
        });
        threads_.emplace(thread.get_id(), std::move(thread));
        ++live_;
      } catch (const std::system_error&) {
        ran = false;
      }
    }
  }
  // Ended threads have left Loop: joining them waits only for their last instructions.
  for (std::thread& thread : finished) thread.join();
  return ran;
}

void WorkerPool::Loop(Task first) {
  tls_pool = this;
  // Runs however the thread ends, a handler's pthread_exit (a forced unwind) included.
  struct Exit {
    WorkerPool& pool;
    ~Exit() {
      std::lock_guard<std::mutex> lock(pool.mu_);
      --pool.live_;
      pool.finished_.push_back(std::this_thread::get_id());
      pool.exited_cv_.notify_all();
    }
  } exit{*this};
  std::move(first)();
  first = nullptr;  // what the task holds goes before the thread counts as ended
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_ && idle_ < keep_idle_) {
    ++idle_;
    work_cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    --idle_;
    if (queue_.empty()) return;
    Task task = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    std::move(task)();
    task = nullptr;
    lock.lock();
  }
}

int WorkerPool::Shutdown(Deadline until) {
  const int self = OnWorkerThread() ? 1 : 0;
  std::vector<std::thread> finished;
  int left = 0;
  {
    std::unique_lock<std::mutex> lock(mu_);
    stop_ = true;
    work_cv_.notify_all();
    exited_cv_.wait_until(lock, until, [&] { return live_ <= self; });
    finished = TakeFinishedLocked();
    left = live_ - self;
  }
  for (std::thread& thread : finished) thread.join();
  return left;
}

bool WorkerPool::OnWorkerThread() const { return tls_pool == this; }

}  // namespace framekit::dispatch_internal
