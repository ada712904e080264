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

bool WorkerPool::Run(Task task) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stop_) return false;
  if (static_cast<std::size_t>(idle_) > queue_.size()) {
    queue_.push_back(std::move(task));
    work_cv_.notify_one();
    return true;
  }
  try {
    std::thread([self = shared_from_this(), first = std::move(task)]() mutable {
      self->Loop(std::move(first));
    }).detach();
  } catch (const std::system_error&) {
    return false;
  }
  ++live_;
  return true;
}

void WorkerPool::Loop(Task first) {
  tls_pool = this;
  // Runs however the thread ends, a handler's pthread_exit (a forced unwind) included.
  struct Exit {
    WorkerPool& pool;
    ~Exit() {
      std::lock_guard<std::mutex> lock(pool.mu_);
      --pool.live_;
      pool.exited_cv_.notify_all();
    }
  } exit{*this};
  std::move(first)();
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
  std::unique_lock<std::mutex> lock(mu_);
  stop_ = true;
  work_cv_.notify_all();
  exited_cv_.wait_until(lock, until, [&] { return live_ <= self; });
  return live_ - self;
}

bool WorkerPool::OnWorkerThread() const { return tls_pool == this; }

}  // namespace framekit::dispatch_internal
