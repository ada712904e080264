// The rpc module's costs, each against a baseline of the same run:
//   BM_RpcUnaryFramekit vs BM_RpcUnaryBareGrpc   one loopback unary call carrying a frame (4
//       portable pairs with a caller, a W3C trace, a deadline, a peer token) through RemoteNode,
//       Server and the executor to preemptive echo Code, vs the same generated stub call (same
//       payload and deadline) to a bare callback service that echoes on gRPC's own thread
//   BM_RpcUnaryBareGrpcFramekitHeaders            the bare call carrying the same header bytes as
//       framekit's (frame header, traceparent, peer token), unread: how much of the gap to the
//       bare call is the payload the issue asks framekit to carry, not framekit's own work
//   BM_RpcUnaryFramekitNativeHandler              as above, the echo a native handler (the
//       executor runs deadline calls of native code on a worker: one more thread handoff)
//   The unary cases also report the whole process's CPU time (all threads: client, gRPC's and
//   the server's) and context switches per call (getrusage), beside the calling thread's CPU.
//   BM_RpcUnaryPaired                             BM_RpcUnaryFramekit's call and
//       BM_RpcUnaryBareGrpc's, alternated call by call in one loop and each timed on its own:
//       framekit/bare with the machine's drift between runs taken out
//   BM_RpcUnaryPairedHeadersOnly                  the same with the call of
//       BM_RpcUnaryBareGrpcFramekitHeaders in framekit's place: headers/bare, the header bytes'
//       share of framekit/bare
//   BM_RpcServerAccept                            the server's own arrival work for one call of
//       BM_RpcUnaryFramekit, without gRPC: the headers that call carries (frame header,
//       traceparent, peer token) made into the call's parent frame (AcceptFrame: peer, policy,
//       the frame header from the server's header cache, trace, deadline) and its cancellation
//       scope, as Server does on gRPC's thread for every call after the first
//   BM_RpcCodec8Pairs                             what the wire adds to a call's frame: encode 8
//       portable string pairs into the header value as RemoteNode does (EncodeFrameHeader) and
//       decode them back as Server does (DecodeFramePairViews + PortableKeys::DecodeView)
//   BM_RpcCodec8PairsCopying                      the same through the copying forms
//       (PortableKeys::Encode + EncodeFramePairs, DecodeFramePairs + PortableKeys::Decode)
#include <grpcpp/grpcpp.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "alloc_counter.h"
#include "benchmark/benchmark.h"
#include "framekit/app/app_context.h"
#include "framekit/ctx/caller.h"
#include "framekit/ctx/portable.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/rpc/internal/accept.h"
#include "framekit/rpc/remote.h"
#include "framekit/rpc/server.h"
#include "framekit/rpc/wire.h"
#include "framekit_rpc.grpc.pb.h"

namespace {

namespace v1 = framekit::rpc::v1;

inline const framekit::Key<std::string> kBenchTenant{"bench.tenant"};
inline const framekit::Key<std::string> kBenchRegion{"bench.region"};
inline const framekit::Key<std::string> kBenchPlan{"bench.plan"};
constexpr char kPayload[] = "0123456789abcdef";
constexpr char kToken[] = "bench-token";

class NullSink : public framekit::dispatch::Sink {
 public:
  absl::Status Write(std::string_view chunk) override {
    benchmark::DoNotOptimize(chunk.data());
    return absl::OkStatus();
  }
};

class PreemptiveEcho : public framekit::dispatch::Code {
 public:
  bool preemptive() const override { return true; }
  absl::Status Run(const framekit::Frame&, std::string_view payload, framekit::dispatch::Sink& out,
                   framekit::dispatch::RunStats&) override {
    return out.Write(payload);
  }
};

// The whole process's CPU time and context switches from construction to Report().
class ProcessScope {
 public:
  ProcessScope() : start_(Now()) {}
  void Report(benchmark::State& state) const {
    const Usage end = Now();
    state.counters["proc_cpu_us/iter"] =
        benchmark::Counter(end.cpu_us - start_.cpu_us, benchmark::Counter::kAvgIterations);
    state.counters["ctxsw/iter"] =
        benchmark::Counter(end.switches - start_.switches, benchmark::Counter::kAvgIterations);
  }

