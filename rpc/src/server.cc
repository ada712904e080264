#include "framekit/rpc/server.h"

#include <grpc/support/cpu.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "boost/container/small_vector.hpp"
#include "framekit/base/status_macros.h"
#include "framekit/rpc/internal/accept.h"
#include "framekit/rpc/internal/tls.h"
#include "framekit/rpc/wire.h"
#include "framekit_rpc.grpc.pb.h"

namespace framekit::rpc {
namespace {

// How often the running inline calls are checked for their close, and how long the watcher
// keeps checking once none runs before it sleeps until the next one starts.
constexpr auto kInlinePoll = std::chrono::milliseconds(2);
constexpr int kIdlePollsBeforeSleep = 100;

// Inline calls running now in this process, over all servers (see ProcessInlineLimit).
std::atomic<int> g_process_inline{0};

grpc::Status ToGrpc(const absl::Status& status) {
  WireStatus wire = ToWireStatus(status);
  return grpc::Status(static_cast<grpc::StatusCode>(wire.code), std::move(wire.message),
                      std::move(wire.details));
}

// The time left before a server call's deadline, nullopt when it has none.
std::optional<Clock::duration> Remaining(const grpc::CallbackServerContext& ctx) {
  const auto deadline = ctx.deadline();
  // gRPC reports "no deadline" as a time far in the future; a year is no deadline either.
  const auto left = deadline - std::chrono::system_clock::now();
  if (left > std::chrono::hours(24 * 365)) return std::nullopt;
  return std::chrono::duration_cast<Clock::duration>(left);
}

// Threads for the calls: gRPC's callback threads must not block, executor calls do. A thread is
// started when none is idle; idle threads stay until Stop. Admission (max_concurrent_calls)
// bounds the number of threads.
class CallThreads {
 public:
  void Submit(absl::AnyInvocable<void() &&> task) {
    std::lock_guard<std::mutex> lock(mu_);
    tasks_.push_back(std::move(task));
    // Each queued task needs a waiting thread of its own: a task never waits behind another.
    if (tasks_.size() > static_cast<std::size_t>(idle_)) {
      threads_.emplace_back([this] { Loop(); });
    } else {
      cv_.notify_one();
    }
  }
  // Runs the queued tasks, then joins every thread.
  void Stop() {
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      threads.swap(threads_);
    }
    cv_.notify_all();
    for (std::thread& t : threads) t.join();
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      while (tasks_.empty() && !stopping_) {
        ++idle_;
        cv_.wait(lock);
        --idle_;
      }
      if (tasks_.empty()) return;  // stopping, and nothing left to run
      absl::AnyInvocable<void()&&> task = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      std::move(task)();
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<absl::AnyInvocable<void() &&>> tasks_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> threads_ ABSL_GUARDED_BY(mu_);
  int idle_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

// A hand-off through gRPC that ThreadSanitizer can see. gRPC orders a call's callbacks (and
// every callback after Server::Start) with synchronisation of its own, invisible to TSan in a
// gRPC not built with it: framekit publishes what it hands over through an atomic of its own
// (Publish, before each hand-off to gRPC) and reads it back on every entry from gRPC (Receive).
// Memory ordering: a release store and an acquire load (plain moves on x86); they add a real
// happens-before edge only where gRPC already orders the two sides.
class HandOff {
 public:
  void Publish() { seq_.store(1, std::memory_order_release); }
  void Receive() const { (void)seq_.load(std::memory_order_acquire); }

 private:
  std::atomic<int> seq_{0};
};

struct Counters {
  std::atomic<std::uint64_t> calls{0};
  std::atomic<std::uint64_t> inline_calls{0};
  std::atomic<std::uint64_t> refused{0};
  std::atomic<std::uint64_t> unauthenticated{0};
  std::atomic<std::uint64_t> identity_rejected{0};
  std::atomic<std::uint64_t> malformed{0};
  std::atomic<std::uint64_t> dropped_pairs{0};
  std::atomic<std::uint64_t> bad_trace{0};
  std::atomic<std::uint64_t> hops_exceeded{0};
};

}  // namespace

struct Server::Impl {
  Impl(dispatch::FunctionExecutor& e, ServerOptions o) : executor(e), options(std::move(o)) {}

