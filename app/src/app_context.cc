#include "framekit/app/app_context.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "framekit/base/internal/strings.h"

namespace framekit {

using base_internal::AsAbsl;

AppContext::AppContext() = default;
AppContext::~AppContext() = default;

absl::Status AppContext::SetPair(Pair pair) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string_view name = pair.name();
  if (sealed()) {
    return absl::FailedPreconditionError(
        absl::StrCat("app context is sealed: cannot set \"", AsAbsl(name), "\""));
  }
  const KeyBase* key = &pair.key();
  if (services_.contains(key)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "app context: \"", AsAbsl(name), "\" is set already (services are write-once)"));
  }
  services_.emplace(key, std::make_unique<const Pair>(std::move(pair)));
  if (staging_) staged_keys_.push_back(key);
  return absl::OkStatus();
}

const Pair* AppContext::FindPair(const KeyBase& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  const auto it = services_.find(&key);
  return it == services_.end() ? nullptr : it->second.get();
}

absl::Status AppContext::SetFrameResolvers(std::shared_ptr<FrameResolvers> resolvers) {
  if (resolvers == nullptr) {
    return absl::InvalidArgumentError("app context: SetFrameResolvers(nullptr)");
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (sealed()) {
    return absl::FailedPreconditionError("app context is sealed: cannot set FrameResolvers");
  }
  if (resolvers_ != nullptr) {
    return absl::FailedPreconditionError("app context: FrameResolvers are set already");
  }
  resolvers_ = std::move(resolvers);
  resolvers_ptr_.store(resolvers_.get(), std::memory_order_release);
  if (staging_) registry_set_in_stage_ = true;
  return absl::OkStatus();
}

std::shared_ptr<FrameResolvers> AppContext::shared_frame_resolvers() const {
  std::lock_guard<std::mutex> lock(mu_);
  return resolvers_;
}

void AppContext::Seal() {
  std::lock_guard<std::mutex> lock(mu_);
  sealed_.store(true, std::memory_order_release);
}

void AppContext::SealFrameResolvers() {
  std::lock_guard<std::mutex> lock(mu_);
  if (resolvers_ != nullptr) resolvers_->Seal();
}

void AppContext::BeginStage() {
  std::lock_guard<std::mutex> lock(mu_);
  staging_ = true;
  staged_keys_.clear();
  registry_set_in_stage_ = false;
  registry_staging_ = resolvers_ != nullptr;
  if (registry_staging_) resolvers_->BeginStaging();
}

absl::Status AppContext::CommitStage() {
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status status;
  if (registry_staging_) status = resolvers_->CommitStaging();
  staging_ = false;
  registry_staging_ = false;
  registry_set_in_stage_ = false;
  staged_keys_.clear();
  return status;
}

void AppContext::AbortStage() {
  std::lock_guard<std::mutex> lock(mu_);
  if (registry_staging_) resolvers_->AbortStaging();
  for (const KeyBase* key : staged_keys_) services_.erase(key);
  if (registry_set_in_stage_) {
    resolvers_ptr_.store(nullptr, std::memory_order_release);
    resolvers_.reset();
  }
  staging_ = false;
  registry_staging_ = false;
  registry_set_in_stage_ = false;
  staged_keys_.clear();
}

}  // namespace framekit
