#include "host.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <latch>
#include <mutex>
#include <stop_token>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "framekit/base/status_macros.h"
#include "framekit/framekit.h"
#include "framekit/net/testing/loopback.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace framekit::host {
namespace {

using Millis = std::chrono::duration<double, std::milli>;

// The host's own frame option: the tenant label, from the caller's identity.
const Key<std::string> kTenantLabel{"host.tenant"};
constexpr int kTenantOrder = 300;

// What one workload call saw.
struct CallResult {
  int function = 0;
  absl::StatusCode code = absl::StatusCode::kOk;
  bool panic = false;
  double ms = 0;
  std::string expected_network;  // fetch only
  std::string network;           // fetch only: from the handler's frame
  std::string source;            // fetch only: what the echo server saw
  std::string expected_tenant;   // the caller's tenant
  std::string tenant;            // a Lua fetch's output: the tenant its frame carried
  bool output_ok = true;
  std::string error;
};

// Records a violation in `summary`; only the first 50 are kept.
void AddViolation(Summary& summary, std::string text) {
  if (summary.violations.size() < 50) summary.violations.push_back(std::move(text));
}

// Parses a fetch's output, "network=N source=S" (native) or "network=N source=S tenant=T" (Lua).
bool ParseFetchOutput(std::string_view output, bool with_tenant, CallResult& r) {
  std::vector<absl::string_view> fields =
      absl::StrSplit(absl::string_view(output.data(), output.size()), ' ');
  if (fields.size() != (with_tenant ? 3u : 2u)) return false;
  if (!absl::ConsumePrefix(&fields[0], "network=") || !absl::ConsumePrefix(&fields[1], "source=")) {
    return false;
  }
  r.network = std::string(fields[0]);
  r.source = std::string(fields[1]);
  if (!with_tenant) return true;
  if (!absl::ConsumePrefix(&fields[2], "tenant=")) return false;
  r.tenant = std::string(fields[2]);
  return true;
}

double Percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const std::size_t index =
      std::min(values.size() - 1, static_cast<std::size_t>(p * static_cast<double>(values.size())));
  return values[index];
}

}  // namespace

struct Host::State {
  HostConfig config;
  std::unique_ptr<net::loopback::PeerEchoServer> echo;
  std::vector<std::unique_ptr<net::loopback::Socks5Proxy>> proxies;
  std::vector<std::string> notes;
  std::shared_ptr<spdlog::logger> logger;

  AppContext app;
  std::shared_ptr<const net::NetworkRegistry> networks;
  std::unique_ptr<dispatch::FaultMonitor> monitor;
  std::unique_ptr<dispatch::FunctionExecutor> executor;
  std::unique_ptr<dispatch::ProcessManager> processes;

  struct FunctionState {
    std::atomic<std::uint64_t> calls{0};
    std::atomic<std::uint64_t> injected{0};
    // What the function's code reported for every call (RunStats, through StatsTap).
    std::atomic<std::uint64_t> peak_memory{0};  // the largest of any call
    std::atomic<std::uint64_t> host_calls{0};   // over every call
  };
  struct ProcessState {
    dispatch::Pid pid = 0;
    std::atomic<std::uint64_t> polls{0};
    std::atomic<std::uint64_t> ticks{0};
    std::atomic<std::uint64_t> injected{0};
  };

  // Wraps a function's code to add up the RunStats of every call (the executor's records keep
  // only the newest ones); the executor sees the wrapped code's preemptive() unchanged.
  class StatsTap final : public dispatch::Code {
   public:
    StatsTap(std::shared_ptr<dispatch::Code> code, FunctionState* counters)
        : code_(std::move(code)), counters_(counters) {}
    bool preemptive() const override { return code_->preemptive(); }
    absl::Status Run(const Frame& frame, std::string_view payload, dispatch::Sink& out,
                     dispatch::RunStats& stats) override {
      absl::Status status = code_->Run(frame, payload, out, stats);
      counters_->host_calls.fetch_add(stats.host_calls, std::memory_order_relaxed);
      std::uint64_t peak = counters_->peak_memory.load(std::memory_order_relaxed);
      while (stats.peak_memory_bytes > peak &&
             !counters_->peak_memory.compare_exchange_weak(peak, stats.peak_memory_bytes,
                                                           std::memory_order_relaxed)) {
      }
      return status;
    }

   private:
    const std::shared_ptr<dispatch::Code> code_;
    FunctionState* const counters_;
  };

  // The frame keys scripts may read, and the host functions of the Lua functions.
  std::shared_ptr<const PortableKeys> portable;
  std::shared_ptr<const lua::LuaHost> lua_functions_host;
  std::vector<std::unique_ptr<FunctionState>> function_states;
  std::vector<std::unique_ptr<ProcessState>> process_states;
  std::atomic<int> tenant_mismatches{0};

  ~State() {
    // Processes and calls reference everything above; stop them first.
    if (processes != nullptr) processes->Shutdown();
    processes.reset();
    executor.reset();
  }

  // Host::Run's steps, in order.
  std::vector<int> Schedule() const;
  CallResult Call(int i, const std::vector<int>& schedule);
  void RunCalls(const std::vector<int>& schedule, std::vector<std::vector<CallResult>>& per_thread,
                const std::function<void(int done, int total)>& progress);
  void DescribeWorkload(Summary& summary) const;
  void CheckCalls(const std::vector<std::vector<CallResult>>& per_thread, Summary& summary,
                  std::vector<std::vector<double>>& latencies);
  void CheckLuaCall(const FunctionConfig& f, const FunctionSummary& fs, const CallResult& r,
                    Summary& summary) const;
  void CheckLuaStats(const FunctionSummary& fs, Summary& summary) const;
  void CheckFunctions(Summary& summary, const std::vector<std::vector<double>>& latencies);
  void StopProcesses(Summary& summary);

