// Fuzzes sequences of register / unregister / dispatch / throw / re-enter operations against a
// FrameResolvers, an Interceptors registry and a FunctionExecutor, replaying each one against a
// reference model and aborting on any divergence: resolve order and results, which functions
// exist, call results and codes, fault records, fault counters and evictions.
//
// Input: a sequence of 4-byte operations [op, a, b, c]. No deadlines: every input runs on the
// calling thread and stays fast.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "framekit/app/app_context.h"
#include "framekit/base/internal/strings.h"
#include "framekit/ctx/frame.h"
#include "framekit/ctx/options.h"
#include "framekit/ctx/panic.h"
#include "framekit/dispatch/fault_monitor.h"
#include "framekit/dispatch/function_executor.h"
#include "framekit/dispatch/interceptors.h"
#include "framekit/resolvers/frame_resolvers.h"
#include "spdlog/logger.h"
#include "spdlog/sinks/null_sink.h"

namespace {

namespace fd = framekit::dispatch;
using framekit::Frame;
using framekit::Options;
using framekit::Pair;
using framekit::PairList;

inline const framekit::Key<std::int64_t> kMark{"ops.mark", /*inherit=*/false};

constexpr int kSlots = 8;
constexpr int kMaxFaults = 2;  // evict on the second fault of a version
constexpr int kMaxDepth = 2;   // nested dispatch depth

[[noreturn]] void Diverge(const std::string& what) {
  std::fprintf(stderr, "ops_fuzzer: divergence from the model: %s\n", what.c_str());
  std::abort();
}

using framekit::base_internal::AsAbsl;

enum class ResolverKind { kPlain, kThrower, kRegistrar, kLate };
enum class FunctionKind { kEcho, kThrower, kReenter, kSelfRemove };

struct ModelResolver {
  std::string name;
  int order = 0;
  ResolverKind kind = ResolverKind::kPlain;
  int slot = 0;
};

struct ModelFunction {
  FunctionKind kind = FunctionKind::kEcho;
  int version = 1;
  bool disabled = false;
  std::uint64_t faults = 0;  // FunctionCounters::faults since Register
  std::uint64_t errors = 0;
};

// The expected outcome of a call.
struct Outcome {
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string value = {};            // when OK
  std::string panic_extension = {};  // when a fault record is expected
  framekit::Phase panic_phase = framekit::Phase::kInvoke;
};

std::string FunctionName(int slot) { return absl::StrCat("f", slot); }

class Harness {
 public:
  Harness() {
    fd::FaultMonitorOptions options;
    options.logger =
        std::make_shared<spdlog::logger>("ops", std::make_shared<spdlog::sinks::null_sink_mt>());
    options.policy = {.max_faults = kMaxFaults,
                      .window = std::chrono::hours(1),
                      .on_trip = fd::FaultVerdict::kEvict};
    monitor_ = std::make_unique<fd::FaultMonitor>(std::move(options));
    interceptors_ = std::make_shared<fd::Interceptors>(monitor_.get());
    if (!app_.SetFrameResolvers(resolvers_).ok()) Diverge("SetFrameResolvers");
    app_.Seal();
    executor_ = std::make_unique<fd::FunctionExecutor>(
        app_,
        // The resolvers read "fail" only in some kinds; the fuzzer exercises the registry and
        // the executor, not strict options.
        fd::FunctionExecutorOptions{.interceptors = interceptors_,
                                    .monitor = monitor_.get(),
                                    .allow_undeclared_options = true});
  }

  void Apply(const std::uint8_t* op) {
    const int a = op[1] % kSlots;
    switch (op[0] % 8) {
      case 0:
        RegisterResolver(a, (op[2] % 4) * 100, static_cast<ResolverKind>(op[3] % 3));
        break;
      case 1:
        ResolveDirect(op[1] % (kSlots + 1));
        break;
      case 2:
        RegisterFunction(a, static_cast<FunctionKind>(op[2] % 4));
        break;
      case 3:
        RemoveFunction(a);
        break;
      case 4:
      case 7:
        InvokeTop(a, op[2], op[3] % (kSlots + 4));
        break;
      case 5:
        DeployFunction(a, static_cast<FunctionKind>(op[2] % 4));
        break;
      case 6:
        ToggleInterceptor(a);
        break;
    }
    CheckState();
  }

