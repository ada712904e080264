#include "framekit/ctx/app_context.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace framekit {

AppContext::AppContext() = default;
AppContext::~AppContext() = default;

absl::Status AppContext::SetPair(Pair pair) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string_view name = pair.name();
  if (sealed()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "app context is sealed: cannot set \"", absl::string_view(name.data(), name.size()), "\""));
  }
  const KeyBase* key = &pair.key();
  if (services_.contains(key)) {
    return absl::FailedPreconditionError(
        absl::StrCat("app context: \"", absl::string_view(name.data(), name.size()),
                     "\" is set already (services are write-once)"));
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

absl::Status AppContext::SetFrameResolvers(std::nullptr_t) {
  return absl::InvalidArgumentError("app context: SetFrameResolvers(nullptr)");
}

absl::Status AppContext::InstallFrameResolvers(std::shared_ptr<FrameResolvers> resolvers,
                                               StagedRegistry* staged) {
  if (resolvers == nullptr) return SetFrameResolvers(nullptr);
  std::lock_guard<std::mutex> lock(mu_);
  if (sealed()) {
    return absl::FailedPreconditionError("app context is sealed: cannot set FrameResolvers");
  }
  if (resolvers_ != nullptr) {
    return absl::FailedPreconditionError("app context: FrameResolvers are set already");
  }
  resolvers_ = std::move(resolvers);
  staged_registry_ = staged;
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
  if (staged_registry_ != nullptr) staged_registry_->Seal();
}

void AppContext::BeginStage() {
  std::lock_guard<std::mutex> lock(mu_);
  staging_ = true;
  staged_keys_.clear();
  registry_set_in_stage_ = false;
  registry_staging_ = staged_registry_ != nullptr;
  if (registry_staging_) staged_registry_->BeginStaging();
}

absl::Status AppContext::CommitStage() {
  std::lock_guard<std::mutex> lock(mu_);
  absl::Status status;
  if (registry_staging_) status = staged_registry_->CommitStaging();
  staging_ = false;
  registry_staging_ = false;
  registry_set_in_stage_ = false;
  staged_keys_.clear();
  return status;
}

void AppContext::AbortStage() {
  std::lock_guard<std::mutex> lock(mu_);
  if (registry_staging_) staged_registry_->AbortStaging();
  for (const KeyBase* key : staged_keys_) services_.erase(key);
  if (registry_set_in_stage_) {
    resolvers_ptr_.store(nullptr, std::memory_order_release);
    resolvers_.reset();
    staged_registry_ = nullptr;
  }
  staging_ = false;
  registry_staging_ = false;
  registry_set_in_stage_ = false;
  staged_keys_.clear();
}

}  // namespace framekit
