// The demo host: boots an application from a HostConfig and runs its workload through every part
// of framekit: the boot sequence, the network overlay and a resolver of its own, the function
// executor (deadlines, fault isolation, fault policy) and the process manager, against a real
// loopback echo server and, when installed, a real SOCKS5 proxy (microsocks).
//
// Example:
//   absl::StatusOr<HostConfig> config = ParseHostConfig(DefaultConfigYaml(), "<built-in>");
//   absl::StatusOr<std::unique_ptr<Host>> host = Host::Start(*config);
//   absl::StatusOr<Summary> summary = (*host)->Run(nullptr);
//   std::cout << SummaryText(*summary);
//   return summary->ok() ? 0 : 1;
#ifndef FRAMEKIT_EXAMPLES_HOST_HOST_H_
#define FRAMEKIT_EXAMPLES_HOST_HOST_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "host_config.h"
#include "isolated.h"
#include "nlohmann/json.hpp"

namespace framekit::host {

struct FunctionSummary {
  std::string name = {};
  std::string runtime = {};  // native | lua
  std::string handler = {};  // native: echo | fetch | slow | faulty; lua: what it must end with
  int calls = 0;
  int ok = 0;
  int faults = 0;    // calls that failed with an isolated fault (ExtensionPanic)
  int timeouts = 0;  // calls that failed with DeadlineExceeded
  int refused = 0;   // calls its bulkhead refused (ResourceExhausted, native code)
  int limited = 0;   // calls ended by a runtime limit (ResourceExhausted, Lua: memory, output)
  int other_errors = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  std::uint64_t executor_faults = 0;  // what the executor counted
  std::uint64_t executor_timeouts = 0;
  std::uint64_t executor_refusals = 0;
  // What the code reported (RunStats), over every call: native code reports none.
  std::uint64_t peak_memory_bytes = 0;  // the largest peak of any call
  std::uint64_t host_calls = 0;         // calls from the code into the host, in total
};

struct NetworkSummary {
  std::string id = {};
  std::string kind = {};             // direct | socks5
  std::string expected_source = {};  // the source address a call on it must arrive from
  int calls = 0;
  std::map<std::string, int> sources = {};  // source address seen by the echo server -> calls
};

struct ProcessSummary {
  std::string name = {};
  std::string kind = {};
  std::string state = {};
  std::uint64_t faults = 0;           // poll faults the manager counted
  std::uint64_t injected_faults = 0;  // poll faults the process threw
  std::uint64_t ticks = 0;            // successful polls
  std::string exit = {};              // exit status
};

struct Summary {
  int calls = 0;
  double seconds = 0;
  std::vector<FunctionSummary> functions;
  std::vector<NetworkSummary> networks;
  std::vector<ProcessSummary> processes;
  std::uint64_t isolated_faults = 0;  // every fault the fault monitor counted
  std::uint64_t alarms = 0;
  IsolatedSummary isolated;             // the functions in worker processes (isolated.h)
  std::vector<std::string> notes;       // e.g. a network that could not be started
  std::vector<std::string> violations;  // every broken promise; empty means the run passed
  bool ok() const { return violations.empty(); }
};

class Host {
 public:
  // Starts the echo server and the launched proxies, then boots the app (components
  // "resolvers", "net", "tenant"), registers the functions and starts the processes. A missing
  // microsocks is not an error: its network is dropped, with a note saying so.
  static absl::StatusOr<std::unique_ptr<Host>> Start(HostConfig config);
  ~Host();
  Host(const Host&) = delete;
  Host& operator=(const Host&) = delete;

  // Runs the workload; `progress(done, total)` is called now and then (may be empty). Stops the
  // processes afterwards and checks every promise (see Summary::violations).
  absl::StatusOr<Summary> Run(const std::function<void(int done, int total)>& progress);

  const std::vector<std::string>& notes() const;

 private:
  struct State;
  explicit Host(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

std::string SummaryText(const Summary& summary);
nlohmann::json SummaryJson(const Summary& summary);

}  // namespace framekit::host

#endif  // FRAMEKIT_EXAMPLES_HOST_HOST_H_