  void Finish() {
    // The monitor counted every fault exactly once, by extension.
    for (const fd::FaultCounter& counter : monitor_->Counters()) {
      const auto it = monitor_faults_.find(counter.extension);
      const std::uint64_t want = it == monitor_faults_.end() ? 0 : it->second;
      if (counter.phase != framekit::Phase::kInvoke || counter.faults != want) {
        Diverge(absl::StrCat("monitor: ", counter.extension, " ",
                             AsAbsl(framekit::PhaseName(counter.phase)), " ", counter.faults,
                             " faults, model ", want));
      }
    }
    const std::uint64_t counted = monitor_->total_faults();
    if (monitor_total_ != counted) {
      Diverge(absl::StrCat("monitor total ", counted, ", model ", monitor_total_));
    }
  }

 private:
  // ---- resolvers ----
  std::vector<ModelResolver> ResolveOrder() const {
    std::vector<ModelResolver> out;
    for (const auto& [name, r] : resolvers_model_) out.push_back(r);
    std::sort(out.begin(), out.end(), [](const ModelResolver& x, const ModelResolver& y) {
      return std::tie(x.order, x.name) < std::tie(y.order, y.name);
    });
    return out;
  }

  framekit::FrameResolverFn MakeResolver(ResolverKind kind, int slot) {
    switch (kind) {
      case ResolverKind::kPlain:
      case ResolverKind::kLate:
        return [mark = kind == ResolverKind::kLate ? 100 + slot : slot](
                   const Frame&, const Options&, PairList& out) -> absl::Status {
          out.push_back(Pair::Of(kMark, std::int64_t{mark}));
          return absl::OkStatus();
        };
      case ResolverKind::kThrower:
        return [slot](const Frame&, const Options& options, PairList& out) -> absl::Status {
          if (options.GetInt("fail") == slot) throw std::runtime_error("resolver fault");
          out.push_back(Pair::Of(kMark, std::int64_t{slot}));
          return absl::OkStatus();
        };
      case ResolverKind::kRegistrar:
        return [this, slot](const Frame&, const Options&, PairList& out) -> absl::Status {
          // Re-entrant registration: visible from the next pass. AlreadyExists after the first.
          const absl::Status status = resolvers_->Register(absl::StrCat("late.", slot), 150,
                                                           MakeResolver(ResolverKind::kLate, slot));
          if (!status.ok() && status.code() != absl::StatusCode::kAlreadyExists) return status;
          out.push_back(Pair::Of(kMark, std::int64_t{slot}));
          return absl::OkStatus();
        };
    }
    return nullptr;
  }

  void RegisterResolver(int slot, int order, ResolverKind kind) {
    const std::string name = absl::StrCat("r", slot);
    const absl::Status status = resolvers_->Register(name, order, MakeResolver(kind, slot));
    const bool exists = resolvers_model_.contains(name);
    if (exists ? status.code() != absl::StatusCode::kAlreadyExists : !status.ok()) {
      Diverge(absl::StrCat("Register resolver ", name, ": ", status.ToString()));
    }
    if (!exists) resolvers_model_[name] = {name, order, kind, slot};
  }

  // The model of one Resolve pass with option fail = `fail` (kSlots: none): the marks, or the
  // name of the resolver that threw. Registrars register in the model as they run.
  std::optional<std::string> ModelResolve(int fail, std::vector<std::int64_t>& marks) {
    for (const ModelResolver& r : ResolveOrder()) {  // the snapshot at the start of the pass
      if (r.kind == ResolverKind::kThrower && r.slot == fail) {
        marks.clear();
        return r.name;
      }
      if (r.kind == ResolverKind::kRegistrar) {
        const std::string late = absl::StrCat("late.", r.slot);
        if (!resolvers_model_.contains(late)) {
          resolvers_model_[late] = {late, 150, ResolverKind::kLate, r.slot};
        }
      }
      marks.push_back(r.kind == ResolverKind::kLate ? 100 + r.slot : r.slot);
    }
    return std::nullopt;
  }

