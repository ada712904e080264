#include "host_config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "framekit/base/internal/strings.h"
#include "framekit/base/status_macros.h"
#include "framekit/lua/lua_function.h"
#include "framekit/lua/lua_process.h"

namespace framekit::host {

using base_internal::AsAbsl;
namespace {

constexpr std::string_view kDefaultConfig = R"yaml(# framekit-host: the built-in configuration.
networks:
  default: lo-direct          # calls that name no network take this one
  clearnet: deny              # no call may go out unrouted
  list:
    - id: lo-direct           # a direct route bound to a loopback source address
      type: direct
      bind: 127.0.0.7
    - id: lo-proxy            # a SOCKS5 overlay: the host starts microsocks for it
      type: socks5
      launch: microsocks
      egress: 127.0.0.5       # the proxy's outgoing address, as the echo server sees it
functions:
  - name: echo
    handler: echo
  - name: fetch               # dials the echo server through the call's network
    handler: fetch
  - name: fetch-via-proxy     # same handler, proxied by default (its default options)
    handler: fetch
    defaults: {network: lo-proxy}
  - name: slow                # overruns its deadline, then honours the stop token
    handler: slow
    sleep_ms: 5000
  - name: faulty              # throws on every 5th call
    handler: faulty
    fault_every: 5
  - name: lua-fetch           # Lua: reads its frame, fetches through the call's route
    runtime: lua
    expect: fetch
    source: |
      return function(payload, frame)
        local tenant = frame["host.tenant"]    -- the host's resolver, from the caller
        local network = frame["net.network"]   -- the overlay's choice for this call
        local source = host.fetch()            -- dials the echo server on that network
        return "network=" .. network .. " source=" .. source .. " tenant=" .. tenant
      end
  - name: lua-spin            # Lua: loops forever; ended at its 50 ms timeout
    runtime: lua
    expect: timeout
    timeout_ms: 50
    source: |
      return function(payload)
        local n = 0
        while true do n = n + 1 end
      end
  - name: lua-bomb            # Lua: allocates past its 1 MiB cap
    runtime: lua
    expect: memory
    memory_kb: 1024
    source: |
      return function(payload)
        local hoard = {}
        for i = 1, math.maxinteger do hoard[i] = string.rep("x", 1000) .. i end
      end
processes:
  - name: ticker
    kind: ticker
    interval_ms: 5
  - name: poller              # faults on every 7th poll
    kind: poller
    interval_ms: 5
    fault_every: 7
  - name: lua-counter         # Lua: every 9th poll loops forever; its 20 ms step budget ends it
    runtime: lua
    interval_ms: 5
    step_ms: 20
    source: |
      local polls = 0            -- lives as long as the process
      return {
        poll = function(message, frame)
          polls = polls + 1
          if polls % 9 == 0 then
            host.injecting()
            while true do end
          end
          host.tick()
          return "idle"
        end,
      }
workload:
  calls: 300
  threads: 4
  deadline_ms: 300
  mix: {echo: 4, fetch: 3, fetch-via-proxy: 1, slow: 1, faulty: 2, lua-fetch: 2, lua-spin: 1,
        lua-bomb: 1}
  fetch_networks: [lo-proxy, lo-direct, default]
  tenants: [acme, globex]
)yaml";

// Errors with position and key path.
class Reader {
 public:
  explicit Reader(std::string_view source) : source_(source) {}