  // Host::Start's steps, in order.
  void LaunchProxies();
  absl::Status Boot();
  absl::Status StartDispatch();

  // Checks that the host's resolver reached the handler: the tenant label equals the caller's.
  void CheckTenant(const Frame& frame) {
    const std::string* label = frame.Find(kTenantLabel);
    const CallerContext* caller = CallerOf(frame);
    if (label == nullptr || caller == nullptr || *label != caller->tenant_id) ++tenant_mismatches;
  }

  // Dials the echo server on `frame`'s network and returns the source address it saw.
  absl::StatusOr<std::string> FetchEcho(const Frame& frame) const {
    absl::StatusOr<net::Connection> conn =
        net::Dial(frame, *networks, "127.0.0.1", echo->port(), std::chrono::seconds(2));
    if (!conn.ok()) return conn.status();
    std::string seen;
    while (true) {
      absl::StatusOr<std::string> chunk = conn->Read(64, std::chrono::seconds(2));
      if (!chunk.ok()) return chunk.status();
      if (chunk->empty()) break;
      seen += *chunk;
    }
    if (!seen.empty() && seen.back() == '\n') seen.pop_back();
    return seen;
  }

  dispatch::Handler MakeHandler(std::size_t index) {
    const FunctionConfig& f = config.functions[index];
    FunctionState* counters = function_states[index].get();
    if (f.handler == "echo") {
      return [this](const Frame& frame, std::string_view payload, dispatch::Sink& out) {
        CheckTenant(frame);
        return out.Write(payload);
      };
    }
    if (f.handler == "fetch") {
      return [this](const Frame& frame, std::string_view, dispatch::Sink& out) -> absl::Status {
        CheckTenant(frame);
        const std::string* network = frame.Find(net::NetworkKey());
        absl::StatusOr<std::string> seen = FetchEcho(frame);
        if (!seen.ok()) return seen.status();
        return out.Write(
            absl::StrCat("network=", network == nullptr ? "" : *network, " source=", *seen));
      };
    }
    if (f.handler == "slow") {
      return [this, sleep = f.sleep](const Frame& frame, std::string_view,
                                     dispatch::Sink&) -> absl::Status {
        CheckTenant(frame);
        // Runs past its deadline unless told to stop; honours the frame's stop token.
        std::mutex mu;
        std::condition_variable_any cv;
        std::unique_lock<std::mutex> lock(mu);
        std::stop_token token = frame.stop_token();
        if (cv.wait_for(lock, token, sleep, [] { return false; }), token.stop_requested()) {
          return absl::CancelledError("slow: stopped");
        }
        return absl::OkStatus();
      };
    }
    // faulty
    return [this, counters, every = f.fault_every, name = f.name](
               const Frame& frame, std::string_view, dispatch::Sink& out) -> absl::Status {
      CheckTenant(frame);
      const std::uint64_t n = counters->calls.fetch_add(1) + 1;
      if (n % static_cast<std::uint64_t>(every) == 0) {
        counters->injected.fetch_add(1);
        throw std::runtime_error(absl::StrCat(name, ": injected fault on call ", n));
      }
      return out.Write("ok");
    };
  }

  // Scripts read the tenant label, the network and the caller; host.fetch() dials the echo
  // server on the script's own call frame, so through the route the overlay chose for the call.
  absl::Status MakeLuaHost() {
    PortableKeys keys;
    FRAMEKIT_RETURN_IF_ERROR(keys.Add(kTenantLabel));
    FRAMEKIT_RETURN_IF_ERROR(keys.Add(net::NetworkKey()));
    FRAMEKIT_RETURN_IF_ERROR(keys.Add(CallerKey()));
    portable = std::make_shared<const PortableKeys>(std::move(keys));
    auto host = std::make_shared<lua::LuaHost>(lua::LuaHostOptions{
        .name = "host.lua", .portable = portable, .logger = logger, .monitor = monitor.get()});
    FRAMEKIT_RETURN_IF_ERROR(
        host->AddFunction("fetch", [this](const Frame& frame) -> absl::StatusOr<std::string> {
          CheckTenant(frame);
          return FetchEcho(frame);
        }));
    lua_functions_host = std::move(host);
    return absl::OkStatus();
  }

  absl::StatusOr<std::shared_ptr<dispatch::Code>> MakeLuaFunction(std::size_t index) {
    const FunctionConfig& f = config.functions[index];
    lua::LuaLimits limits;
    if (f.memory_bytes > 0) limits.memory_bytes = f.memory_bytes;
    if (f.timeout.count() > 0) limits.timeout = f.timeout;
    absl::StatusOr<std::shared_ptr<lua::LuaFunction>> fn = lua::LuaFunction::Compile(
        absl::StrCat(f.name, ".lua"), f.source, limits, lua_functions_host);
    if (!fn.ok()) return fn.status();
    return std::make_shared<StatsTap>(*std::move(fn), function_states[index].get());
  }