  // Admits a call: a slot, then its parent frame with a cancellation scope. On failure the
  // call is refused with the returned status (and holds no slot).
  absl::StatusOr<std::pair<Frame, Canceller>> Admit(const grpc::CallbackServerContext& ctx) {
    if (in_flight.fetch_add(1, std::memory_order_relaxed) >= options.max_concurrent_calls) {
      in_flight.fetch_sub(1, std::memory_order_relaxed);
      counters.refused.fetch_add(1, std::memory_order_relaxed);
      return absl::ResourceExhaustedError(
          absl::StrCat("more than ", options.max_concurrent_calls, " calls at once"));
    }
    // Inline room for what a framekit client sends (gRPC's user-agent beside framekit's four).
    boost::container::small_vector<rpc_internal::MetadataEntry, 8> metadata;
    metadata.reserve(ctx.client_metadata().size());
    for (const auto& [key, value] : ctx.client_metadata()) {
      metadata.emplace_back(std::string_view(key.data(), key.size()),
                            std::string_view(value.data(), value.size()));
    }
    // The identities of a client certificate the handshake verified (mutual TLS only: the
    // auth context costs an allocation per call, and without client_ca_file there is none).
    std::shared_ptr<const grpc::AuthContext> auth;
    boost::container::small_vector<std::string_view, 4> identities;
    if (verifies_clients) {
      auth = ctx.auth_context();
      if (auth != nullptr && auth->IsPeerAuthenticated()) {
        for (const grpc::string_ref& id : auth->GetPeerIdentity()) {
          identities.emplace_back(id.data(), id.size());
        }
      }
    }
    absl::StatusOr<rpc_internal::Accepted> accepted = rpc_internal::AcceptFrame(
        options, std::span<const rpc_internal::MetadataEntry>(metadata.data(), metadata.size()),
        Remaining(ctx), std::span<const std::string_view>(identities.data(), identities.size()),
        &header_cache);
    if (!accepted.ok()) {
      Release();
      Refused(accepted.status());
      return accepted.status();
    }
    counters.calls.fetch_add(1, std::memory_order_relaxed);
    counters.dropped_pairs.fetch_add(accepted->dropped_pairs, std::memory_order_relaxed);
    if (accepted->bad_trace) counters.bad_trace.fetch_add(1, std::memory_order_relaxed);
    return accepted->frame.WithCancel();
  }
  void Release() { in_flight.fetch_sub(1, std::memory_order_relaxed); }
  // The last touch of the service, the hook factory and this Impl by a method handler (or the
  // hook factory): Shutdown's acquire after gRPC's Wait makes all of them visible (to
  // ThreadSanitizer too, which cannot see gRPC's own synchronisation) before they are
  // destroyed. A read-modify-write, so that the acquire synchronises with every release, not
  // only the last one's.
  void CallbackReturns() { handlers_returned.fetch_add(1, std::memory_order_release); }