 private:
  struct Usage {
    double cpu_us = 0;
    double switches = 0;
  };
  static Usage Now() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    const auto us = [](const timeval& t) {
      return 1e6 * static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec);
    };
    return {.cpu_us = us(usage.ru_utime) + us(usage.ru_stime),
            .switches = static_cast<double>(usage.ru_nvcsw + usage.ru_nivcsw)};
  }
  Usage start_;
};

std::shared_ptr<const framekit::PortableKeys> BenchPortable() {
  auto portable = std::make_shared<framekit::PortableKeys>();
  (void)portable->Add(kBenchTenant);
  (void)portable->Add(kBenchRegion);
  (void)portable->Add(kBenchPlan);
  (void)portable->Add(framekit::CallerKey());
  return portable;
}

constexpr char kBenchTrace[] = "4bf92f3577b34da6a3ce929d0e0e4736";

// The frame each framekit call carries: a caller, three portable pairs and a W3C trace.
framekit::Frame BenchFrame() {
  return framekit::WithCaller(framekit::Frame(), {.user_id = "alice", .tenant_id = "acme"})
      .With({framekit::Pair::Of(kBenchTenant, std::string("acme")),
             framekit::Pair::Of(kBenchRegion, std::string("eu-west")),
             framekit::Pair::Of(kBenchPlan, std::string("gold")),
             framekit::Pair::Of(framekit::dispatch::TraceIdKey(), std::string(kBenchTrace))});
}

// The ServerOptions of the framekit unary benchmarks: the bench portable keys, one trusted
// peer whose token the client sends.
framekit::rpc::ServerOptions BenchServerOptions() {
  framekit::rpc::ServerOptions options;
  options.portable = BenchPortable();
  options.trusted.push_back(
      {.token = kToken,
       .policy = {.name = "bench",
                  .accepted_keys = {"bench.tenant", "bench.region", "bench.plan"},
                  .identity = true}});
  return options;
}

void BM_RpcServerAccept(benchmark::State& state) {
  const framekit::rpc::ServerOptions options = BenchServerOptions();
  absl::StatusOr<std::string> header = framekit::rpc::EncodeFrameHeader(
      *options.portable, BenchFrame(),
      [](std::string_view name) { return name == framekit::dispatch::TraceIdKey().name(); });
  if (!header.ok()) return state.SkipWithError("frame header");
  const std::string traceparent =
      framekit::rpc::FormatTraceParent(kBenchTrace, "00f067aa0ba902b7", 0x01);
  // What gRPC hands the server: its own user-agent beside framekit's headers.
  const framekit::rpc_internal::MetadataEntry metadata[] = {
      {"user-agent", "grpc-c++/1.51.1 grpc-c/29.0.0 (linux; chttp2)"},
      {framekit::rpc::kFrameHeader, *header},
      {framekit::rpc::kTraceParentHeader, traceparent},
      {framekit::rpc::kPeerTokenHeader, kToken}};
  framekit::rpc_internal::FrameHeaderCache cache;  // the server's: every call after the first
                                                   // finds the header decoded
  framekit::bench::AllocationScope allocations;
  for (auto _ : state) {
    absl::StatusOr<framekit::rpc_internal::Accepted> accepted = framekit::rpc_internal::AcceptFrame(
        options, metadata, std::chrono::seconds(10), {}, &cache);
    if (!accepted.ok()) return state.SkipWithError("accept");
    std::pair<framekit::Frame, framekit::Canceller> call = accepted->frame.WithCancel();
    benchmark::DoNotOptimize(call);
  }
  allocations.Report(state);
}
BENCHMARK(BM_RpcServerAccept);