  // A Lua process: the manager's step budget and fault policy apply to it as to any process; its
  // host.tick() and host.injecting() count into the process's own counters.
  absl::StatusOr<dispatch::ProcessSpec> MakeLuaProcess(std::size_t index) {
    const ProcessConfig& p = config.processes[index];
    ProcessState* counters = process_states[index].get();
    auto host = std::make_shared<lua::LuaHost>(lua::LuaHostOptions{
        .name = p.name, .portable = portable, .logger = logger, .monitor = monitor.get()});
    FRAMEKIT_RETURN_IF_ERROR(host->AddFunction("tick", [counters] {
      counters->polls.fetch_add(1);
      counters->ticks.fetch_add(1);
    }));
    FRAMEKIT_RETURN_IF_ERROR(host->AddFunction("injecting", [counters] {
      counters->polls.fetch_add(1);
      counters->injected.fetch_add(1);
    }));
    lua::LuaProcessLimits limits;
    if (p.step.count() > 0) limits.step_timeout = p.step;
    absl::StatusOr<dispatch::ProcessSpec> spec =
        lua::LuaProcessSpec(p.name, p.source, limits, std::move(host));
    if (!spec.ok()) return spec.status();
    spec->idle_interval = p.interval;
    spec->poll_faults = {.max_faults = 50,
                         .window = std::chrono::seconds(1),
                         .on_trip = dispatch::FaultVerdict::kEvict};
    return spec;
  }

  dispatch::ProcessSpec MakeProcess(std::size_t index) {
    const ProcessConfig& p = config.processes[index];
    ProcessState* counters = process_states[index].get();
    dispatch::ProcessSpec spec;
    spec.name = p.name;
    spec.idle_interval = p.interval;
    // A poller that faults now and then keeps running; a flood of faults would stop it.
    spec.poll_faults = {.max_faults = 50,
                        .window = std::chrono::seconds(1),
                        .on_trip = dispatch::FaultVerdict::kEvict};
    spec.setup = [this](dispatch::ProcessContext& context) {
      CheckTenant(context.frame());
      return absl::OkStatus();
    };
    spec.poll = [counters, every = p.fault_every, name = p.name](dispatch::ProcessContext&) {
      const std::uint64_t n = counters->polls.fetch_add(1) + 1;
      if (every > 0 && n % static_cast<std::uint64_t>(every) == 0) {
        counters->injected.fetch_add(1);
        throw std::runtime_error(absl::StrCat(name, ": injected poll fault ", n));
      }
      counters->ticks.fetch_add(1);
      return dispatch::Step::kIdle;
    };
    return spec;
  }
};

Host::Host(std::unique_ptr<State> state) : state_(std::move(state)) {}
Host::~Host() = default;

const std::vector<std::string>& Host::notes() const { return state_->notes; }

// Start's first step: launches the proxies; a missing microsocks drops its network (and says
// so), with the functions that default to it.
void Host::State::LaunchProxies() {
  HostConfig& cfg = config;
  for (const LaunchedProxy& launched : cfg.launched_proxies) {
    auto network = std::find_if(cfg.networks.networks.begin(), cfg.networks.networks.end(),
                                [&](const net::Network& n) { return n.id == launched.network_id; });
    absl::StatusOr<std::unique_ptr<net::loopback::Socks5Proxy>> proxy =
        net::loopback::Socks5Proxy::Start({.bind_address = launched.egress,
                                           .username = network->username,
                                           .password = network->password});
    if (proxy.ok()) {
      network->proxy_port = (*proxy)->port();
      proxies.push_back(*std::move(proxy));
      continue;
    }
    notes.push_back(absl::StrCat("network \"", launched.network_id, "\" is not available: ",
                                 proxy.status().message(), "; running without it"));
    cfg.networks.networks.erase(network);
    auto& fetch = cfg.workload.fetch_networks;
    fetch.erase(std::remove(fetch.begin(), fetch.end(), launched.network_id), fetch.end());
    if (cfg.networks.app_default == launched.network_id) {
      cfg.networks.app_default =
          cfg.networks.networks.empty() ? "" : cfg.networks.networks.front().id;
      notes.push_back(
          absl::StrCat("the app default network is now \"", cfg.networks.app_default, "\""));
    }
    // Functions that default to the missing network leave the workload.
    for (const FunctionConfig& f : cfg.functions) {
      if (f.defaults.GetString("network") != launched.network_id) continue;
      auto& mix = cfg.workload.mix;
      mix.erase(
          std::remove_if(mix.begin(), mix.end(), [&](const auto& m) { return m.first == f.name; }),
          mix.end());
      notes.push_back(absl::StrCat("function \"", f.name, "\" leaves the workload"));
    }
  }
}

// Start's boot step: the registry, the network overlay, and the host's own tenant resolver.
absl::Status Host::State::Boot() {
  const HostConfig& cfg = config;
  BootSequence boot;
  FRAMEKIT_RETURN_IF_ERROR(boot.Add({"resolvers", {}, [](AppContext& app) -> absl::Status {
                                       auto resolvers = std::make_shared<FrameResolvers>();
                                       FRAMEKIT_RETURN_IF_ERROR(
                                           net::RegisterNetworkClaim(*resolvers));
                                       return app.SetFrameResolvers(resolvers);
                                     }}));
  FRAMEKIT_RETURN_IF_ERROR(boot.Add(net::NetworkComponent(cfg.networks, {"resolvers"})));
  FRAMEKIT_RETURN_IF_ERROR(
      boot.Add({"tenant", {"resolvers"}, [](AppContext& app) {
                  return app.frame_resolvers()->Register(
                      "host.tenant", kTenantOrder,
                      [](const Frame& parent, const Options&, PairList& out) -> absl::Status {
                        const CallerContext* caller = CallerOf(parent);
                        if (caller == nullptr || caller->tenant_id.empty()) {
                          return absl::UnauthenticatedError("the call has no caller tenant");
                        }
                        out.push_back(Pair::Of(kTenantLabel, caller->tenant_id));
                        return absl::OkStatus();
                      });
                }}));
  FRAMEKIT_RETURN_IF_ERROR(boot.Run(app));
  app.frame_resolvers()->Seal();
  const auto* registry = app.Get(net::NetworkRegistryKey());
  if (registry == nullptr || *registry == nullptr) {
    return absl::InternalError("boot: the network component stored no registry");
  }
  networks = *registry;
  return absl::OkStatus();
}

