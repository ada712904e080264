// The demo host's isolated functions: native handlers in worker processes (framekit/isolate),
// one crashing with a null dereference every Nth call and one spinning forever, called beside a
// healthy isolated echo. The host's fault monitor counts the crashes like any other fault, the
// spinning calls end at their deadline with the worker killed, and the echo never fails.
#ifndef FRAMEKIT_EXAMPLES_HOST_ISOLATED_H_
#define FRAMEKIT_EXAMPLES_HOST_ISOLATED_H_

#include <cstdint>
#include <string>
#include <vector>

#include "framekit/dispatch/fault_monitor.h"
#include "framekit/dispatch/function_executor.h"

namespace framekit::host {

struct IsolatedSummary {
  bool ran = false;
  int crash_period = 0;  // "flaky" crashes on every crash_period-th call
  int flaky_calls = 0;
  int flaky_ok = 0;
  int flaky_faults = 0;  // Internal + ExtensionPanic (a worker death)
  int expected_faults = 0;
  int spin_calls = 0;
  int spin_timeouts = 0;             // DeadlineExceeded
  std::uint64_t deadline_kills = 0;  // workers the pool killed at a deadline (a spin call that
                                     // waited its whole deadline for a worker kills none)
  int echo_calls = 0;
  int echo_ok = 0;
  std::uint64_t monitor_faults = 0;  // what the fault monitor counted for "iso.flaky"
  std::uint64_t workers_started = 0;
  double mean_startup_ms = 0;
  int children_left = 0;  // worker processes alive or unreaped after the pool shut down
};

// Registers iso.flaky, iso.spin and iso.echo on `executor`, calls them with `parent` (which
// carries the host's caller), shuts the pool down and fills `out`; every broken promise is appended
// to `violations`. When the worker executable cannot be found, appends a note and leaves out.ran
// false.
void RunIsolatedDemo(dispatch::FunctionExecutor& executor, const dispatch::FaultMonitor& monitor,
                     const Frame& parent, IsolatedSummary& out, std::vector<std::string>& notes,
                     std::vector<std::string>& violations);

}  // namespace framekit::host

#endif  // FRAMEKIT_EXAMPLES_HOST_ISOLATED_H_
