#include "framekit/dispatch/guard.h"

#include <cxxabi.h>

#include <exception>
#include <string>

#include "absl/strings/str_cat.h"
#include "framekit/base/internal/status.h"
#include "framekit/base/internal/strings.h"
#include "framekit/dispatch/internal/log_format.h"

namespace framekit::dispatch_internal {
namespace {

using dispatch::FaultMonitor;

FaultReport MinimalReport(ExtRef ext, Phase phase) noexcept {
  FaultReport report;
  try {
    report.panic.extension = std::string(ext.name());
    report.panic.phase = phase;
    report.panic.type = "unknown";
    report.panic.message = "the fault could not be described (out of memory)";
  } catch (...) {
  }
  return report;
}

}  // namespace

FaultReport CatchFault(ExtRef ext, Phase phase, std::string_view detail) noexcept {
  FaultReport report;
  try {
    report.panic = DescribeCurrentException(ext.name(), phase);
  } catch (...) {
    return MinimalReport(ext, phase);
  }
  report.verdict = ext.monitor().Report(report.panic, detail);
  return report;
}

absl::Status CatchFaultStatus(ExtRef ext, Phase phase, std::string_view detail) noexcept {
  const FaultReport report = CatchFault(ext, phase, detail);
  try {
    absl::Status status = PanicStatus(report.panic);
    if (detail.empty()) return status;
    if (phase == Phase::kHost) return base_internal::PrefixStatus("host function", detail, status);
    return base_internal::PrefixStatus(absl::StrCat(base_internal::AsAbsl(detail), ": "), status);
  } catch (...) {
    return absl::Status(absl::StatusCode::kInternal, "");
  }
}

void CatchFaultSwallow(ExtRef ext, Phase phase, std::string_view detail) noexcept {
  CatchFault(ext, phase, detail);
}

void LogSwallowedStatus(ExtRef ext, Phase phase, std::string_view detail,
                        const absl::Status& status) noexcept {
  try {
    const std::shared_ptr<spdlog::logger> log = ext.monitor().logger();
    if (log == nullptr) return;
    std::string text = absl::StrCat("error swallowed extension=", Quote(ext.name()),
                                    " phase=", Quote(PhaseName(phase)));
    if (!detail.empty()) absl::StrAppend(&text, " detail=", Quote(detail));
    absl::StrAppend(&text, " status=", Quote(StatusToString(status)));
    log->warn("{}", text);
  } catch (...) {
  }
}

std::string Quote(std::string_view value) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(value.size() + 2);
  out += '"';
  for (const char c : value) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += "\\x";
          out += kHex[(c >> 4) & 0xf];
          out += kHex[c & 0xf];
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

}  // namespace framekit::dispatch_internal