// Start's last step: the fault monitor, the executor with every function, and the processes.
absl::Status Host::State::StartDispatch() {
  const HostConfig& cfg = config;
  dispatch::FaultMonitorOptions monitor_options;
  monitor_options.logger = logger;
  monitor_options.policy = {.max_faults = 5,
                            .window = std::chrono::seconds(1),
                            .on_trip = dispatch::FaultVerdict::kAlarm};
  monitor = std::make_unique<dispatch::FaultMonitor>(monitor_options);

  dispatch::FunctionExecutorOptions executor_options;
  executor_options.monitor = monitor.get();
  executor_options.deadline_workers = cfg.workload.threads + 2;
  executor_options.max_quarantined = 8;
  executor = std::make_unique<dispatch::FunctionExecutor>(app, executor_options);
  FRAMEKIT_RETURN_IF_ERROR(MakeLuaHost());
  for (std::size_t i = 0; i < cfg.functions.size(); ++i) {
    function_states.push_back(std::make_unique<State::FunctionState>());
    const FunctionConfig& f = cfg.functions[i];
    std::shared_ptr<dispatch::Code> code;
    if (f.runtime == "lua") {
      absl::StatusOr<std::shared_ptr<dispatch::Code>> lua = MakeLuaFunction(i);
      if (!lua.ok()) return lua.status();
      code = *std::move(lua);
    } else {
      code = dispatch::NativeCode(MakeHandler(i));  // reports no RunStats: nothing to add up
    }
    FRAMEKIT_RETURN_IF_ERROR(executor->Register(f.name, std::move(code), f.defaults));
  }

  dispatch::ProcessManagerOptions process_options;
  process_options.monitor = monitor.get();
  process_options.workers = 2;
  processes = std::make_unique<dispatch::ProcessManager>(app, process_options);
  const Frame process_parent =
      WithCaller(Frame(), {.user_id = "host", .tenant_id = cfg.workload.tenants.front()});
  for (std::size_t i = 0; i < cfg.processes.size(); ++i) {
    process_states.push_back(std::make_unique<State::ProcessState>());
    absl::StatusOr<dispatch::ProcessSpec> spec = MakeProcess(i);
    if (cfg.processes[i].kind == "lua") spec = MakeLuaProcess(i);
    if (!spec.ok()) {
      return absl::Status(spec.status().code(), absl::StrCat("process \"", cfg.processes[i].name,
                                                             "\": ", spec.status().message()));
    }
    absl::StatusOr<dispatch::Pid> pid = processes->Start(process_parent, *std::move(spec));
    if (!pid.ok()) {
      return absl::Status(pid.status().code(), absl::StrCat("process \"", cfg.processes[i].name,
                                                            "\": ", pid.status().message()));
    }
    process_states.back()->pid = *pid;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Host>> Host::Start(HostConfig config) {
  auto state = std::make_unique<State>();
  state->config = std::move(config);
  HostConfig& cfg = state->config;
  // Fault records carry the stack of the throw site.
  SetThrowStackCapture(true);
  // Fault records go to stderr, so that --json output on stdout stays clean.
  state->logger = spdlog::get("framekit-host");
  if (state->logger == nullptr) state->logger = spdlog::stderr_color_mt("framekit-host");

  absl::StatusOr<std::unique_ptr<net::loopback::PeerEchoServer>> echo =
      net::loopback::PeerEchoServer::Start();
  if (!echo.ok()) return echo.status();
  state->echo = *std::move(echo);

  state->LaunchProxies();
  if (cfg.workload.mix.empty()) return absl::FailedPreconditionError("no function left to call");

  FRAMEKIT_RETURN_IF_ERROR(state->Boot());
  FRAMEKIT_RETURN_IF_ERROR(state->StartDispatch());
  return std::unique_ptr<Host>(new Host(std::move(state)));
}

// Host::Run's steps, in order. The call schedule: function indexes in proportion to their
// weights.
std::vector<int> Host::State::Schedule() const {
  const HostConfig& cfg = config;
  const WorkloadConfig& w = cfg.workload;
  std::vector<int> schedule;
  for (const auto& [name, weight] : w.mix) {
    const auto it = std::find_if(cfg.functions.begin(), cfg.functions.end(),
                                 [&](const FunctionConfig& f) { return f.name == name; });
    for (int k = 0; k < weight; ++k)
      schedule.push_back(static_cast<int>(it - cfg.functions.begin()));
  }
  return schedule;
}

// Call `i` of the workload, made by one of RunCalls's threads.
CallResult Host::State::Call(int i, const std::vector<int>& schedule) {
  const HostConfig& cfg = config;
  const WorkloadConfig& w = cfg.workload;
  CallResult r;
  r.function = schedule[static_cast<std::size_t>(i) % schedule.size()];
  const FunctionConfig& f = cfg.functions[static_cast<std::size_t>(r.function)];
  const CallerContext caller{
      .user_id = absl::StrCat("user-", i % 7),
      .tenant_id = w.tenants[static_cast<std::size_t>(i) % w.tenants.size()]};
  const Frame parent = WithCaller(Frame(), caller).WithTimeout(w.deadline);
  r.expected_tenant = caller.tenant_id;
  const bool lua_fetch = f.runtime == "lua" && f.expect == "fetch";
  Options options;
  if (f.handler == "fetch" || lua_fetch) {
    const std::string choice =
        w.fetch_networks.empty()
            ? "default"
            : w.fetch_networks[static_cast<std::size_t>(i) % w.fetch_networks.size()];
    if (choice != "default") options.Set("network", choice);
    // What must be selected: the call's option, else the function's default, else the app's.
    r.expected_network = choice != "default" ? choice
                         : f.defaults.GetString("network")
                             ? std::string(*f.defaults.GetString("network"))
                             : cfg.networks.app_default;
  }
  const std::string payload = absl::StrCat("call-", i);
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::string> output = executor->Invoke(parent, f.name, payload, options);
  r.ms = Millis(std::chrono::steady_clock::now() - t0).count();
  r.code = output.status().code();
  r.panic = IsExtensionPanic(output.status());
  if (!output.ok()) r.error = output.status().ToString();
  if (output.ok() && f.handler == "echo") r.output_ok = *output == payload;
  if (output.ok() && (f.handler == "fetch" || lua_fetch)) {
    r.output_ok = ParseFetchOutput(*output, lua_fetch, r);
    if (r.output_ok && lua_fetch && r.tenant != r.expected_tenant) ++tenant_mismatches;
  }
  return r;
}

// Makes every call on the workload's threads, reporting progress while they run.
void Host::State::RunCalls(const std::vector<int>& schedule,
                           std::vector<std::vector<CallResult>>& per_thread,
                           const std::function<void(int done, int total)>& progress) {
  const WorkloadConfig& w = config.workload;
  std::atomic<int> next{0};
  std::atomic<int> done{0};
  std::latch finished(w.threads);
  std::vector<std::thread> threads;
  for (int t = 0; t < w.threads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<CallResult>& results = per_thread[static_cast<std::size_t>(t)];
      for (int i = next.fetch_add(1); i < w.calls; i = next.fetch_add(1)) {
        results.push_back(Call(i, schedule));
        done.fetch_add(1, std::memory_order_relaxed);
      }
      finished.count_down();
    });
  }
  while (!finished.try_wait()) {
    if (progress) progress(done.load(std::memory_order_relaxed), w.calls);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // display refresh only
  }
  for (std::thread& thread : threads) thread.join();
  if (progress) progress(w.calls, w.calls);
}

