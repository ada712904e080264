#include "two_nodes.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "framekit/app/app_context.h"
#include "framekit/base/status_macros.h"
#include "framekit/ctx/caller.h"
#include "framekit/ctx/portable.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/resolvers/frame_resolvers.h"
#include "framekit/rpc/remote.h"
#include "framekit/rpc/server.h"

namespace framekit::host {
namespace {

inline const Key<std::string> kTenantKey{"demo.tenant"};
constexpr char kAToken[] = "node-a-demo-token";
constexpr auto kTimeout = std::chrono::milliseconds(2000);
constexpr auto kShortTimeout = std::chrono::milliseconds(150);

std::shared_ptr<const PortableKeys> DemoPortable() {
  auto portable = std::make_shared<PortableKeys>();
  (void)portable->Add(kTenantKey);
  (void)portable->Add(CallerKey());
  return portable;
}

std::string TraceId(int i) {
  // W3C trace ids: 32 lowercase hex digits.
  std::string hex =
      absl::StrCat(absl::Hex(0x5eed0000u + static_cast<unsigned>(i), absl::kZeroPad8));
  return std::string(24, 'a') + hex;
}

// Node B: "profile" answers after `work` and reports the time it had left.
struct NodeB {
  AppContext app;
  std::unique_ptr<dispatch::FunctionExecutor> executor;
  std::unique_ptr<rpc::Server> server;
  std::atomic<int> saw_remaining{0};
  std::atomic<int> caller_intact{0};
  std::atomic<int> trace_intact{0};
};

absl::Status StartB(NodeB& b) {
  b.app.Seal();
  b.executor = std::make_unique<dispatch::FunctionExecutor>(b.app);
  FRAMEKIT_RETURN_IF_ERROR(b.executor->Register(
      "profile", [&b](const Frame& frame, std::string_view payload, dispatch::Sink& out) {
        // A's calls leave with at most kTimeout: a fresh timeout (B's default is 30 s) would
        // show more. gRPC's deadline arithmetic may gain a few ms on the way.
        if (frame.deadline() &&
            *frame.deadline() - Clock::now() <= kTimeout + std::chrono::milliseconds(50)) {
          b.saw_remaining.fetch_add(1);
        }
        // The payload says what A's frame held ("speed|user|trace"), so that B can check it.
        const std::vector<std::string> parts =
            absl::StrSplit(absl::string_view(payload.data(), payload.size()), '|');
        if (parts.size() != 3) return absl::InvalidArgumentError("want speed|user|trace");
        const CallerContext* caller = CallerOf(frame);
        const std::string* trace = frame.Find(dispatch::TraceIdKey());
        if (caller != nullptr && caller->user_id == parts[1]) b.caller_intact.fetch_add(1);
        if (trace != nullptr && *trace == parts[2]) b.trace_intact.fetch_add(1);
        const auto work =
            parts[0] == "slow" ? std::chrono::milliseconds(400) : std::chrono::milliseconds(1);
        const auto until = Clock::now() + work;
        while (Clock::now() < until && !frame.stop_token().stop_requested()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
        return out.Write(absl::StrCat("profile of ", caller ? caller->user_id : "nobody"));
      }));
  rpc::ServerOptions options;
  options.portable = DemoPortable();
  options.trusted.push_back(
      {.token = kAToken,
       .policy = {.name = "node-a", .accepted_keys = {"demo.tenant"}, .identity = true}});
  FRAMEKIT_ASSIGN_OR_RETURN(b.server, rpc::Server::Start(*b.executor, std::move(options)));
  return absl::OkStatus();
}

// Node A: "profile" is B's, every executor feature applies to it.
struct NodeA {
  AppContext app;
  std::unique_ptr<dispatch::FunctionExecutor> executor;
};

absl::Status StartA(NodeA& a, const std::string& b_target) {
  a.app.Seal();
  a.executor = std::make_unique<dispatch::FunctionExecutor>(a.app);
  FRAMEKIT_ASSIGN_OR_RETURN(
      std::shared_ptr<rpc::RemoteNode> b,
      rpc::RemoteNode::Connect(
          {.target = b_target, .portable = DemoPortable(), .peer_token = kAToken}));
  return a.executor->Register("profile", b->Function("profile"));
}

}  // namespace

bool TwoNodeSummary::ok_all() const {
  const int normal = calls - deadline_calls;
  return ok == normal && caller_intact == calls && trace_intact == calls &&
         crossed == static_cast<std::uint64_t>(calls) && deadline_honoured == deadline_calls &&
         b_saw_remaining == calls && identity_rejected == 1;
}

absl::StatusOr<TwoNodeSummary> RunTwoNodes(int calls) {
  NodeB b;
  FRAMEKIT_RETURN_IF_ERROR(StartB(b));
  const std::string target = absl::StrCat("127.0.0.1:", b.server->port());
  NodeA a;
  FRAMEKIT_RETURN_IF_ERROR(StartA(a, target));

  TwoNodeSummary summary;
  summary.b_port = std::to_string(b.server->port());
  const char* users[] = {"alice", "bob", "carol"};
  const int slow_every = 10;
  for (int i = 0; i < calls; ++i) {
    const bool slow = i % slow_every == slow_every - 1;
    const Frame parent = WithCaller(Frame(), {.user_id = users[i % 3], .tenant_id = "acme"})
                             .With({Pair::Of(kTenantKey, std::string("acme")),
                                    Pair::Of(dispatch::TraceIdKey(), TraceId(i))});
    const auto timeout = slow ? kShortTimeout : kTimeout;
    const auto start = Clock::now();
    const std::string payload =
        absl::StrCat(slow ? "slow" : "fast", "|", users[i % 3], "|", TraceId(i));
    absl::StatusOr<std::string> reply = a.executor->Invoke(
        parent, "profile", payload, {{"timeout_ms", static_cast<std::int64_t>(timeout.count())}});
    ++summary.calls;
    if (slow) {
      ++summary.deadline_calls;
      if (absl::IsDeadlineExceeded(reply.status()) &&
          Clock::now() - start < timeout + std::chrono::milliseconds(100)) {
        ++summary.deadline_honoured;
      }
    } else if (reply.ok() && *reply == absl::StrCat("profile of ", users[i % 3])) {
      ++summary.ok;
    }
  }
  // An untrusted client (no token) claiming to be alice is refused by B.
  FRAMEKIT_ASSIGN_OR_RETURN(
      std::shared_ptr<rpc::RemoteNode> stranger,
      rpc::RemoteNode::Connect({.target = target, .portable = DemoPortable()}));
  dispatch::FunctionExecutor untrusted(a.app);
  FRAMEKIT_RETURN_IF_ERROR(untrusted.Register("profile", stranger->Function("profile")));
  (void)untrusted.Invoke(WithCaller(Frame(), {.user_id = "alice"}), "profile", "fast|alice|-",
                         {{"timeout_ms", std::int64_t{1000}}});
  summary.crossed = b.server->counters().calls;
  summary.identity_rejected = b.server->counters().identity_rejected;
  summary.b_saw_remaining = b.saw_remaining.load();
  summary.caller_intact = b.caller_intact.load();
  summary.trace_intact = b.trace_intact.load();
  return summary;
}

std::string TwoNodeSummaryText(const TwoNodeSummary& s) {
  return absl::StrCat(
      "two nodes on loopback: A's \"profile\" is B's (127.0.0.1:", s.b_port, ")\n",
      "  calls on A                       ", s.calls, "\n", "  answered by B                    ",
      s.ok, " of ", s.calls - s.deadline_calls, "\n", "  calls that crossed to B          ",
      s.crossed, "\n", "  caller intact on B               ", s.caller_intact, "\n",
      "  trace intact on B                ", s.trace_intact, "\n",
      "  B saw A's remaining time         ", s.b_saw_remaining, " of ", s.calls, "\n",
      "  deadline honoured                ", s.deadline_honoured, " of ", s.deadline_calls,
      " (DeadlineExceeded within 100 ms of a ", kShortTimeout.count(), " ms deadline)\n",
      "  untrusted identity refused by B  ", s.identity_rejected, "\n",
      "  result                           ", s.ok_all() ? "OK" : "BROKEN PROMISE", "\n");
}

}  // namespace framekit::host