  absl::Status Error(const YAML::Node& node, std::string_view key, std::string_view problem) const {
    const YAML::Mark mark = node.Mark();
    std::string where(source_);
    if (mark.line >= 0) absl::StrAppend(&where, ":", mark.line + 1, ":", mark.column + 1);
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": ", AsAbsl(key), ": ", AsAbsl(problem)));
  }

  // Refuses keys of `map` other than `allowed`.
  absl::Status OnlyKeys(const YAML::Node& map, std::string_view path,
                        std::initializer_list<std::string_view> allowed) const {
    if (!map.IsMap()) return Error(map, path, "expected a mapping");
    for (const auto& item : map) {
      const std::string key = item.first.as<std::string>();
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
        std::vector<std::string> names(allowed.begin(), allowed.end());
        return Error(
            item.first, Join(path, key),
            absl::StrCat("unknown key (expected one of: ", absl::StrJoin(names, ", "), ")"));
      }
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> String(const YAML::Node& map, std::string_view path,
                                     std::string_view key, bool required,
                                     std::string fallback = "") const {
    const YAML::Node node = map[std::string(key)];
    if (!node) {
      if (required) return Error(map, Join(path, key), "missing");
      return fallback;
    }
    if (!node.IsScalar()) return Error(node, Join(path, key), "expected a string");
    return node.as<std::string>();
  }

  absl::StatusOr<std::int64_t> Int(const YAML::Node& map, std::string_view path,
                                   std::string_view key, bool required, std::int64_t fallback,
                                   std::int64_t min, std::int64_t max) const {
    const YAML::Node node = map[std::string(key)];
    if (!node) {
      if (required) return Error(map, Join(path, key), "missing");
      return fallback;
    }
    std::int64_t value = 0;
    if (!node.IsScalar() || !YAML::convert<std::int64_t>::decode(node, value)) {
      return Error(node, Join(path, key), "expected an integer");
    }
    if (value < min || value > max) {
      return Error(node, Join(path, key), absl::StrCat("must be in [", min, ", ", max, "]"));
    }
    return value;
  }

  static std::string Join(std::string_view path, std::string_view key) {
    return path.empty() ? std::string(key) : absl::StrCat(AsAbsl(path), ".", AsAbsl(key));
  }
  static std::string Index(std::string_view path, std::size_t i) {
    return absl::StrCat(AsAbsl(path), "[", i, "]");
  }

 private:
  std::string_view source_;
};

// A socks5 entry of networks.list (its id already checked): a launched microsocks, or a
// proxy at host:port.
absl::Status ParseSocks5(const Reader& r, const YAML::Node& item, const std::string& path,
                         const std::string& id, HostConfig& config) {
  std::string launch, egress, host, username, password;
  FRAMEKIT_ASSIGN_OR_RETURN(launch, r.String(item, path, "launch", false));
  FRAMEKIT_ASSIGN_OR_RETURN(username, r.String(item, path, "username", false));
  FRAMEKIT_ASSIGN_OR_RETURN(password, r.String(item, path, "password", false));
  if (!launch.empty()) {
    if (launch != "microsocks") {
      return r.Error(item["launch"], Reader::Join(path, "launch"),
                     "only microsocks can be launched");
    }
    if (item["host"] || item["port"]) {
      return r.Error(item, path, "a launched proxy takes no host or port (the host picks them)");
    }
    FRAMEKIT_ASSIGN_OR_RETURN(egress, r.String(item, path, "egress", false));
    if (!egress.empty() && !net::IsValidIpAddress(egress)) {
      return r.Error(item["egress"], Reader::Join(path, "egress"), "expected an IP address");
    }
    config.launched_proxies.push_back({id, egress});
    // The port is filled in when the proxy has started.
    config.networks.networks.push_back(
        net::Network::Socks5(id, "127.0.0.1", 1, username, password));
  } else {
    std::int64_t port = 0;
    FRAMEKIT_ASSIGN_OR_RETURN(host, r.String(item, path, "host", true));
    FRAMEKIT_ASSIGN_OR_RETURN(port, r.Int(item, path, "port", true, 0, 1, 65535));
    if (!net::IsValidHost(host)) {
      return r.Error(item["host"], Reader::Join(path, "host"),
                     "expected a host name or IP address");
    }
    config.networks.networks.push_back(
        net::Network::Socks5(id, host, static_cast<std::uint16_t>(port), username, password));
  }
  return absl::OkStatus();
}