// The summary's notes, functions and networks, before any call is counted.
void Host::State::DescribeWorkload(Summary& summary) const {
  const HostConfig& cfg = config;
  summary.notes = notes;
  for (std::size_t i = 0; i < cfg.functions.size(); ++i) {
    const FunctionConfig& f = cfg.functions[i];
    summary.functions.push_back({.name = f.name,
                                 .runtime = f.runtime,
                                 .handler = f.runtime == "lua" ? f.expect : f.handler});
  }
  for (const net::Network& n : cfg.networks.networks) {
    NetworkSummary ns{.id = n.id, .kind = std::string(n.kind_name())};
    if (n.kind == net::Network::Kind::kDirect) {
      ns.expected_source = n.bind_address.empty() ? "127.0.0.1" : n.bind_address;
    } else {
      const auto launched =
          std::find_if(cfg.launched_proxies.begin(), cfg.launched_proxies.end(),
                       [&](const LaunchedProxy& p) { return p.network_id == n.id; });
      ns.expected_source = launched != cfg.launched_proxies.end() && !launched->egress.empty()
                               ? launched->egress
                               : "";
    }
    summary.networks.push_back(std::move(ns));
  }
}

// Counts every call into its function's and network's summary, with the violations it shows.
void Host::State::CheckCalls(const std::vector<std::vector<CallResult>>& per_thread,
                             Summary& summary, std::vector<std::vector<double>>& latencies) {
  const auto violation = [&summary](std::string text) { AddViolation(summary, std::move(text)); };
  for (const auto& results : per_thread) {
    for (const CallResult& r : results) {
      FunctionSummary& fs = summary.functions[static_cast<std::size_t>(r.function)];
      latencies[static_cast<std::size_t>(r.function)].push_back(r.ms);
      ++fs.calls;
      if (r.code == absl::StatusCode::kOk) {
        ++fs.ok;
      } else if (r.panic) {
        ++fs.faults;
      } else if (r.code == absl::StatusCode::kDeadlineExceeded) {
        ++fs.timeouts;
      } else if (r.code == absl::StatusCode::kResourceExhausted) {
        ++(fs.runtime == "lua" ? fs.limited : fs.refused);
      } else {
        ++fs.other_errors;
      }
      const std::string& handler = fs.handler;
      const FunctionConfig& f = config.functions[static_cast<std::size_t>(r.function)];
      if (f.runtime == "lua") CheckLuaCall(f, fs, r, summary);
      if ((handler == "echo" || handler == "fetch") && r.code != absl::StatusCode::kOk) {
        violation(absl::StrCat("healthy call to \"", fs.name, "\" failed: ", r.error));
      }
      if (!r.output_ok) violation(absl::StrCat("\"", fs.name, "\" returned a wrong output"));
      // A slow call ends at its deadline, or is refused by its function's bulkhead while another
      // of its calls is still quarantined (ResourceExhausted): never OK, never anything else.
      if (handler == "slow" && r.code != absl::StatusCode::kDeadlineExceeded &&
          r.code != absl::StatusCode::kResourceExhausted) {
        violation(absl::StrCat("a call to \"", fs.name, "\" did not end at its deadline: ",
                               r.code == absl::StatusCode::kOk ? "OK" : r.error));
      }
      if (handler == "faulty" && r.code != absl::StatusCode::kOk && !r.panic) {
        violation(absl::StrCat("a call to \"", fs.name,
                               "\" failed without an isolated fault: ", r.error));
      }
      if (handler == "fetch" && r.code == absl::StatusCode::kOk && r.output_ok) {
        if (r.network != r.expected_network) {
          violation(absl::StrCat("a call to \"", fs.name, "\" took network \"", r.network,
                                 "\" but its options selected \"", r.expected_network, "\""));
        }
        auto ns = std::find_if(summary.networks.begin(), summary.networks.end(),
                               [&](const NetworkSummary& n) { return n.id == r.network; });
        if (ns != summary.networks.end()) {
          ++ns->calls;
          ++ns->sources[r.source];
          if (!ns->expected_source.empty() && r.source != ns->expected_source) {
            violation(absl::StrCat("a call on \"", ns->id, "\" arrived from ", r.source,
                                   ", not from ", ns->expected_source));
          }
        }
      }
    }
  }
}

