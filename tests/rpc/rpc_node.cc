// A test node in its own process, for the cross-process test: serves the test functions on a
// free loopback port, trusts "node-a-token" with identity and the tenant, prints the port on
// stdout and serves until its stdin closes.
#include <cstdio>
#include <iostream>
#include <string>

#include "rpc/rpc_support.h"

int main() {
  framekit::rpc::ServerOptions options;
  options.trusted.push_back(
      {.token = "node-a-token",
       .policy = {.name = "node-a", .accepted_keys = {"app.tenant"}, .identity = true}});
  framekit::rpc_testing::TestNode node(std::move(options));
  if (!node.start_status.ok()) {
    std::cerr << "rpc node: " << node.start_status << "\n";
    return 1;
  }
  std::cout << node.server->port() << std::endl;
  std::string line;
  while (std::getline(std::cin, line)) {
  }
  return 0;
}