// Entry `i` of networks.list; `ids` holds the ids of the entries before it.
absl::Status ParseNetworkEntry(const Reader& r, const YAML::Node& item, std::size_t i,
                               std::set<std::string>& ids, HostConfig& config) {
  const std::string path = Reader::Index("networks.list", i);
  FRAMEKIT_RETURN_IF_ERROR(r.OnlyKeys(
      item, path,
      {"id", "type", "bind", "host", "port", "username", "password", "launch", "egress"}));
  std::string id, type;
  FRAMEKIT_ASSIGN_OR_RETURN(id, r.String(item, path, "id", true));
  FRAMEKIT_ASSIGN_OR_RETURN(type, r.String(item, path, "type", true));
  if (!net::IsValidNetworkId(id)) {
    return r.Error(item["id"], Reader::Join(path, "id"),
                   "invalid network id (lower-case letters, digits, '.', '_', '-'; at most 64)");
  }
  if (!ids.insert(id).second) {
    return r.Error(item["id"], Reader::Join(path, "id"),
                   absl::StrCat("duplicate network id \"", id, "\""));
  }
  if (type == "direct") {
    std::string bind;
    FRAMEKIT_ASSIGN_OR_RETURN(bind, r.String(item, path, "bind", false));
    if (!bind.empty() && !net::IsValidIpAddress(bind)) {
      return r.Error(item["bind"], Reader::Join(path, "bind"), "expected an IP address");
    }
    config.networks.networks.push_back(net::Network::Direct(id, bind));
    return absl::OkStatus();
  }
  if (type == "socks5") return ParseSocks5(r, item, path, id, config);
  return r.Error(item["type"], Reader::Join(path, "type"), "expected direct or socks5");
}

absl::Status ParseNetworks(const Reader& r, const YAML::Node& node, HostConfig& config) {
  FRAMEKIT_RETURN_IF_ERROR(r.OnlyKeys(node, "networks", {"default", "clearnet", "list"}));
  FRAMEKIT_ASSIGN_OR_RETURN(config.networks.app_default,
                            r.String(node, "networks", "default", false));
  std::string clearnet;
  FRAMEKIT_ASSIGN_OR_RETURN(clearnet, r.String(node, "networks", "clearnet", false, "deny"));
  if (clearnet != "allow" && clearnet != "deny") {
    return r.Error(node["clearnet"], "networks.clearnet", "expected allow or deny");
  }
  config.networks.clearnet =
      clearnet == "allow" ? net::ClearnetPolicy::kAllow : net::ClearnetPolicy::kDeny;
  const YAML::Node list = node["list"];
  if (!list) return r.Error(node, "networks.list", "missing");
  if (!list.IsSequence()) return r.Error(list, "networks.list", "expected a list");
  std::set<std::string> ids;
  for (std::size_t i = 0; i < list.size(); ++i) {
    FRAMEKIT_RETURN_IF_ERROR(ParseNetworkEntry(r, list[i], i, ids, config));
  }
  if (!config.networks.app_default.empty() && !ids.contains(config.networks.app_default)) {
    return r.Error(node["default"], "networks.default",
                   absl::StrCat("unknown network \"", config.networks.app_default, "\""));
  }
  return absl::OkStatus();
}

absl::StatusOr<Options> ParseDefaults(const Reader& r, const YAML::Node& node,
                                      std::string_view path) {
  Options options;
  if (!node.IsMap()) return r.Error(node, path, "expected a mapping of option names to values");
  for (const auto& item : node) {
    const std::string key = item.first.as<std::string>();
    const YAML::Node value = item.second;
    if (!value.IsScalar()) return r.Error(value, Reader::Join(path, key), "expected a scalar");
    std::int64_t i = 0;
    double d = 0;
    bool b = false;
    if (YAML::convert<std::int64_t>::decode(value, i)) {
      options.Set(key, i);
    } else if (YAML::convert<bool>::decode(value, b)) {
      options.Set(key, b);
    } else if (YAML::convert<double>::decode(value, d)) {
      options.Set(key, d);
    } else {
      options.Set(key, value.as<std::string>());
    }
  }
  return options;
}

// A Lua source: compiled here so that a syntax error names its line in the YAML file.
absl::Status CheckLuaSource(const Reader& r, const YAML::Node& item, const std::string& path,
                            const std::string& name, const std::string& source, bool process) {
  const YAML::Node node = item["source"];
  const absl::Status compiled =
      process ? lua::LuaProcessSpec(name, source).status()
              : lua::LuaFunction::Compile(absl::StrCat(name, ".lua"), source).status();
  if (compiled.ok()) return absl::OkStatus();
  // The message reads "CHUNK:LINE: problem", LINE counting within the script.
  return r.Error(node, Reader::Join(path, "source"), std::string(compiled.message()));
}

