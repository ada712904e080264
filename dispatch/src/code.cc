#include "framekit/dispatch/code.h"

#include <utility>

namespace framekit::dispatch {
namespace {

class NativeHandlerCode final : public Code {
 public:
  explicit NativeHandlerCode(Handler handler) : handler_(std::move(handler)) {}
  bool preemptive() const override { return false; }
  absl::Status Run(const Frame& frame, std::string_view payload, Sink& out,
                   RunStats& /*stats*/) override {
    return handler_(frame, payload, out);
  }

 private:
  const Handler handler_;
};

}  // namespace

std::shared_ptr<Code> NativeCode(Handler handler) {
  if (!handler) return nullptr;
  return std::make_shared<NativeHandlerCode>(std::move(handler));
}

}  // namespace framekit::dispatch
