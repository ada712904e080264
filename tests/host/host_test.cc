// The demo host end to end: in-process, as the framekit-host binary (exit status and --json
// summary), and with bad configurations.
#include "host.h"

#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "framekit/net/testing/loopback.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "host_config.h"
#include "support/status_matchers.h"

namespace framekit::host {
namespace {

using ::framekit::testing::IsOk;

using ::testing::HasSubstr;

struct Ran {
  int exit_code = -1;
  std::string out;
};

// Runs a shell command, capturing stdout (stderr goes to a file the caller may read).
Ran RunCommand(const std::string& command) {
  Ran ran;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return ran;
  char buffer[4096];
  std::size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) ran.out.append(buffer, n);
  const int status = ::pclose(pipe);
  ran.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return ran;
}

HostConfig SmallDefault(int calls, int threads) {
  absl::StatusOr<HostConfig> config = ParseHostConfig(DefaultConfigYaml(), "<built-in>");
  EXPECT_THAT(config, IsOk()) << config.status();
  config->workload.calls = calls;
  config->workload.threads = threads;
  return *config;
}

// The invariants a summary must satisfy whatever the run: the counts add up.
void ExpectCountsAddUp(const nlohmann::json& j) {
  int calls = 0, fetched = 0;
  for (const auto& f : j["functions"]) {
    EXPECT_EQ(f["ok"].get<int>() + f["faults"].get<int>() + f["timeouts"].get<int>() +
                  f["refused"].get<int>() + f["limited"].get<int>() + f["other_errors"].get<int>(),
              f["calls"].get<int>())
        << f;
    calls += f["calls"].get<int>();
    if (f["handler"] == "fetch") fetched += f["ok"].get<int>();
    if (f["handler"] == "faulty") {
      EXPECT_EQ(f["faults"], f["executor_faults"]) << f;
      EXPECT_GT(f["faults"].get<int>(), 0) << "the workload injects faults";
    }
    if (f["handler"] == "slow") {
      // Each slow call times out, or is refused by the function's bulkhead while another of its
      // calls is still quarantined: never anything else.
      EXPECT_EQ(f["timeouts"].get<int>() + f["refused"].get<int>(), f["calls"].get<int>()) << f;
      EXPECT_EQ(f["other_errors"], 0) << f;
      EXPECT_EQ(f["refused"], f["executor_refusals"]) << f;
      EXPECT_GT(f["timeouts"].get<int>(), 0) << f;
      EXPECT_EQ(f["timeouts"], f["executor_timeouts"]) << f;
    }
    if (f["handler"] == "echo") {
      EXPECT_EQ(f["ok"], f["calls"]) << f;
    }
    if (f["runtime"] == "native") {
      EXPECT_EQ(f["limited"], 0) << f;
      continue;
    }
    // Lua functions: preemptive, so never refused by a bulkhead; every call reports its heap.
    EXPECT_EQ(f["runtime"], "lua") << f;
    EXPECT_EQ(f["refused"], 0) << f;
    EXPECT_EQ(f["faults"], 0) << f;
    EXPECT_EQ(f["other_errors"], 0) << f;
    EXPECT_GT(f["peak_memory_bytes"].get<std::uint64_t>(), 0u) << f;
    if (f["handler"] == "fetch") {
      EXPECT_EQ(f["ok"], f["calls"]) << f;
      // Two frame reads and host.fetch() per call.
      EXPECT_EQ(f["host_calls"].get<std::uint64_t>(), 3u * f["calls"].get<std::uint64_t>()) << f;
    }
    if (f["handler"] == "timeout") {
      EXPECT_EQ(f["timeouts"], f["calls"]) << f;
      EXPECT_EQ(f["timeouts"], f["executor_timeouts"]) << f;
    }
    if (f["handler"] == "memory") {
      EXPECT_EQ(f["limited"], f["calls"]) << f;
      // It ran up to its 1 MiB cap, and no further.
      EXPECT_GT(f["peak_memory_bytes"].get<std::uint64_t>(), 1000u * 1024u) << f;
      EXPECT_LE(f["peak_memory_bytes"].get<std::uint64_t>(), 1024u * 1024u) << f;
    }
  }
  EXPECT_EQ(calls, j["calls"].get<int>());
  int routed = 0;
  for (const auto& n : j["networks"]) {
    int seen = 0;
    for (const auto& [source, count] : n["sources"].items()) {
      EXPECT_EQ(source, n["expected_source"].get<std::string>()) << n;
      seen += count.get<int>();
    }
    EXPECT_EQ(seen, n["calls"].get<int>()) << n;
    routed += n["calls"].get<int>();
  }
  // Every successful fetch took one of the configured networks.
  EXPECT_EQ(routed, fetched);
  for (const auto& p : j["processes"]) {
    EXPECT_EQ(p["state"], "exited") << p;
    EXPECT_EQ(p["faults"], p["injected_faults"]) << p;
    EXPECT_GT(p["polls_ok"].get<int>(), 0) << p;
  }
}

TEST(Host, DefaultWorkloadPassesInProcess) {
  absl::StatusOr<std::unique_ptr<Host>> host = Host::Start(SmallDefault(150, 3));
  ASSERT_THAT(host, IsOk()) << host.status();
  absl::StatusOr<Summary> summary = (*host)->Run(nullptr);
  ASSERT_THAT(summary, IsOk()) << summary.status();
  EXPECT_TRUE(summary->ok()) << SummaryText(*summary);  // a host Summary, not a status
  const nlohmann::json j = SummaryJson(*summary);
  ExpectCountsAddUp(j);
  // The default configuration runs three Lua functions and a Lua process, and each got calls.
  int lua_functions = 0;
  for (const auto& f : j["functions"]) {
    if (f["runtime"] != "lua") continue;
    ++lua_functions;
    EXPECT_GT(f["calls"].get<int>(), 0) << f;
  }
  EXPECT_EQ(lua_functions, 3);
  bool lua_process = false;
  for (const auto& p : j["processes"]) {
    if (p["kind"] != "lua") continue;
    lua_process = true;
    // Its injected infinite loops were each ended by the step budget and counted as a fault.
    EXPECT_GT(p["injected_faults"].get<int>(), 0) << p;
  }
  EXPECT_TRUE(lua_process);
  if (net::loopback::Socks5Proxy::Available()) {
    // Both networks carried traffic: lo-proxy arrives from the proxy's egress address.
    for (const auto& n : j["networks"]) {
      EXPECT_GT(n["calls"].get<int>(), 0) << n;
    }
  }
}

TEST(Host, BinaryPrintsJsonAndExitsZero) {
  const Ran ran =
      RunCommand(std::string(FRAMEKIT_HOST_BINARY) + " --json --calls 80 --threads 2 2>/dev/null");
  ASSERT_EQ(ran.exit_code, 0) << ran.out;
  const nlohmann::json j = nlohmann::json::parse(ran.out, nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(j.is_discarded()) << ran.out;
  EXPECT_EQ(j["ok"], true);
  EXPECT_EQ(j["calls"], 80);
  EXPECT_TRUE(j["violations"].empty());
  ExpectCountsAddUp(j);
}

struct BadConfig {
  const char* name;
  const char* yaml;
  std::vector<std::string> expected;  // substrings of the error
};

class HostBadConfig : public ::testing::TestWithParam<BadConfig> {};

TEST_P(HostBadConfig, IsRejectedWithLineAndKey) {
  const BadConfig& bad = GetParam();
  absl::StatusOr<HostConfig> config = ParseHostConfig(bad.yaml, "bad.yaml");
  ASSERT_THAT(config, ::testing::Not(IsOk()));
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  for (const std::string& part : bad.expected) {
    EXPECT_THAT(std::string(config.status().message()), HasSubstr(part));
  }
}

constexpr char kFunctions[] = "functions: [{name: echo, handler: echo}]\n";
constexpr char kWorkload[] = "workload: {calls: 10, mix: {echo: 1}}\n";

INSTANTIATE_TEST_SUITE_P(
    Cases, HostBadConfig,
    ::testing::Values(
        BadConfig{"UnknownDefaultNetwork",
                  "networks:\n  default: nowhere\n  list:\n    - {id: a, type: direct}\n"
                  "functions: [{name: echo, handler: echo}]\n"
                  "workload: {calls: 10, mix: {echo: 1}}\n",
                  {"bad.yaml:2:", "networks.default", "unknown network \"nowhere\""}},
        BadConfig{"DuplicateNetworkIds",
                  "networks:\n  list:\n    - {id: a, type: direct}\n    - {id: a, type: direct}\n"
                  "functions: [{name: echo, handler: echo}]\n"
                  "workload: {calls: 10, mix: {echo: 1}}\n",
                  {"bad.yaml:4:", "networks.list[1].id", "duplicate network id"}},
        BadConfig{"MissingHandler",
                  "networks: {list: []}\nfunctions:\n  - name: echo\n"
                  "workload: {calls: 10, mix: {echo: 1}}\n",
                  {"bad.yaml:3:", "functions[0].handler", "missing"}},
        BadConfig{"WrongType",
                  "networks: {list: []}\nfunctions: [{name: echo, handler: echo}]\n"
                  "workload:\n  calls: many\n  mix: {echo: 1}\n",
                  {"bad.yaml:4:", "workload.calls", "expected an integer"}},
        BadConfig{"UnknownKey",
                  "networks: {list: []}\nfunctions: [{name: echo, handler: echo, colour: red}]\n"
                  "workload: {calls: 10, mix: {echo: 1}}\n",
                  {"bad.yaml:2:", "functions[0].colour", "unknown key"}},
        BadConfig{"UnknownHandler",
                  "networks: {list: []}\nfunctions: [{name: x, handler: teleport}]\n"
                  "workload: {calls: 10, mix: {x: 1}}\n",
                  {"functions[0].handler", "expected echo, fetch, slow or faulty"}},
        BadConfig{"MixNamesUnknownFunction",
                  "networks: {list: []}\nfunctions: [{name: echo, handler: echo}]\n"
                  "workload: {calls: 10, mix: {ghost: 1}}\n",
                  {"bad.yaml:3:", "workload.mix.ghost", "unknown function"}},
        BadConfig{"InvalidNetworkId",
                  "networks: {list: [{id: Bad_ID, type: direct}]}\n"
                  "functions: [{name: echo, handler: echo}]\n"
                  "workload: {calls: 10, mix: {echo: 1}}\n",
                  {"bad.yaml:1:", "networks.list[0].id", "invalid network id"}},
        BadConfig{"BadBindAddress",
                  "networks: {list: [{id: a, type: direct, bind: 999.1.1.1}]}\n"
                  "functions: [{name: echo, handler: echo}]\n"
                  "workload: {calls: 10, mix: {echo: 1}}\n",
                  {"networks.list[0].bind", "expected an IP address"}},
        BadConfig{"PortOutOfRange",
                  "networks: {list: [{id: a, type: socks5, host: 127.0.0.1, port: 70000}]}\n"
                  "functions: [{name: echo, handler: echo}]\n"
                  "workload: {calls: 10, mix: {echo: 1}}\n",
                  {"networks.list[0].port", "must be in [1, 65535]"}},
        BadConfig{"MalformedYaml", "networks: [unclosed\n", {"bad.yaml:"}},
        BadConfig{
            "MissingWorkload", "networks: {list: []}\nfunctions: []\n", {"workload", "missing"}},
        BadConfig{"LuaSyntaxError",
                  "networks: {list: []}\nfunctions:\n  - name: broken\n    runtime: lua\n"
                  "    source: |\n      return function(p)\n        return p ..\n      end\n"
                  "workload: {calls: 10, mix: {broken: 1}}\n",
                  {"bad.yaml:5:", "functions[0].source", "broken.lua:3:"}},
        BadConfig{"LuaFunctionWithAHandler",
                  "networks: {list: []}\n"
                  "functions: [{name: x, runtime: lua, handler: echo, source: 'return print'}]\n"
                  "workload: {calls: 10, mix: {x: 1}}\n",
                  {"bad.yaml:2:", "functions[0]", "a lua function takes source"}},
        BadConfig{"LuaKeyOnANativeFunction",
                  "networks: {list: []}\n"
                  "functions: [{name: x, handler: echo, memory_kb: 64}]\n"
                  "workload: {calls: 10, mix: {x: 1}}\n",
                  {"functions[0].memory_kb", "only a lua function"}},
        BadConfig{"LuaUnknownExpectation",
                  "networks: {list: []}\n"
                  "functions: [{name: x, runtime: lua, expect: miracles, source: 'return print'}]\n"
                  "workload: {calls: 10, mix: {x: 1}}\n",
                  {"functions[0].expect", "expected ok, fetch, timeout or memory"}},
        BadConfig{"LuaMemoryTooSmall",
                  "networks: {list: []}\n"
                  "functions: [{name: x, runtime: lua, memory_kb: 1, source: 'return print'}]\n"
                  "workload: {calls: 10, mix: {x: 1}}\n",
                  {"functions[0].memory_kb", "must be in [64, 1048576]"}},
        BadConfig{"UnknownRuntime",
                  "networks: {list: []}\n"
                  "functions: [{name: x, runtime: wasm, handler: echo}]\n"
                  "workload: {calls: 10, mix: {x: 1}}\n",
                  {"functions[0].runtime", "expected native or lua"}},
        BadConfig{"LuaProcessSyntaxError",
                  "networks: {list: []}\nfunctions: [{name: echo, handler: echo}]\n"
                  "processes:\n  - name: p\n    runtime: lua\n    source: 'return {poll ='\n"
                  "workload: {calls: 10, mix: {echo: 1}}\n",
                  {"processes[0].source", "p:1:"}},
        BadConfig{"LuaProcessWithAKind",
                  "networks: {list: []}\nfunctions: [{name: echo, handler: echo}]\n"
                  "processes: [{name: p, runtime: lua, kind: ticker, source: 'return {}'}]\n"
                  "workload: {calls: 10, mix: {echo: 1}}\n",
                  {"processes[0]", "a lua process takes source"}}),
    [](const ::testing::TestParamInfo<BadConfig>& info) { return info.param.name; });

TEST(Host, BinaryRejectsABadConfigFileNamingIt) {
  const std::string path = ::testing::TempDir() + "/framekit_host_bad.yaml";
  {
    std::ofstream file(path);
    file << "networks:\n  default: nowhere\n  list: []\n" << kFunctions << kWorkload;
  }
  const Ran ran =
      RunCommand(std::string(FRAMEKIT_HOST_BINARY) + " --config " + path + " 2>&1 >/dev/null");
  EXPECT_EQ(ran.exit_code, 2);
  EXPECT_THAT(ran.out, HasSubstr(path + ":2:"));
  EXPECT_THAT(ran.out, HasSubstr("networks.default"));
}

TEST(Host, BinaryExitsTwoOnACommandLineError) {
  for (const char* args : {" --no-such-flag", " --calls 0", " --threads x", " --config"}) {
    const Ran ran = RunCommand(std::string(FRAMEKIT_HOST_BINARY) + args + " 2>&1");
    EXPECT_EQ(ran.exit_code, 2) << args << ": " << ran.out;
  }
  const Ran help = RunCommand(std::string(FRAMEKIT_HOST_BINARY) + " --help 2>/dev/null");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_THAT(help.out, HasSubstr("--print-config"));
}

// Tests that --print-config prints the configuration --config names, not the built-in one, and
// refuses one that does not parse.
TEST(Host, PrintConfigPrintsTheConfigurationInUse) {
  const Ran builtin = RunCommand(std::string(FRAMEKIT_HOST_BINARY) + " --print-config");
  ASSERT_EQ(builtin.exit_code, 0);
  EXPECT_EQ(builtin.out, std::string(DefaultConfigYaml()));

  const std::string path = ::testing::TempDir() + "/framekit_host_print.yaml";
  const std::string custom = std::string(DefaultConfigYaml()) + "# a custom configuration\n";
  {
    std::ofstream file(path);
    file << custom;
  }
  const Ran printed =
      RunCommand(std::string(FRAMEKIT_HOST_BINARY) + " --print-config --config " + path);
  EXPECT_EQ(printed.exit_code, 0);
  EXPECT_EQ(printed.out, custom);

  const std::string bad = ::testing::TempDir() + "/framekit_host_print_bad.yaml";
  {
    std::ofstream file(bad);
    file << "networks: [unclosed\n";
  }
  const Ran refused = RunCommand(std::string(FRAMEKIT_HOST_BINARY) + " --print-config --config " +
                                 bad + " 2>/dev/null");
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_EQ(refused.out, "");
}

TEST(Host, BootFailureNamesTheComponent) {
  HostConfig config = SmallDefault(10, 1);
  // Bypass the parser's check: the network component itself must refuse an unknown default.
  config.networks.app_default = "nowhere";
  absl::StatusOr<std::unique_ptr<Host>> host = Host::Start(config);
  ASSERT_THAT(host, ::testing::Not(IsOk()));
  EXPECT_THAT(std::string(host.status().message()), HasSubstr("boot component \"net\""));
}

}  // namespace
}  // namespace framekit::host
