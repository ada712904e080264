// framekit-host: boots an application from a YAML configuration and runs a workload through
// every part of framekit, then prints what happened. With no arguments it uses the built-in
// configuration (--print-config shows it).
//
// Exit status: 0 when every healthy call succeeded on the network its options selected and every
// injected fault was isolated and counted (and for --help and --print-config); 1 when a promise
// was broken; 2 for a command-line, configuration or boot error.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "CLI/CLI.hpp"
#include "host.h"
#include "host_config.h"
#include "two_nodes.h"

int main(int argc, char** argv) {
  CLI::App cli{"framekit-host: boots an app from YAML and runs a workload through framekit"};
  std::string config_path;
  int calls = 0;
  int threads = 0;
  bool json = false;
  bool print_config = false;
  cli.add_option("--config", config_path, "YAML configuration file (default: built in)")
      ->check(CLI::ExistingFile);
  cli.add_option("--calls", calls, "number of calls (overrides workload.calls)")
      ->check(CLI::Range(1, 10000000));
  cli.add_option("--threads", threads, "calling threads (overrides workload.threads)")
      ->check(CLI::Range(1, 256));
  cli.add_flag("--json", json, "print the summary as JSON");
  cli.add_flag("--print-config", print_config,
               "print the configuration (the built-in one, or --config's) and exit");
  bool two_nodes = false;
  cli.add_flag("--two-nodes", two_nodes,
               "run as two nodes on loopback instead: node A's \"profile\" is node B's, over "
               "gRPC (--calls sets the number of calls, default 100)");
  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 prints help (exit 0) or the error; every command-line error exits 2, as documented.
    const int code = cli.exit(e);
    return code == 0 ? 0 : 2;
  }

  if (two_nodes) {
    absl::StatusOr<framekit::host::TwoNodeSummary> summary =
        framekit::host::RunTwoNodes(calls > 0 ? calls : 100);
    if (!summary.ok()) {
      std::cerr << "framekit-host: two nodes: " << summary.status() << "\n";
      return 2;
    }
    std::cout << framekit::host::TwoNodeSummaryText(*summary);
    return summary->ok_all() ? 0 : 1;
  }

  std::string text(framekit::host::DefaultConfigYaml());
  std::string source = "<built-in configuration>";
  if (!config_path.empty()) {
    std::ifstream file(config_path);
    std::stringstream buffer;
    buffer << file.rdbuf();
    if (!file) {
      std::cerr << "framekit-host: cannot read " << config_path << "\n";
      return 2;
    }
    text = buffer.str();
    source = config_path;
  }
  absl::StatusOr<framekit::host::HostConfig> config = framekit::host::ParseHostConfig(text, source);
  if (!config.ok()) {
    std::cerr << "framekit-host: configuration error: " << config.status().message() << "\n";
    return 2;
  }
  if (print_config) {
    std::cout << text;
    return 0;
  }
  if (calls > 0) config->workload.calls = calls;
  if (threads > 0) config->workload.threads = threads;

  absl::StatusOr<std::unique_ptr<framekit::host::Host>> host =
      framekit::host::Host::Start(*std::move(config));
  if (!host.ok()) {
    std::cerr << "framekit-host: boot failed: " << host.status().message() << "\n";
    return 2;
  }
  for (const std::string& note : (*host)->notes()) std::cerr << "framekit-host: " << note << "\n";

  // A progress line on a terminal; nothing when stderr is not one.
  const bool terminal = ::isatty(STDERR_FILENO) == 1;
  auto progress = [terminal](int done, int total) {
    if (!terminal) return;
    std::fprintf(stderr, "\r  %d/%d calls (%d%%)", done, total,
                 total == 0 ? 100 : done * 100 / total);
    if (done == total) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  };
  absl::StatusOr<framekit::host::Summary> summary = (*host)->Run(progress);
  if (!summary.ok()) {
    std::cerr << "framekit-host: " << summary.status() << "\n";
    return 2;
  }
  if (json) {
    std::cout << framekit::host::SummaryJson(*summary).dump(2) << "\n";
  } else {
    std::cout << framekit::host::SummaryText(*summary);
  }
  return summary->ok() ? 0 : 1;
}