// A framekit server for the echo function (preemptive Code, or a native handler) and the
// remote Code that calls it.
struct FramekitEcho {
  explicit FramekitEcho(bool native) : executor(app) {
    app.Seal();
    if (native) {
      (void)executor.Register("echo",
                              [](const framekit::Frame&, std::string_view payload,
                                 framekit::dispatch::Sink& out) { return out.Write(payload); });
    } else {
      (void)executor.Register("echo", std::make_shared<PreemptiveEcho>());
    }
    absl::StatusOr<std::unique_ptr<framekit::rpc::Server>> started =
        framekit::rpc::Server::Start(executor, BenchServerOptions());
    if (!started.ok()) return;
    server = *std::move(started);
    absl::StatusOr<std::shared_ptr<framekit::rpc::RemoteNode>> node =
        framekit::rpc::RemoteNode::Connect({.target = "127.0.0.1:" + std::to_string(server->port()),
                                            .portable = BenchPortable(),
                                            .peer_token = kToken});
    if (node.ok()) echo = (*node)->Function("echo");
  }
  // One call under the bench frame with a 10 s deadline.
  bool Call() {
    framekit::dispatch::RunStats stats;
    return echo->Run(frame.WithTimeout(std::chrono::seconds(10)), kPayload, sink, stats).ok();
  }

  framekit::AppContext app;
  framekit::dispatch::FunctionExecutor executor;
  std::unique_ptr<framekit::rpc::Server> server;
  std::shared_ptr<framekit::dispatch::Code> echo;  // null when the server or node failed
  const framekit::Frame frame = BenchFrame();
  NullSink sink;
};

// One call of `unary` per iteration, with the process's CPU and context switches.
template <class Case>
void UnaryCalls(benchmark::State& state, Case& unary) {
  const ProcessScope process;
  for (auto _ : state) {
    if (!unary.Call()) return state.SkipWithError("call failed");
  }
  process.Report(state);
}

void FramekitUnary(benchmark::State& state, bool native) {
  FramekitEcho echo(native);
  if (echo.echo == nullptr) return state.SkipWithError("server or connect");
  UnaryCalls(state, echo);
}

void BM_RpcUnaryFramekit(benchmark::State& state) { FramekitUnary(state, /*native=*/false); }
BENCHMARK(BM_RpcUnaryFramekit)->UseRealTime();

void BM_RpcUnaryFramekitNativeHandler(benchmark::State& state) {
  FramekitUnary(state, /*native=*/true);
}
BENCHMARK(BM_RpcUnaryFramekitNativeHandler)->UseRealTime();

class BareEcho final : public v1::Functions::CallbackService {
  grpc::ServerUnaryReactor* Invoke(grpc::CallbackServerContext* ctx,
                                   const v1::InvokeRequest* request,
                                   v1::InvokeReply* reply) override {
    reply->set_output(request->payload());
    grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }
};