// A Lua call ends as its configuration says every call of it must: a fetch or an ok function
// succeeds, a spinning one ends at its timeout (within a bounded overrun), a memory bomb ends with
// ResourceExhausted.
void Host::State::CheckLuaCall(const FunctionConfig& f, const FunctionSummary& fs,
                               const CallResult& r, Summary& summary) const {
  const auto violation = [&summary](std::string text) { AddViolation(summary, std::move(text)); };
  if (f.expect == "ok" && r.code != absl::StatusCode::kOk) {
    violation(absl::StrCat("healthy Lua call to \"", fs.name, "\" failed: ", r.error));
  }
  if (f.expect == "timeout") {
    if (r.code != absl::StatusCode::kDeadlineExceeded) {
      violation(absl::StrCat("a call to \"", fs.name, "\" did not end at its deadline: ",
                             r.code == absl::StatusCode::kOk ? "OK" : r.error));
    }
    // The call's deadline: the earlier of the workload's and the function's timeout. A
    // preempted script returns well within this margin even on a loaded machine.
    const Clock::duration timeout =
        f.timeout.count() > 0 ? Clock::duration(f.timeout) : lua::LuaLimits().timeout;
    const double bound_ms =
        Millis(std::min<Clock::duration>(timeout, config.workload.deadline)).count() + 250;
    if (r.ms > bound_ms) {
      violation(absl::StrFormat("a call to \"%s\" ran %.1f ms, past its deadline + 250 ms", fs.name,
                                r.ms));
    }
  }
  if (f.expect == "memory" && r.code != absl::StatusCode::kResourceExhausted) {
    violation(absl::StrCat("a call to \"", fs.name, "\" did not end at its memory limit: ",
                           r.code == absl::StatusCode::kOk ? "OK" : r.error));
  }
}

// A Lua function's RunStats: every call has a Lua heap, a fetch makes one host call per
// successful call, and the executor's own invocation records carry the same stats.
void Host::State::CheckLuaStats(const FunctionSummary& fs, Summary& summary) const {
  const auto violation = [&summary](std::string text) { AddViolation(summary, std::move(text)); };
  if (fs.calls > 0 && fs.peak_memory_bytes == 0) {
    violation(absl::StrCat("\"", fs.name, "\": no peak memory reported"));
  }
  if (fs.handler == "fetch" && fs.host_calls < static_cast<std::uint64_t>(fs.ok)) {
    violation(absl::StrCat("\"", fs.name, "\": ", fs.ok, " fetches succeeded with ", fs.host_calls,
                           " host calls"));
  }
  absl::StatusOr<std::vector<dispatch::InvocationRecord>> records =
      executor->ListInvocations(fs.name);
  if (!records.ok()) {
    violation(
        absl::StrCat("\"", fs.name, "\": no invocation records: ", records.status().ToString()));
    return;
  }
  for (const dispatch::InvocationRecord& record : *records) {
    if (record.stats.peak_memory_bytes == 0 ||
        record.stats.peak_memory_bytes > fs.peak_memory_bytes) {
      violation(absl::StrCat("\"", fs.name, "\": invocation ", record.id, " records peak memory ",
                             record.stats.peak_memory_bytes,
                             " (the largest reported: ", fs.peak_memory_bytes, ")"));
      return;
    }
  }
}

