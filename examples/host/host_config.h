// The demo host's configuration: networks, functions, processes and the workload, read from
// YAML. Every error names the source, the line and the key.
//
// Example (the built-in default is DefaultConfigYaml()):
//   networks:
//     default: lo-direct
//     clearnet: deny
//     list:
//       - {id: lo-direct, type: direct, bind: 127.0.0.7}
//       - {id: lo-proxy, type: socks5, launch: microsocks, egress: 127.0.0.5}
//   functions:
//     - {name: echo, handler: echo}
//     - name: hello
//       runtime: lua
//       source: |
//         return function(payload, frame) return "hello " .. payload end
//   workload: {calls: 100, threads: 4, deadline_ms: 500, mix: {echo: 1}}
#ifndef FRAMEKIT_EXAMPLES_HOST_HOST_CONFIG_H_
#define FRAMEKIT_EXAMPLES_HOST_HOST_CONFIG_H_

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "framekit/ctx/options.h"
#include "framekit/net/network.h"

namespace framekit::host {

// A SOCKS5 network whose proxy the host starts itself (Debian's microsocks).
struct LaunchedProxy {
  std::string network_id;
  std::string egress;  // the proxy's outgoing source address
};

struct FunctionConfig {
  std::string name;
  std::string runtime = "native";  // native | lua
  std::string handler;             // native: echo | fetch | slow | faulty; "lua" for lua
  Options defaults;
  int fault_every = 0;                 // faulty: throws on every Nth call
  std::chrono::milliseconds sleep{0};  // slow: how long it would run without a deadline
  // lua: the chunk returning the handler (compiled at parse time to check it, again at Start),
  // what every call must end with, and the limits (0: lua::LuaLimits' default).
  //   expect: ok (any output) | fetch (its output reads "network=N source=S tenant=T", checked
  //           like the native fetch's, and T is the caller's tenant) | timeout (DeadlineExceeded)
  //           | memory (ResourceExhausted)
  std::string source;
  std::string expect = "ok";
  std::size_t memory_bytes = 0;
  std::chrono::milliseconds timeout{0};
};

struct ProcessConfig {
  std::string name;
  std::string kind;  // ticker | poller | lua
  std::chrono::milliseconds interval{10};
  int fault_every = 0;  // poller: throws on every Nth poll
  // lua (runtime: lua): the chunk returning {setup=, poll=, teardown=} and its per-step budget.
  // Its host functions: host.tick() counts a successful poll, host.injecting() announces a poll
  // that is about to fault (both checked against the manager's counts).
  std::string source;
  std::chrono::milliseconds step{0};  // 0: lua::LuaProcessLimits' default
};

struct WorkloadConfig {
  int calls = 200;
  int threads = 4;
  std::chrono::milliseconds deadline{500};
  std::vector<std::pair<std::string, int>> mix;  // function name, weight (> 0)
  // Network option for successive fetch calls; "default" means no option (the app default).
  std::vector<std::string> fetch_networks;
  std::vector<std::string> tenants = {"acme"};
};

struct HostConfig {
  std::string source;  // where it was read from, for messages
  net::NetworkConfig networks;
  std::vector<LaunchedProxy> launched_proxies;
  std::vector<FunctionConfig> functions;
  std::vector<ProcessConfig> processes;
  WorkloadConfig workload;
};

// The configuration compiled into framekit-host.
std::string_view DefaultConfigYaml();

// Parses `yaml`. InvalidArgument with "SOURCE:LINE:COLUMN: KEY: problem" for malformed YAML,
// unknown or missing keys, wrong types, duplicate ids or names, unknown handlers, networks or
// functions referenced but not defined, and values out of range.
absl::StatusOr<HostConfig> ParseHostConfig(std::string_view yaml, std::string_view source);

}  // namespace framekit::host

#endif  // FRAMEKIT_EXAMPLES_HOST_HOST_CONFIG_H_