// A bare callback server that echoes on gRPC's own thread, and a generated stub to call it;
// with `headers`, each call also carries the bytes framekit's call carries (the frame header, a
// traceparent with a new span id per call, the peer token; a first hop sends no hop count),
// none of them read.
struct BareServer {
  explicit BareServer(bool with_headers) : headers(with_headers) {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    if (server == nullptr) return;
    stub = v1::Functions::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                      grpc::InsecureChannelCredentials()));
    request.set_function("echo");
    request.set_payload(kPayload);
    if (headers) {
      absl::StatusOr<std::string> encoded = framekit::rpc::EncodeFrameHeader(
          *BenchPortable(), BenchFrame().WithTimeout(std::chrono::seconds(10)),
          [](std::string_view name) { return name == framekit::dispatch::TraceIdKey().name(); });
      if (!encoded.ok()) {
        stub = nullptr;
        return;
      }
      frame_header = *std::move(encoded);
    }
  }
  ~BareServer() {
    if (server != nullptr) server->Shutdown();
  }
  // One call with a 10 s deadline.
  bool Call() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (headers) {
      char span_id[17];
      std::snprintf(span_id, sizeof span_id, "%016llx", static_cast<unsigned long long>(span++));
      ctx.AddMetadata(std::string(framekit::rpc::kFrameHeader), frame_header);
      ctx.AddMetadata(std::string(framekit::rpc::kTraceParentHeader),
                      framekit::rpc::FormatTraceParent(kBenchTrace, span_id, 0x01));
      ctx.AddMetadata(std::string(framekit::rpc::kPeerTokenHeader), kToken);
    }
    v1::InvokeReply reply;
    grpc::Status status = stub->Invoke(&ctx, request, &reply);
    benchmark::DoNotOptimize(reply.output().data());
    return status.ok();
  }
  // The header bytes each call carries beside the bare call's (names and values).
  std::size_t ExtraHeaderBytes() const {
    return framekit::rpc::kFrameHeader.size() + frame_header.size() +
           framekit::rpc::kTraceParentHeader.size() +
           framekit::rpc::FormatTraceParent(kBenchTrace, "0000000000000001", 0x01).size() +
           framekit::rpc::kPeerTokenHeader.size() + sizeof(kToken) - 1;
  }

  const bool headers;
  BareEcho service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<v1::Functions::Stub> stub;  // null when the server failed
  v1::InvokeRequest request;
  std::string frame_header;
  std::uint64_t span = 1;
};

void BareUnary(benchmark::State& state, bool headers) {
  BareServer bare(headers);
  if (bare.stub == nullptr) return state.SkipWithError("server");
  UnaryCalls(state, bare);
  if (headers) state.counters["extra_header_bytes"] = static_cast<double>(bare.ExtraHeaderBytes());
}

void BM_RpcUnaryBareGrpc(benchmark::State& state) { BareUnary(state, /*headers=*/false); }
BENCHMARK(BM_RpcUnaryBareGrpc)->UseRealTime();

void BM_RpcUnaryBareGrpcFramekitHeaders(benchmark::State& state) {
  BareUnary(state, /*headers=*/true);
}
BENCHMARK(BM_RpcUnaryBareGrpcFramekitHeaders)->UseRealTime();

// Two calls alternated call by call in one loop (each iteration is one of each, in alternating
// order), each timed on its own: the machine's drift between benchmark runs, which on a loaded
// host moves a whole run by 10-20 %, reaches both the same way. Reports each call's mean wall
// time (`name`_us, bare_us) and `name`/bare, the ratio of their sums.
template <class Case>
void PairedWithBare(benchmark::State& state, Case& measured, const std::string& name) {
  BareServer bare(/*with_headers=*/false);
  if (bare.stub == nullptr) return state.SkipWithError("bare server");
  using WallClock = std::chrono::steady_clock;
  WallClock::duration measured_time{};
  WallClock::duration bare_time{};
  bool measured_first = false;
  for (auto _ : state) {
    measured_first = !measured_first;
    for (int i = 0; i < 2; ++i) {
      const bool is_measured = (i == 0) == measured_first;
      const WallClock::time_point start = WallClock::now();
      if (!(is_measured ? measured.Call() : bare.Call())) {
        return state.SkipWithError("call failed");
      }
      (is_measured ? measured_time : bare_time) += WallClock::now() - start;
    }
  }
  const auto us = [&](WallClock::duration d) {
    return std::chrono::duration<double, std::micro>(d).count() /
           static_cast<double>(state.iterations());
  };
  state.counters[name + "_us"] = us(measured_time);
  state.counters["bare_us"] = us(bare_time);
  state.counters[name + "/bare"] =
      static_cast<double>(measured_time.count()) / static_cast<double>(bare_time.count());
}