  static Options FailOptions(int fail) {
    Options options;
    if (fail < kSlots) options.Set("fail", std::int64_t{fail});
    return options;
  }

  void ResolveDirect(int fail) {
    PairList pairs;
    const absl::Status status = resolvers_->Resolve(Frame(), FailOptions(fail), pairs);
    std::vector<std::int64_t> want;
    const std::optional<std::string> thrower = ModelResolve(fail, want);
    if (thrower) {
      const auto panic = framekit::GetExtensionPanic(status);
      if (status.code() != absl::StatusCode::kInternal || !panic || panic->extension != *thrower ||
          panic->phase != framekit::Phase::kResolve || !pairs.empty() ||
          !absl::StartsWith(status.message(), absl::StrCat("frame resolver \"", *thrower, "\""))) {
        Diverge(absl::StrCat("Resolve with ", *thrower, " throwing: ", status.ToString()));
      }
      return;
    }
    if (!status.ok()) Diverge(absl::StrCat("Resolve: ", status.ToString()));
    std::vector<std::int64_t> got;
    for (const Pair& pair : pairs) {
      const std::int64_t* mark = pair.As(kMark);
      if (mark == nullptr) Diverge("Resolve: a pair of another key");
      got.push_back(*mark);
    }
    if (got != want) Diverge("Resolve: order or pairs differ from the model");
  }

  // ---- functions ----
  fd::Handler MakeHandler(int slot, FunctionKind kind) {
    switch (kind) {
      case FunctionKind::kEcho:
        return [slot](const Frame&, std::string_view payload, fd::Sink& out) {
          return out.Write(absl::StrCat("e", slot, ":", AsAbsl(payload)));
        };
      case FunctionKind::kThrower:
        return [](const Frame&, std::string_view, fd::Sink&) -> absl::Status {
          throw std::runtime_error("handler fault");
        };
      case FunctionKind::kReenter:
        return [this](const Frame& frame, std::string_view payload, fd::Sink& out) -> absl::Status {
          if (payload.size() < 2 || payload[0] - '0' >= kMaxDepth) return out.Write("deep");
          const int target = static_cast<unsigned char>(payload[1]) % kSlots;
          const std::string nested = absl::StrCat(std::string(1, static_cast<char>(payload[0] + 1)),
                                                  AsAbsl(payload.substr(2)));
          absl::StatusOr<std::string> inner =
              executor_->Invoke(frame, FunctionName(target), nested);
          if (!inner.ok()) return inner.status();
          return out.Write(absl::StrCat("R", *inner));
        };
      case FunctionKind::kSelfRemove:
        return [this, slot](const Frame&, std::string_view, fd::Sink& out) -> absl::Status {
          const absl::Status removed = executor_->Remove(FunctionName(slot));
          if (!removed.ok()) return removed;
          return out.Write("gone");
        };
    }
    return nullptr;
  }

  void RegisterFunction(int slot, FunctionKind kind) {
    const absl::Status status = executor_->Register(FunctionName(slot), MakeHandler(slot, kind));
    const bool exists = functions_.contains(slot);
    if (exists ? status.code() != absl::StatusCode::kAlreadyExists : !status.ok()) {
      Diverge(absl::StrCat("Register ", FunctionName(slot), ": ", status.ToString()));
    }
    if (!exists) functions_[slot] = {.kind = kind};
  }