// Each function's latencies and counters, checked against the executor's and the monitor's.
void Host::State::CheckFunctions(Summary& summary,
                                 const std::vector<std::vector<double>>& latencies) {
  const HostConfig& cfg = config;
  const auto violation = [&summary](std::string text) { AddViolation(summary, std::move(text)); };
  for (std::size_t i = 0; i < cfg.functions.size(); ++i) {
    FunctionSummary& fs = summary.functions[i];
    fs.p50_ms = Percentile(latencies[i], 0.50);
    fs.p99_ms = Percentile(latencies[i], 0.99);
    absl::StatusOr<dispatch::FunctionCounters> counters = executor->Counters(fs.name);
    if (counters.ok()) {
      fs.executor_faults = counters->faults;
      fs.executor_timeouts = counters->timeouts;
      fs.executor_refusals = counters->refusals;
    }
    const std::uint64_t injected = function_states[i]->injected.load();
    // The executor reports a function's faults under "NAME@vVERSION".
    const absl::StatusOr<dispatch::FunctionInfo> info = executor->Get(fs.name);
    const std::string extension = absl::StrCat(fs.name, "@v", info.ok() ? info->active_version : 0);
    const std::uint64_t monitored = monitor->faults(extension, Phase::kInvoke);
    summary.alarms += monitor->alarms(extension);
    if (fs.handler == "faulty") {
      if (static_cast<std::uint64_t>(fs.faults) != injected || fs.executor_faults != injected ||
          monitored != injected) {
        violation(absl::StrCat("\"", fs.name, "\": ", injected, " faults injected, ", fs.faults,
                               " isolated, executor counted ", fs.executor_faults,
                               ", fault monitor counted ", monitored));
      }
      if (fs.ok + fs.faults != fs.calls) {
        violation(absl::StrCat("\"", fs.name, "\": ", fs.ok, " ok + ", fs.faults,
                               " faults != ", fs.calls, " calls"));
      }
    }
    fs.peak_memory_bytes = function_states[i]->peak_memory.load();
    fs.host_calls = function_states[i]->host_calls.load();
    if (fs.runtime == "lua") CheckLuaStats(fs, summary);
    if (fs.executor_refusals != static_cast<std::uint64_t>(fs.refused)) {
      violation(absl::StrCat("\"", fs.name, "\": ", fs.refused, " calls refused, executor counted ",
                             fs.executor_refusals));
    }
    if (fs.executor_timeouts != static_cast<std::uint64_t>(fs.timeouts)) {
      violation(absl::StrCat("\"", fs.name, "\": ", fs.timeouts,
                             " calls timed out, executor counted ", fs.executor_timeouts));
    }
  }
  if (tenant_mismatches.load() != 0) {
    violation(absl::StrCat(tenant_mismatches.load(),
                           " handlers did not see their caller's tenant label on their frame"));
  }
}

// Stops the processes and checks their counts.
void Host::State::StopProcesses(Summary& summary) {
  const HostConfig& cfg = config;
  const auto violation = [&summary](std::string text) { AddViolation(summary, std::move(text)); };
  for (std::size_t i = 0; i < cfg.processes.size(); ++i) {
    State::ProcessState& ps = *process_states[i];
    (void)processes->Stop(ps.pid, std::chrono::seconds(1));
    absl::StatusOr<dispatch::ProcessExit> exit = processes->Wait(ps.pid, std::chrono::seconds(5));
    ProcessSummary out{.name = cfg.processes[i].name, .kind = cfg.processes[i].kind};
    out.injected_faults = ps.injected.load();
    out.ticks = ps.ticks.load();
    out.exit = exit.ok() ? exit->status.ToString() : exit.status().ToString();
    for (const dispatch::ProcessInfo& info : processes->List()) {
      if (info.pid != ps.pid) continue;
      out.state = std::string(dispatch::ProcessStateName(info.state));
      out.faults = info.faults;
    }
    if (out.ticks == 0)
      violation(absl::StrCat("process \"", out.name, "\" never polled successfully"));
    if (out.faults != out.injected_faults) {
      violation(absl::StrCat("process \"", out.name, "\": ", out.injected_faults,
                             " poll faults injected, ", out.faults, " counted"));
    }
    if (out.state != "exited") violation(absl::StrCat("process \"", out.name, "\" did not stop"));
    summary.processes.push_back(std::move(out));
  }
}

absl::StatusOr<Summary> Host::Run(const std::function<void(int done, int total)>& progress) {
  State& s = *state_;
  const HostConfig& cfg = s.config;
  const WorkloadConfig& w = cfg.workload;
  const std::vector<int> schedule = s.Schedule();
  std::vector<std::vector<CallResult>> per_thread(static_cast<std::size_t>(w.threads));
  const auto started = std::chrono::steady_clock::now();
  s.RunCalls(schedule, per_thread, progress);

  Summary summary;
  summary.calls = w.calls;
  summary.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::vector<std::vector<double>> latencies(cfg.functions.size());
  s.DescribeWorkload(summary);
  s.CheckCalls(per_thread, summary, latencies);
  s.CheckFunctions(summary, latencies);
  s.StopProcesses(summary);
  RunIsolatedDemo(*s.executor, *s.monitor,
                  WithCaller(Frame(), {.user_id = "host", .tenant_id = w.tenants.front()}),
                  summary.isolated, summary.notes, summary.violations);
  for (const dispatch::FaultCounter& c : s.monitor->Counters()) summary.isolated_faults += c.faults;
  for (const ProcessConfig& p : cfg.processes) summary.alarms += s.monitor->alarms(p.name);
  s.monitor->FlushSuppressed();
  return summary;
}

