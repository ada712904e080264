// The demo host as two nodes on loopback (framekit-host --two-nodes): node A's function
// "profile" is backed by node B's "profile" over gRPC, and the run shows that the calls crossed
// with their caller and trace intact on B and their remaining deadline honoured.
#ifndef FRAMEKIT_EXAMPLES_HOST_TWO_NODES_H_
#define FRAMEKIT_EXAMPLES_HOST_TWO_NODES_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace framekit::host {

struct TwoNodeSummary {
  int calls = 0;                        // calls made on node A
  int ok = 0;                           // of those, answered by B
  std::uint64_t crossed = 0;            // calls B's server admitted
  int caller_intact = 0;                // B's handler saw the caller A's frame had
  int trace_intact = 0;                 // B's handler saw A's trace id
  int deadline_calls = 0;               // calls whose deadline ran out while B was working
  int deadline_honoured = 0;            // of those, ended DeadlineExceeded within 100 ms of it
  int b_saw_remaining = 0;              // B's handler saw A's remaining time, not a fresh timeout
  std::uint64_t identity_rejected = 0;  // a caller claimed by an untrusted peer, refused by B
  std::string b_port;
  bool ok_all() const;
};

// Starts node B (a server on a free loopback port) and node A (whose "profile" is B's), makes
// `calls` calls on A from a few callers, each with its own trace, and `calls / 10 + 1` calls
// whose deadline is shorter than B's work, plus one call from an untrusted client claiming an
// identity. Errors only when a node cannot start.
absl::StatusOr<TwoNodeSummary> RunTwoNodes(int calls);

// The summary as text for the terminal.
std::string TwoNodeSummaryText(const TwoNodeSummary& summary);

}  // namespace framekit::host

#endif  // FRAMEKIT_EXAMPLES_HOST_TWO_NODES_H_