// BM_RpcUnaryFramekit's call against BM_RpcUnaryBareGrpc's.
void BM_RpcUnaryPaired(benchmark::State& state) {
  FramekitEcho framekit_echo(/*native=*/false);
  if (framekit_echo.echo == nullptr) return state.SkipWithError("server or connect");
  PairedWithBare(state, framekit_echo, "framekit");
}
BENCHMARK(BM_RpcUnaryPaired)->UseRealTime();

// BM_RpcUnaryBareGrpcFramekitHeaders's call against BM_RpcUnaryBareGrpc's: the part of
// BM_RpcUnaryPaired's ratio that is the header bytes framekit's call carries.
void BM_RpcUnaryPairedHeadersOnly(benchmark::State& state) {
  BareServer headers(/*with_headers=*/true);
  if (headers.stub == nullptr) return state.SkipWithError("server");
  PairedWithBare(state, headers, "headers");
}
BENCHMARK(BM_RpcUnaryPairedHeadersOnly)->UseRealTime();

// Eight portable string keys and a frame carrying them with a deadline.
struct CodecFixture {
  CodecFixture() {
    for (const auto& key : Keys()) {
      (void)portable.Add(key);
      pairs.push_back(framekit::Pair::Of(key, std::string("value-of-") + std::string(key.name())));
    }
    frame = framekit::Frame().With(pairs).WithTimeout(std::chrono::seconds(10));
  }
  static const framekit::Key<std::string> (&Keys())[8] {
    static const framekit::Key<std::string> keys[8] = {
        framekit::Key<std::string>{"bench.k0"}, framekit::Key<std::string>{"bench.k1"},
        framekit::Key<std::string>{"bench.k2"}, framekit::Key<std::string>{"bench.k3"},
        framekit::Key<std::string>{"bench.k4"}, framekit::Key<std::string>{"bench.k5"},
        framekit::Key<std::string>{"bench.k6"}, framekit::Key<std::string>{"bench.k7"}};
    return keys;
  }
  framekit::PortableKeys portable;
  framekit::PairList pairs;
  framekit::Frame frame;
};

void BM_RpcCodec8Pairs(benchmark::State& state) {
  const CodecFixture fixture;
  framekit::bench::AllocationScope allocations;
  for (auto _ : state) {
    absl::StatusOr<std::string> header = framekit::rpc::EncodeFrameHeader(
        fixture.portable, fixture.frame, [](std::string_view) { return false; });
    absl::StatusOr<framekit::rpc::WirePairViews> wire =
        framekit::rpc::DecodeFramePairViews(*header, fixture.portable.limits());
    absl::StatusOr<framekit::DecodedFrame> back = fixture.portable.DecodeView(
        {.pairs = std::span<const framekit::PortablePairView>(wire->data(), wire->size()),
         .remaining = std::chrono::seconds(10)});
    if (!back.ok() || back->frame.size() != 8) return state.SkipWithError("codec");
    benchmark::DoNotOptimize(back->frame);
  }
  allocations.Report(state);
}
BENCHMARK(BM_RpcCodec8Pairs);

void BM_RpcCodec8PairsCopying(benchmark::State& state) {
  const CodecFixture fixture;
  framekit::bench::AllocationScope allocations;
  for (auto _ : state) {
    absl::StatusOr<framekit::PortableFrame> out = fixture.portable.Encode(fixture.frame);
    const std::string header = framekit::rpc::EncodeFramePairs(out->pairs);
    absl::StatusOr<framekit::rpc::WirePairs> wire =
        framekit::rpc::DecodeFramePairs(header, fixture.portable.limits());
    framekit::PortableFrame in{.pairs = *std::move(wire), .remaining = out->remaining};
    absl::StatusOr<framekit::DecodedFrame> back = fixture.portable.Decode(in);
    if (!back.ok() || back->frame.size() != 8) return state.SkipWithError("codec");
    benchmark::DoNotOptimize(back->frame);
  }
  allocations.Report(state);
}
BENCHMARK(BM_RpcCodec8PairsCopying);

}  // namespace