  void RemoveFunction(int slot) {
    const absl::Status status = executor_->Remove(FunctionName(slot));
    const bool exists = functions_.erase(slot) != 0;
    // Remove makes the fault monitor forget the function and every version of it.
    if (exists) ForgetModel(FunctionName(slot));
    if (exists ? !status.ok() : status.code() != absl::StatusCode::kNotFound) {
      Diverge(absl::StrCat("Remove ", FunctionName(slot), ": ", status.ToString()));
    }
  }

  void DeployFunction(int slot, FunctionKind kind) {
    const absl::StatusOr<int> version =
        executor_->Deploy(FunctionName(slot), MakeHandler(slot, kind));
    const auto it = functions_.find(slot);
    if (it == functions_.end()) {
      if (version.status().code() != absl::StatusCode::kNotFound) {
        Diverge(absl::StrCat("Deploy of an unknown function: ", version.status().ToString()));
      }
      return;
    }
    ModelFunction& f = it->second;
    ++f.version;
    f.kind = kind;
    f.disabled = false;
    if (!version.ok() || *version != f.version) {
      Diverge(absl::StrCat("Deploy ", FunctionName(slot), ": ",
                           version.ok() ? absl::StrCat(*version) : version.status().ToString()));
    }
  }

  void ToggleInterceptor(int target) {
    if (interceptor_target_) {
      if (!interceptors_->Unregister("icept").ok()) Diverge("Unregister interceptor");
      interceptor_target_.reset();
      return;
    }
    const std::string name = FunctionName(target);
    const absl::Status status =
        interceptors_->Register("icept", 1, [name](fd::Call& call, const fd::Next& next) {
          if (call.target == name) throw std::runtime_error("interceptor fault");
          return next(call);
        });
    if (!status.ok()) Diverge(absl::StrCat("Register interceptor: ", status.ToString()));
    interceptor_target_ = target;
  }

  // The model of one Invoke of `slot` (fail: the option, kSlots+: none).
  Outcome ModelInvoke(int slot, const std::string& payload, int fail) {
    const auto it = functions_.find(slot);
    if (it == functions_.end()) return {.code = absl::StatusCode::kNotFound};
    if (it->second.disabled) return {.code = absl::StatusCode::kFailedPrecondition};
    std::vector<std::int64_t> marks;
    if (const std::optional<std::string> thrower = ModelResolve(fail, marks)) {
      ++it->second.errors;
      return {.code = absl::StatusCode::kInternal,
              .panic_extension = *thrower,
              .panic_phase = framekit::Phase::kResolve};
    }
    if (interceptor_target_ == slot) {
      ++it->second.faults;
      ++it->second.errors;
      ++monitor_faults_["interceptor icept"];
      ++monitor_total_;
      return {.code = absl::StatusCode::kInternal, .panic_extension = "interceptor icept"};
    }
    ModelFunction& f = it->second;
    switch (f.kind) {
      case FunctionKind::kEcho:
        return {.value = absl::StrCat("e", slot, ":", payload)};
      case FunctionKind::kThrower: {
        const std::string ext = absl::StrCat(FunctionName(slot), "@v", f.version);
        ++f.faults;
        ++f.errors;
        // The monitor keeps one entry per function: the first fault of a version replaces
        // the entry of the versions before it. A removed function was forgotten.
        if (!monitor_faults_.contains(ext)) ForgetModel(FunctionName(slot));
        ++monitor_total_;
        if (++monitor_faults_[ext] >= kMaxFaults) f.disabled = true;
        return {.code = absl::StatusCode::kInternal, .panic_extension = ext};
      }
      case FunctionKind::kReenter: {
        if (payload.size() < 2 || payload[0] - '0' >= kMaxDepth) return {.value = "deep"};
        const int target = static_cast<unsigned char>(payload[1]) % kSlots;
        const std::string nested =
            absl::StrCat(std::string(1, static_cast<char>(payload[0] + 1)), payload.substr(2));
        Outcome inner = ModelInvoke(target, nested, kSlots);
        // `it` may be stale now (a nested self-removal of another slot does not touch this
        // one, but look it up again to be safe).
        const auto self = functions_.find(slot);
        if (inner.code != absl::StatusCode::kOk) {
          if (self != functions_.end()) ++self->second.errors;
          return inner;
        }
        inner.value = absl::StrCat("R", inner.value);
        return inner;
      }
      case FunctionKind::kSelfRemove:
        functions_.erase(it);
        return {.value = "gone"};
    }
    return {};
  }