// Entry `i` of functions (its name already checked) that runs Lua.
absl::Status ParseLuaFunction(const Reader& r, const YAML::Node& item, const std::string& path,
                              FunctionConfig& f) {
  if (item["handler"] || item["fault_every"] || item["sleep_ms"]) {
    return r.Error(item, path,
                   "a lua function takes source, expect, memory_kb and timeout_ms (not handler, "
                   "fault_every or sleep_ms)");
  }
  f.handler = "lua";
  FRAMEKIT_ASSIGN_OR_RETURN(f.source, r.String(item, path, "source", true));
  FRAMEKIT_ASSIGN_OR_RETURN(f.expect, r.String(item, path, "expect", false, "ok"));
  if (f.expect != "ok" && f.expect != "fetch" && f.expect != "timeout" && f.expect != "memory") {
    return r.Error(item["expect"], Reader::Join(path, "expect"),
                   "expected ok, fetch, timeout or memory");
  }
  std::int64_t memory_kb = 0, timeout_ms = 0;
  FRAMEKIT_ASSIGN_OR_RETURN(memory_kb, r.Int(item, path, "memory_kb", false, 0, 64, 1 << 20));
  FRAMEKIT_ASSIGN_OR_RETURN(timeout_ms, r.Int(item, path, "timeout_ms", false, 0, 1, 600000));
  f.memory_bytes = static_cast<std::size_t>(memory_kb) << 10;
  f.timeout = std::chrono::milliseconds(timeout_ms);
  return CheckLuaSource(r, item, path, f.name, f.source, /*process=*/false);
}

absl::Status ParseFunctions(const Reader& r, const YAML::Node& list, HostConfig& config) {
  if (!list.IsSequence()) return r.Error(list, "functions", "expected a list");
  std::set<std::string> names;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const YAML::Node item = list[i];
    const std::string path = Reader::Index("functions", i);
    FRAMEKIT_RETURN_IF_ERROR(
        r.OnlyKeys(item, path,
                   {"name", "runtime", "handler", "defaults", "fault_every", "sleep_ms", "source",
                    "expect", "memory_kb", "timeout_ms"}));
    FunctionConfig f;
    FRAMEKIT_ASSIGN_OR_RETURN(f.name, r.String(item, path, "name", true));
    FRAMEKIT_ASSIGN_OR_RETURN(f.runtime, r.String(item, path, "runtime", false, "native"));
    if (!names.insert(f.name).second) {
      return r.Error(item["name"], Reader::Join(path, "name"),
                     absl::StrCat("duplicate function \"", f.name, "\""));
    }
    if (item["defaults"]) {
      FRAMEKIT_ASSIGN_OR_RETURN(f.defaults,
                                ParseDefaults(r, item["defaults"], Reader::Join(path, "defaults")));
    }
    if (f.runtime == "lua") {
      FRAMEKIT_RETURN_IF_ERROR(ParseLuaFunction(r, item, path, f));
      config.functions.push_back(std::move(f));
      continue;
    }
    if (f.runtime != "native") {
      return r.Error(item["runtime"], Reader::Join(path, "runtime"), "expected native or lua");
    }
    for (const char* lua_only : {"source", "expect", "memory_kb", "timeout_ms"}) {
      if (item[lua_only]) {
        return r.Error(item[lua_only], Reader::Join(path, lua_only),
                       "only a lua function (runtime: lua) takes this key");
      }
    }
    FRAMEKIT_ASSIGN_OR_RETURN(f.handler, r.String(item, path, "handler", true));
    const std::set<std::string> handlers = {"echo", "fetch", "slow", "faulty"};
    if (!handlers.contains(f.handler)) {
      return r.Error(item["handler"], Reader::Join(path, "handler"),
                     "expected echo, fetch, slow or faulty");
    }
    std::int64_t fault_every = 0, sleep_ms = 0;
    FRAMEKIT_ASSIGN_OR_RETURN(
        fault_every, r.Int(item, path, "fault_every", f.handler == "faulty", 0, 1, 1000000));
    FRAMEKIT_ASSIGN_OR_RETURN(sleep_ms,
                              r.Int(item, path, "sleep_ms", f.handler == "slow", 0, 1, 600000));
    f.fault_every = static_cast<int>(fault_every);
    f.sleep = std::chrono::milliseconds(sleep_ms);
    config.functions.push_back(std::move(f));
  }
  return absl::OkStatus();
}