  // Inline calls: calls that return by their frame's deadline, run on the gRPC thread that
  // delivered them. That is preemptive code, which returns by it itself, and any code under a
  // frame with a deadline (every call a server admits has one, but for a timeout too large to
  // be a deadline): the executor runs native code on one of its workers, and its caller waits
  // for it no longer than the deadline, the frame's cancellation or the executor's shutdown.
  // So a native handler costs one hand-off (gRPC's thread to the executor's worker) instead of
  // two (to a call thread, then to the worker).
  //
  // gRPC calls a reactor's OnCancel only after the method handler returns, so while an inline
  // call runs, its close (the client's cancellation, its deadline, Shutdown) is seen by the
  // watcher thread, which polls the running inline calls' contexts every kInlinePoll
  // (WatchInline).
  // (An interceptor seeing POST_RECV_CLOSE would be immediate, but an interceptor on a call
  // makes gRPC complete every batch of it a second time through its executor thread: one more
  // thread hop for every call; see StartedHookFactory.)
  //
  // An inline call takes a slot of this server (max_inline_calls) and one of the process
  // (ProcessInlineLimit): gRPC runs every callback of the process, of all its servers, on a few
  // threads of its own, and while inline calls hold all of them no callback runs at all, not
  // even the one that records a call's close (so the watcher never sees it).
  bool TakeInlineSlot(std::string_view function, bool has_deadline) {
    if (options.max_inline_calls <= 0) return false;
    if (inline_running.fetch_add(1, std::memory_order_relaxed) >= options.max_inline_calls) {
      inline_running.fetch_sub(1, std::memory_order_relaxed);
      return false;
    }
    if (g_process_inline.fetch_add(1, std::memory_order_relaxed) >= ProcessInlineLimit()) {
      g_process_inline.fetch_sub(1, std::memory_order_relaxed);
      inline_running.fetch_sub(1, std::memory_order_relaxed);
      return false;
    }
    if (!has_deadline && !executor.Preemptive(function)) {
      ReleaseInlineSlot();
      return false;
    }
    return true;
  }
  void ReleaseInlineSlot() {
    g_process_inline.fetch_sub(1, std::memory_order_relaxed);
    inline_running.fetch_sub(1, std::memory_order_relaxed);
  }
  // Makes `canceller` reachable from the call's close: a close seen before this (a call
  // cancelled early) is caught by the IsCancelled check after it.
  void StartInline(grpc::CallbackServerContext* ctx, const Canceller& canceller) {
    {
      std::lock_guard<std::mutex> lock(inline_mu);
      running_inline.emplace(ctx, canceller);
      if (watcher_asleep) {
        watcher_asleep = false;
        inline_cv.notify_one();
      }
    }
    if (ctx->IsCancelled()) canceller.Cancel();
  }
  void EndInline(grpc::CallbackServerContext* ctx) {
    std::lock_guard<std::mutex> lock(inline_mu);
    running_inline.erase(ctx);
  }
  // The watcher thread: cancels each running inline call whose gRPC call is over (cancelled,
  // by the client, its deadline or Shutdown). IsCancelled is thread-safe in the callback API,
  // and a context in the map is alive (EndInline removes it before its handler returns).
  void WatchInline() {
    std::vector<Canceller> closed;
    std::unique_lock<std::mutex> lock(inline_mu);
    int idle_polls = 0;
    while (!watcher_stop) {
      if (running_inline.empty() && idle_polls >= kIdlePollsBeforeSleep) {
        watcher_asleep = true;
        inline_cv.wait(lock, [this] { return watcher_stop || !watcher_asleep; });
        idle_polls = 0;
        continue;
      }
      inline_cv.wait_for(lock, kInlinePoll, [this] { return watcher_stop; });
      if (running_inline.empty()) {
        ++idle_polls;
        continue;
      }
      idle_polls = 0;
      for (auto& [ctx, canceller] : running_inline) {
        if (!canceller.cancelled() && ctx->IsCancelled()) closed.push_back(canceller);
      }
      if (closed.empty()) continue;
      // Cancelled outside the lock: a stop callback may call into gRPC (a chained remote
      // call's TryCancel), and gRPC may run a new call's handler (StartInline) on its way out.
      lock.unlock();
      for (const Canceller& canceller : closed) canceller.Cancel();
      closed.clear();
      lock.lock();
    }
  }
  void StopWatcher() {
    {
      std::lock_guard<std::mutex> lock(inline_mu);
      watcher_stop = true;
    }
    inline_cv.notify_all();
    if (watcher.joinable()) watcher.join();
  }
  void Refused(const absl::Status& status) {
    counters.refused.fetch_add(1, std::memory_order_relaxed);
    switch (status.code()) {
      case absl::StatusCode::kUnauthenticated:
        counters.unauthenticated.fetch_add(1, std::memory_order_relaxed);
        break;
      case absl::StatusCode::kPermissionDenied:
        counters.identity_rejected.fetch_add(1, std::memory_order_relaxed);
        break;
      case absl::StatusCode::kFailedPrecondition:
        counters.hops_exceeded.fetch_add(1, std::memory_order_relaxed);
        break;
      default:
        counters.malformed.fetch_add(1, std::memory_order_relaxed);
    }
  }