std::string SummaryText(const Summary& summary) {
  std::string out;
  absl::StrAppendFormat(&out, "framekit-host: %d calls in %.2f s\n\n", summary.calls,
                        summary.seconds);
  for (const std::string& note : summary.notes) absl::StrAppend(&out, "note: ", note, "\n");
  if (!summary.notes.empty()) out.push_back('\n');
  absl::StrAppendFormat(&out, "%-16s %-7s %-7s %5s %5s %6s %8s %7s %6s %6s %8s %8s %9s %6s\n",
                        "function", "runtime", "handler", "calls", "ok", "faults", "timeouts",
                        "refused", "limit", "other", "p50 ms", "p99 ms", "peak KiB", "host");
  for (const FunctionSummary& f : summary.functions) {
    const std::string peak =
        f.runtime == "native" ? "-" : absl::StrFormat("%.0f", f.peak_memory_bytes / 1024.0);
    const std::string host = f.runtime == "native" ? "-" : absl::StrCat(f.host_calls);
    absl::StrAppendFormat(&out, "%-16s %-7s %-7s %5d %5d %6d %8d %7d %6d %6d %8.2f %8.2f %9s %6s\n",
                          f.name, f.runtime, f.handler, f.calls, f.ok, f.faults, f.timeouts,
                          f.refused, f.limited, f.other_errors, f.p50_ms, f.p99_ms, peak, host);
  }
  absl::StrAppend(&out,
                  "(limit: ended by a Lua memory or output limit; peak KiB: the largest Lua heap "
                  "of any call; host: calls into the host (frame reads, host functions, log), in "
                  "total)\n");
  absl::StrAppendFormat(&out, "\n%-16s %-7s %6s  %s\n", "network", "kind", "calls",
                        "source address seen by the echo server (calls)");
  for (const NetworkSummary& n : summary.networks) {
    std::string sources;
    for (const auto& [source, count] : n.sources) {
      absl::StrAppend(&sources, sources.empty() ? "" : ", ", source, " (", count, ")");
    }
    absl::StrAppendFormat(&out, "%-16s %-7s %6d  %s\n", n.id, n.kind, n.calls,
                          sources.empty() ? "-" : sources);
  }
  absl::StrAppendFormat(&out, "\n%-16s %-7s %-8s %8s %8s %8s  %s\n", "process", "kind", "state",
                        "polls ok", "faults", "injected", "exit");
  for (const ProcessSummary& p : summary.processes) {
    absl::StrAppendFormat(&out, "%-16s %-7s %-8s %8d %8d %8d  %s\n", p.name, p.kind, p.state,
                          p.ticks, p.faults, p.injected_faults, p.exit);
  }
  if (const IsolatedSummary& iso = summary.isolated; iso.ran) {
    absl::StrAppendFormat(&out,
                          "\nworker processes: iso.flaky %d calls, %d ok, %d faults (null "
                          "dereference every %dth call); iso.spin %d calls, %d deadline kills; "
                          "iso.echo %d/%d ok; %d workers started (mean start-up %.2f ms)\n",
                          iso.flaky_calls, iso.flaky_ok, iso.flaky_faults, iso.crash_period,
                          iso.spin_calls, iso.deadline_kills, iso.echo_ok, iso.echo_calls,
                          iso.workers_started, iso.mean_startup_ms);
  }
  absl::StrAppendFormat(&out, "\nisolation: %d faults isolated and counted, %d alarms raised\n",
                        summary.isolated_faults, summary.alarms);
  if (summary.ok()) {
    absl::StrAppend(&out,
                    "result: PASS: every healthy call succeeded on the network its options "
                    "selected, and every injected fault was isolated and counted\n");
  } else {
    absl::StrAppend(&out, "result: FAIL\n");
    for (const std::string& v : summary.violations) absl::StrAppend(&out, "  - ", v, "\n");
  }
  return out;
}

nlohmann::json SummaryJson(const Summary& summary) {
  nlohmann::json j;
  j["calls"] = summary.calls;
  j["seconds"] = summary.seconds;
  j["ok"] = summary.ok();
  j["notes"] = summary.notes;
  j["violations"] = summary.violations;
  j["isolated_faults"] = summary.isolated_faults;
  j["alarms"] = summary.alarms;
  if (const IsolatedSummary& iso = summary.isolated; iso.ran) {
    j["isolated"] = {
        {"flaky_calls", iso.flaky_calls},         {"flaky_ok", iso.flaky_ok},
        {"flaky_faults", iso.flaky_faults},       {"crash_period", iso.crash_period},
        {"spin_calls", iso.spin_calls},           {"deadline_kills", iso.deadline_kills},
        {"echo_calls", iso.echo_calls},           {"echo_ok", iso.echo_ok},
        {"workers_started", iso.workers_started}, {"mean_startup_ms", iso.mean_startup_ms}};
  }
  j["functions"] = nlohmann::json::array();
  for (const FunctionSummary& f : summary.functions) {
    j["functions"].push_back({{"name", f.name},
                              {"runtime", f.runtime},
                              {"handler", f.handler},
                              {"calls", f.calls},
                              {"ok", f.ok},
                              {"faults", f.faults},
                              {"timeouts", f.timeouts},
                              {"refused", f.refused},
                              {"limited", f.limited},
                              {"peak_memory_bytes", f.peak_memory_bytes},
                              {"host_calls", f.host_calls},
                              {"other_errors", f.other_errors},
                              {"p50_ms", f.p50_ms},
                              {"p99_ms", f.p99_ms},
                              {"executor_faults", f.executor_faults},
                              {"executor_timeouts", f.executor_timeouts},
                              {"executor_refusals", f.executor_refusals}});
  }
  j["networks"] = nlohmann::json::array();
  for (const NetworkSummary& n : summary.networks) {
    j["networks"].push_back({{"id", n.id},
                             {"kind", n.kind},
                             {"expected_source", n.expected_source},
                             {"calls", n.calls},
                             {"sources", n.sources}});
  }
  j["processes"] = nlohmann::json::array();
  for (const ProcessSummary& p : summary.processes) {
    j["processes"].push_back({{"name", p.name},
                              {"kind", p.kind},
                              {"state", p.state},
                              {"polls_ok", p.ticks},
                              {"faults", p.faults},
                              {"injected_faults", p.injected_faults},
                              {"exit", p.exit}});
  }
  return j;
}

}  // namespace framekit::host