  void InvokeTop(int slot, std::uint8_t p, int fail) {
    // Payload: depth digit, then the nested target byte.
    const std::string payload = absl::StrCat("0", std::string(1, static_cast<char>(p)));
    const absl::StatusOr<std::string> got =
        executor_->Invoke(Frame(), FunctionName(slot), payload, FailOptions(fail));
    const Outcome want = ModelInvoke(slot, payload, fail);
    const std::string what = absl::StrCat("Invoke ", FunctionName(slot), ": ",
                                          got.ok() ? *got : got.status().ToString());
    if (got.status().code() != want.code) Diverge(absl::StrCat(what, "; model code ", want.code));
    if (got.ok() && *got != want.value) Diverge(absl::StrCat(what, "; model ", want.value));
    if (!want.panic_extension.empty()) {
      const auto panic = framekit::GetExtensionPanic(got.status());
      if (!panic || panic->extension != want.panic_extension || panic->phase != want.panic_phase ||
          panic->type != "std::runtime_error" || panic->message.empty()) {
        Diverge(absl::StrCat(what, "; model fault of ", want.panic_extension));
      }
    }
  }

  void CheckState() {
    std::vector<std::string> want;
    for (const auto& [slot, f] : functions_) want.push_back(FunctionName(slot));
    std::sort(want.begin(), want.end());
    if (executor_->List() != want) Diverge("the registered functions differ from the model");
    for (const auto& [slot, f] : functions_) {
      const absl::StatusOr<fd::FunctionCounters> counters = executor_->Counters(FunctionName(slot));
      if (!counters.ok() || counters->faults != f.faults) {
        Diverge(absl::StrCat(
            FunctionName(slot), ": executor counted ",
            counters.ok() ? absl::StrCat(counters->faults) : counters.status().ToString(),
            " faults, model ", f.faults));
      }
      const absl::StatusOr<fd::FunctionInfo> info = executor_->Get(FunctionName(slot));
      if (!info.ok() || info->disabled != f.disabled || info->active_version != f.version) {
        Diverge(absl::StrCat(FunctionName(slot), ": disabled/version differ from the model"));
      }
    }
    std::vector<std::string> order;
    for (const ModelResolver& r : ResolveOrder()) order.push_back(r.name);
    if (resolvers_->names() != order) Diverge("resolver names or order differ from the model");
  }

  framekit::AppContext app_;
  std::shared_ptr<framekit::FrameResolvers> resolvers_ =
      std::make_shared<framekit::FrameResolvers>();
  std::unique_ptr<fd::FaultMonitor> monitor_;
  std::shared_ptr<fd::Interceptors> interceptors_;
  std::unique_ptr<fd::FunctionExecutor> executor_;

  std::map<std::string, ModelResolver> resolvers_model_;
  std::map<int, ModelFunction> functions_;
  std::optional<int> interceptor_target_;
  std::map<std::string, std::uint64_t> monitor_faults_;  // what the monitor holds now
  std::uint64_t monitor_total_ = 0;                      // every fault ever reported

  // Drops `name`'s entries and those of its versions ("name@..."), as FaultMonitor::Forget
  // and a new version's first fault do.
  void ForgetModel(const std::string& name) {
    for (auto it = monitor_faults_.begin(); it != monitor_faults_.end();) {
      const bool match = it->first == name || it->first.rfind(name + "@", 0) == 0;
      it = match ? monitor_faults_.erase(it) : std::next(it);
    }
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 4 * 256) return 0;  // keep each input fast
  Harness harness;
  for (std::size_t i = 0; i + 4 <= size; i += 4) harness.Apply(data + i);
  harness.Finish();
  return 0;
}