  dispatch::FunctionExecutor& executor;
  const ServerOptions options;
  HandOff started;  // published by Start before gRPC runs any callback of this server
  const bool verifies_clients = options.tls.has_value() && !options.tls->client_ca_file.empty();
  std::atomic<int> in_flight{0};
  rpc_internal::FrameHeaderCache header_cache;  // the frame headers decoded lately
  std::atomic<std::uint64_t> handlers_returned{0};
  std::atomic<int> inline_running{0};
  std::mutex inline_mu;
  std::condition_variable inline_cv;
  absl::flat_hash_map<grpc::CallbackServerContext*, Canceller> running_inline
      ABSL_GUARDED_BY(inline_mu);
  bool watcher_asleep ABSL_GUARDED_BY(inline_mu) = false;
  bool watcher_stop ABSL_GUARDED_BY(inline_mu) = false;
  std::thread watcher;  // WatchInline, while max_inline_calls > 0
  Counters counters;
  CallThreads threads;
  std::unique_ptr<v1::Functions::CallbackService> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::once_flag shutdown_once;
};

namespace {

using Impl = Server::Impl;

// Invokes a unary call's function; the call no longer holds its slot once this returns.
grpc::Status InvokeUnary(Impl& impl, const Frame& frame, const v1::InvokeRequest& request,
                         v1::InvokeReply& reply) {
  absl::StatusOr<std::string> out =
      impl.executor.Invoke(frame, request.function(), request.payload());
  impl.Release();
  if (!out.ok()) return ToGrpc(out.status());
  reply.set_output(*std::move(out));
  return grpc::Status::OK;
}

// A unary Invoke handed to a call thread: finishes the reactor as its last act, and cancels the
// frame's scope when the call is cancelled (OnCancel) while it runs there.
class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(Impl& impl, std::pair<Frame, Canceller> admitted, const v1::InvokeRequest* request,
            v1::InvokeReply* reply)
      : canceller_(std::move(admitted.second)) {
    handoff_.Publish();
    impl.threads.Submit([this, &impl, frame = std::move(admitted.first), request, reply] {
      grpc::Status status = InvokeUnary(impl, frame, *request, *reply);
      handoff_.Publish();
      Finish(std::move(status));
    });
  }
  void OnCancel() override {
    handoff_.Receive();
    canceller_.Cancel();
  }
  void OnDone() override {
    handoff_.Receive();
    delete this;
  }

 private:
  const Canceller canceller_;  // set before any callback can run
  HandOff handoff_;
};

// Whether this build registers StartedHookFactory: ThreadSanitizer builds only.
#if defined(__SANITIZE_THREAD__)
constexpr bool kStartedHook = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
constexpr bool kStartedHook = true;
#else
constexpr bool kStartedHook = false;
#endif
#else
constexpr bool kStartedHook = false;
#endif

// Creates no interceptor. gRPC calls the factory at the start of every call, on the thread that
// then runs the method's handler, before it reads the service's handlers (std::function members
// of the generated service, written by Start): the factory's receive shows ThreadSanitizer that
// Start happened before (see HandOff). Registered in ThreadSanitizer builds only: with any
// interceptor factory registered, even one that never creates an interceptor, gRPC 1.51 runs
// each call's handler and completions through its executor thread (one more thread hop per
// call, and ~18 more allocations). gRPC orders Start before the handlers by itself; only
// ThreadSanitizer, which cannot see gRPC's synchronisation, needs the hook.
class StartedHookFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
  HandOff started_;  // its own fields, to gRPC's threads

 public:
  explicit StartedHookFactory(Impl& impl) : impl_(impl) { started_.Publish(); }
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo*) override {
    started_.Receive();
    impl_.started.Receive();
    impl_.CallbackReturns();
    return nullptr;
  }

 private:
  Impl& impl_;
};