absl::Status ParseProcesses(const Reader& r, const YAML::Node& list, HostConfig& config) {
  if (!list.IsSequence()) return r.Error(list, "processes", "expected a list");
  std::set<std::string> names;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const YAML::Node item = list[i];
    const std::string path = Reader::Index("processes", i);
    FRAMEKIT_RETURN_IF_ERROR(
        r.OnlyKeys(item, path,
                   {"name", "runtime", "kind", "interval_ms", "fault_every", "source", "step_ms"}));
    ProcessConfig p;
    FRAMEKIT_ASSIGN_OR_RETURN(p.name, r.String(item, path, "name", true));
    if (!names.insert(p.name).second) {
      return r.Error(item["name"], Reader::Join(path, "name"),
                     absl::StrCat("duplicate process \"", p.name, "\""));
    }
    std::string runtime;
    FRAMEKIT_ASSIGN_OR_RETURN(runtime, r.String(item, path, "runtime", false, "native"));
    std::int64_t interval = 0, fault_every = 0;
    FRAMEKIT_ASSIGN_OR_RETURN(interval, r.Int(item, path, "interval_ms", false, 10, 1, 60000));
    p.interval = std::chrono::milliseconds(interval);
    if (runtime == "lua") {
      if (item["kind"] || item["fault_every"]) {
        return r.Error(item, path,
                       "a lua process takes source and step_ms (not kind or "
                       "fault_every)");
      }
      p.kind = "lua";
      std::int64_t step_ms = 0;
      FRAMEKIT_ASSIGN_OR_RETURN(p.source, r.String(item, path, "source", true));
      FRAMEKIT_ASSIGN_OR_RETURN(step_ms, r.Int(item, path, "step_ms", false, 0, 1, 60000));
      p.step = std::chrono::milliseconds(step_ms);
      FRAMEKIT_RETURN_IF_ERROR(CheckLuaSource(r, item, path, p.name, p.source, /*process=*/true));
      config.processes.push_back(std::move(p));
      continue;
    }
    if (runtime != "native") {
      return r.Error(item["runtime"], Reader::Join(path, "runtime"), "expected native or lua");
    }
    for (const char* lua_only : {"source", "step_ms"}) {
      if (item[lua_only]) {
        return r.Error(item[lua_only], Reader::Join(path, lua_only),
                       "only a lua process (runtime: lua) takes this key");
      }
    }
    FRAMEKIT_ASSIGN_OR_RETURN(p.kind, r.String(item, path, "kind", true));
    if (p.kind != "ticker" && p.kind != "poller") {
      return r.Error(item["kind"], Reader::Join(path, "kind"), "expected ticker or poller");
    }
    FRAMEKIT_ASSIGN_OR_RETURN(fault_every,
                              r.Int(item, path, "fault_every", p.kind == "poller", 0, 1, 1000000));
    p.fault_every = static_cast<int>(fault_every);
    config.processes.push_back(std::move(p));
  }
  return absl::OkStatus();
}