// One streaming Invoke: the executor writes chunks through this Sink, one write at a time.
class StreamCall final : public grpc::ServerWriteReactor<v1::Chunk>, public dispatch::Sink {
 public:
  StreamCall(Impl& impl, grpc::CallbackServerContext* ctx, const v1::InvokeRequest* request)
      : ctx_(ctx) {
    absl::StatusOr<std::pair<Frame, Canceller>> admitted = impl.Admit(*ctx);
    if (!admitted.ok()) {
      handoff_.Publish();
      Finish(ToGrpc(admitted.status()));
      return;
    }
    canceller_ = admitted->second;
    handoff_.Publish();
    impl.threads.Submit([this, &impl, frame = std::move(admitted->first), request] {
      absl::Status status =
          impl.executor.InvokeStream(frame, request->function(), request->payload(), {}, *this);
      impl.Release();
      Close();
      grpc::Status wire = ToGrpc(status);
      handoff_.Publish();
      Finish(std::move(wire));
    });
  }

  absl::Status Write(std::string_view chunk) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_ || failed_) return absl::CancelledError("the call's stream is closed");
      writing_ = true;
      message_.set_data(std::string(chunk));
    }
    handoff_.Publish();
    StartWrite(&message_);  // not under mu_: gRPC may run OnWriteDone on this thread
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return !writing_; });
    if (failed_) return absl::CancelledError("the client went away");
    return absl::OkStatus();
  }

  void OnWriteDone(bool ok) override {
    handoff_.Receive();
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) failed_ = true;
    cv_.notify_all();
  }
  void OnCancel() override {
    handoff_.Receive();
    canceller_.Cancel();
  }
  void OnDone() override {
    handoff_.Receive();
    delete this;
  }

 private:
  // No write starts after Close; one in flight is ended (the call cancelled) and waited for, so
  // that Finish never races a write.
  void Close() {
    std::unique_lock<std::mutex> lock(mu_);
    closed_ = true;
    if (writing_) {
      ctx_->TryCancel();
      cv_.wait(lock, [this] { return !writing_; });
    }
  }

  grpc::CallbackServerContext* const ctx_;
  Canceller canceller_;
  HandOff handoff_;
  std::mutex mu_;
  std::condition_variable cv_;
  v1::Chunk message_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

class Service final : public v1::Functions::CallbackService {
 public:
  explicit Service(Impl& impl) : impl_(impl) { started_.Publish(); }

  grpc::ServerUnaryReactor* Invoke(grpc::CallbackServerContext* ctx,
                                   const v1::InvokeRequest* request,
                                   v1::InvokeReply* reply) override {
    started_.Receive();
    impl_.started.Receive();
    absl::StatusOr<std::pair<Frame, Canceller>> admitted = impl_.Admit(*ctx);
    if (admitted.ok() &&
        !impl_.TakeInlineSlot(request->function(), admitted->first.deadline().has_value())) {
      grpc::ServerUnaryReactor* call = new UnaryCall(impl_, *std::move(admitted), request, reply);
      impl_.CallbackReturns();
      return call;
    }
    // A refused call, and an inline call, finish before this returns, through the context's
    // default reactor: its reactions are gRPC's own and run where the call completes. A reactor
    // of ours would have gRPC run its OnDone on gRPC's executor thread (reactions of user
    // reactors are never run inline): one more thread hop for every call.
    grpc::Status status;
    if (!admitted.ok()) {
      status = ToGrpc(admitted.status());
    } else {
      // The call returns by the frame's deadline (and at its cancellation): it runs here,
      // without a hand-off to a call thread (see TakeInlineSlot). Its close reaches it through
      // the watcher (see StartInline).
      impl_.counters.inline_calls.fetch_add(1, std::memory_order_relaxed);
      impl_.StartInline(ctx, admitted->second);
      status = InvokeUnary(impl_, admitted->first, *request, *reply);
      impl_.EndInline(ctx);
      impl_.ReleaseInlineSlot();
    }
    impl_.CallbackReturns();
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(std::move(status));
    return reactor;
  }
  grpc::ServerWriteReactor<v1::Chunk>* InvokeStream(grpc::CallbackServerContext* ctx,
                                                    const v1::InvokeRequest* request) override {
    started_.Receive();
    impl_.started.Receive();
    grpc::ServerWriteReactor<v1::Chunk>* call = new StreamCall(impl_, ctx, request);
    impl_.CallbackReturns();
    return call;
  }
  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* ctx, const v1::ListRequest*,
                                 v1::ListReply* reply) override {
    started_.Receive();
    impl_.started.Receive();
    // The same arrival as a call's (peer token, frame header, hop count, a slot), refused and
    // counted the same way: the names are the node's to show only to whom it serves.
    absl::StatusOr<std::pair<Frame, Canceller>> admitted = impl_.Admit(*ctx);
    grpc::Status status;
    if (admitted.ok()) {
      for (std::string& name : impl_.executor.List()) reply->add_functions(std::move(name));
      impl_.Release();
    } else {
      status = ToGrpc(admitted.status());
    }
    impl_.CallbackReturns();
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(std::move(status));
    return reactor;
  }

 private:
  HandOff started_;  // its own fields, to gRPC's threads
  Impl& impl_;
};

absl::Status CheckTrusted(const ServerOptions& options) {
  const bool verifies_clients = options.tls.has_value() && !options.tls->client_ca_file.empty();
  absl::flat_hash_set<std::string> tokens;
  absl::flat_hash_set<std::string> identities;  // of the peers without a token
  for (const TrustedPeer& peer : options.trusted) {
    const std::string who = absl::StrCat("trusted peer \"", peer.policy.name, "\"");
    if (peer.token.empty() && peer.certificate_identity.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, " has neither a token nor a certificate identity"));
    }
    if (!peer.token.empty() && !IsPeerToken(peer.token)) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, " has a token that is not 1-1024 printable ASCII characters (a gRPC header value)"));
    }
    if (!peer.token.empty() && !tokens.insert(peer.token).second) {
      return absl::InvalidArgumentError(absl::StrCat(who, " repeats another's token"));
    }
    if (peer.certificate_identity.empty()) continue;
    if (!verifies_clients) {
      return absl::InvalidArgumentError(
          absl::StrCat(who,
                       " names a certificate identity, but the server verifies no client "
                       "certificates (tls.client_ca_file is not set)"));
    }
    if (peer.token.empty() && !identities.insert(peer.certificate_identity).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(who, " repeats another's certificate identity without a token"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckOptions(const ServerOptions& options) {
  if (options.anonymous.identity) {
    return absl::InvalidArgumentError("the anonymous policy may not allow identity");
  }
  FRAMEKIT_RETURN_IF_ERROR(CheckTrusted(options));
  if (options.default_timeout <= std::chrono::milliseconds::zero()) {
    return absl::InvalidArgumentError("default_timeout must be > 0");
  }
  if (options.max_inline_calls < 0) {
    return absl::InvalidArgumentError("max_inline_calls must be >= 0");
  }
  if (options.max_concurrent_calls <= 0) {
    return absl::InvalidArgumentError("max_concurrent_calls must be > 0");
  }
  if (options.max_message_bytes <= 0) {
    return absl::InvalidArgumentError("max_message_bytes must be > 0");
  }
  if (options.max_hops <= 0) return absl::InvalidArgumentError("max_hops must be > 0");
  return absl::OkStatus();
}

// The port's credentials: plaintext, or TLS from the checked PEM files of `options.tls`.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials(const ServerOptions& options) {
  if (!options.tls.has_value()) return grpc::InsecureServerCredentials();
  const ServerTls& tls = *options.tls;
  FRAMEKIT_ASSIGN_OR_RETURN(std::string chain,
                            rpc_internal::ReadPemFile("tls.cert_chain_file", tls.cert_chain_file));
  FRAMEKIT_ASSIGN_OR_RETURN(
      std::string key, rpc_internal::ReadPemFile("tls.private_key_file", tls.private_key_file));
  FRAMEKIT_RETURN_IF_ERROR(
      rpc_internal::CheckKeyPair("tls.cert_chain_file", chain, "tls.private_key_file", key));
  grpc_ssl_client_certificate_request_type request = GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  std::string client_ca;
  if (!tls.client_ca_file.empty()) {
    FRAMEKIT_ASSIGN_OR_RETURN(client_ca,
                              rpc_internal::ReadPemFile("tls.client_ca_file", tls.client_ca_file));
    FRAMEKIT_RETURN_IF_ERROR(rpc_internal::CheckCertificates("tls.client_ca_file", client_ca));
    // Only the verifying modes: an identity read from an unverified certificate is anyone's.
    request = tls.require_client_certificate
                  ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                  : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  grpc::SslServerCredentialsOptions ssl(request);
  ssl.pem_root_certs = std::move(client_ca);
  ssl.pem_key_cert_pairs.push_back({.private_key = std::move(key), .cert_chain = std::move(chain)});
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(dispatch::FunctionExecutor& executor,
                                                      ServerOptions options) {
  if (absl::Status s = CheckOptions(options); !s.ok()) return s;
  FRAMEKIT_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                            Credentials(options));
  auto impl = std::make_unique<Impl>(executor, std::move(options));
  impl->service = std::make_unique<Service>(*impl);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(impl->options.address, std::move(credentials), &impl->port);
  builder.RegisterService(impl->service.get());
  builder.SetMaxReceiveMessageSize(impl->options.max_message_bytes);
  // The port is this server's alone: gRPC would set SO_REUSEPORT, and another server (of this
  // process, or any process of the same user) could then bind the same port and receive a
  // share of the connections, with the peer tokens and frames they carry.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  if (kStartedHook) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
    creators.push_back(std::make_unique<StartedHookFactory>(*impl));
    builder.experimental().SetInterceptorCreators(std::move(creators));
  }
  impl->started.Publish();
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || impl->port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on \"", impl->options.address, "\""));
  }
  if (impl->options.max_inline_calls > 0) {
    Impl* watched = impl.get();
    impl->watcher = std::thread([watched] { watched->WatchInline(); });
  }
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int ProcessInlineLimit() {
  // gRPC 1.51 (with its epoll1 poller) runs the callback API's events of the whole process on
  // clamp(cores / 2, 2, 16) threads ("nexting" threads); inline calls leave one of them free.
  static const int limit = static_cast<int>(std::clamp(gpr_cpu_num_cores() / 2, 2u, 16u)) - 1;
  return limit;
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() { Shutdown(); }

int Server::port() const { return impl_->port; }

void Server::Shutdown(std::chrono::milliseconds grace) {
  std::call_once(impl_->shutdown_once, [&] {
    // After `grace` gRPC cancels the calls still running: their frames' scopes are cancelled,
    // the executor returns, and the call threads finish them; Shutdown returns when all are done.
    impl_->server->Shutdown(std::chrono::system_clock::now() + grace);
    impl_->server->Wait();
    (void)impl_->handlers_returned.load(std::memory_order_acquire);
    // No inline call runs any more (the watcher saw them through Shutdown's cancellation); the
    // watcher's join and its lock make gRPC's threads' last use of the map visible (to
    // ThreadSanitizer too) before the map is destroyed.
    impl_->StopWatcher();
    impl_->threads.Stop();
  });
}

ServerCounters Server::counters() const {
  const Counters& c = impl_->counters;
  return {.calls = c.calls.load(std::memory_order_relaxed),
          .inline_calls = c.inline_calls.load(std::memory_order_relaxed),
          .refused = c.refused.load(std::memory_order_relaxed),
          .unauthenticated = c.unauthenticated.load(std::memory_order_relaxed),
          .identity_rejected = c.identity_rejected.load(std::memory_order_relaxed),
          .malformed = c.malformed.load(std::memory_order_relaxed),
          .dropped_pairs = c.dropped_pairs.load(std::memory_order_relaxed),
          .bad_trace = c.bad_trace.load(std::memory_order_relaxed),
          .hops_exceeded = c.hops_exceeded.load(std::memory_order_relaxed),
          .running = static_cast<std::uint64_t>(
              std::max(0, impl_->in_flight.load(std::memory_order_relaxed)))};
}

}  // namespace framekit::rpc