absl::Status ParseWorkload(const Reader& r, const YAML::Node& node, HostConfig& config) {
  FRAMEKIT_RETURN_IF_ERROR(r.OnlyKeys(
      node, "workload", {"calls", "threads", "deadline_ms", "mix", "fetch_networks", "tenants"}));
  WorkloadConfig& w = config.workload;
  std::int64_t calls = 0, threads = 0, deadline = 0;
  FRAMEKIT_ASSIGN_OR_RETURN(calls, r.Int(node, "workload", "calls", true, 0, 1, 10000000));
  FRAMEKIT_ASSIGN_OR_RETURN(threads, r.Int(node, "workload", "threads", false, 4, 1, 256));
  FRAMEKIT_ASSIGN_OR_RETURN(deadline,
                            r.Int(node, "workload", "deadline_ms", false, 500, 1, 600000));
  w.calls = static_cast<int>(calls);
  w.threads = static_cast<int>(threads);
  w.deadline = std::chrono::milliseconds(deadline);
  const YAML::Node mix = node["mix"];
  if (!mix) return r.Error(node, "workload.mix", "missing");
  if (!mix.IsMap() || mix.size() == 0)
    return r.Error(mix, "workload.mix",
                   "expected a non-empty mapping of function names to weights");
  for (const auto& item : mix) {
    const std::string name = item.first.as<std::string>();
    const std::string path = Reader::Join("workload.mix", name);
    const bool known = std::any_of(config.functions.begin(), config.functions.end(),
                                   [&](const FunctionConfig& f) { return f.name == name; });
    if (!known) return r.Error(item.first, path, absl::StrCat("unknown function \"", name, "\""));
    std::int64_t weight = 0;
    if (!item.second.IsScalar() || !YAML::convert<std::int64_t>::decode(item.second, weight) ||
        weight < 1 || weight > 1000) {
      return r.Error(item.second, path, "expected a weight in [1, 1000]");
    }
    w.mix.emplace_back(name, static_cast<int>(weight));
  }
  for (const char* key : {"fetch_networks", "tenants"}) {
    const YAML::Node list = node[key];
    if (!list) continue;
    const std::string path = Reader::Join("workload", key);
    if (!list.IsSequence()) return r.Error(list, path, "expected a list of strings");
    std::vector<std::string> values;
    for (std::size_t i = 0; i < list.size(); ++i) {
      if (!list[i].IsScalar()) return r.Error(list[i], Reader::Index(path, i), "expected a string");
      values.push_back(list[i].as<std::string>());
    }
    if (std::string_view(key) == "fetch_networks") {
      for (std::size_t i = 0; i < values.size(); ++i) {
        if (values[i] == "default") continue;
        const bool known =
            std::any_of(config.networks.networks.begin(), config.networks.networks.end(),
                        [&](const net::Network& n) { return n.id == values[i]; });
        if (!known) {
          return r.Error(list[i], Reader::Index(path, i),
                         absl::StrCat("unknown network \"", values[i], "\""));
        }
      }
      w.fetch_networks = std::move(values);
    } else {
      if (values.empty()) return r.Error(list, path, "expected at least one tenant");
      w.tenants = std::move(values);
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string_view DefaultConfigYaml() { return kDefaultConfig; }

absl::StatusOr<HostConfig> ParseHostConfig(std::string_view yaml, std::string_view source) {
  const Reader r(source);
  HostConfig config;
  config.source = std::string(source);
  // yaml-cpp reports errors by exception; this is the one place they are turned into a status.
  try {
    const YAML::Node root = YAML::Load(std::string(yaml));
    if (!root.IsMap()) return r.Error(root, "(top level)", "expected a mapping");
    FRAMEKIT_RETURN_IF_ERROR(
        r.OnlyKeys(root, "", {"networks", "functions", "processes", "workload"}));
    for (const char* key : {"networks", "functions", "workload"}) {
      if (!root[key]) return r.Error(root, key, "missing");
    }
    FRAMEKIT_RETURN_IF_ERROR(ParseNetworks(r, root["networks"], config));
    FRAMEKIT_RETURN_IF_ERROR(ParseFunctions(r, root["functions"], config));
    if (root["processes"]) FRAMEKIT_RETURN_IF_ERROR(ParseProcesses(r, root["processes"], config));
    FRAMEKIT_RETURN_IF_ERROR(ParseWorkload(r, root["workload"], config));
  } catch (const YAML::Exception& e) {
    const std::string where = e.mark.is_null() ? std::string(source)
                                               : absl::StrCat(AsAbsl(source), ":", e.mark.line + 1,
                                                              ":", e.mark.column + 1);
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", e.msg));
  }
  return config;
}

}  // namespace framekit::host
