#include "framekit/rpc/internal/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "framekit/base/internal/echo.h"
#include "framekit/base/internal/strings.h"

namespace framekit::rpc_internal {
namespace {

using base_internal::AsAbsl;

constexpr std::size_t kMaxPemBytes = 1 << 20;

struct BioFree {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Free {
  void operator()(X509* cert) const { X509_free(cert); }
};
struct KeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Cert = std::unique_ptr<X509, X509Free>;
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;

Bio MemoryBio(const std::string& pem) {
  return Bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

// OpenSSL's reason for the last failure on this thread, and its error queue emptied (it is
// per thread, and gRPC reads it on the same threads later).
std::string OpenSslReason() {
  const unsigned long code = ERR_peek_last_error();  // NOLINT(google-runtime-int): OpenSSL's type
  const char* reason = code != 0 ? ERR_reason_error_string(code) : nullptr;
  ERR_clear_error();
  return reason != nullptr ? reason : "no PEM data";
}

// Each certificate of `pem`, in order; stops at the first that does not parse.
template <class Fn>
absl::Status ForEachCertificate(std::string_view what, const std::string& pem, Fn fn) {
  Bio bio = MemoryBio(pem);
  int count = 0;
  while (true) {
    Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (cert == nullptr) break;
    fn(*cert, count++);
  }
  // The loop ends at the end of the data (PEM_R_NO_START_LINE) or at a block that does not parse.
  const unsigned long last = ERR_peek_last_error();  // NOLINT(google-runtime-int)
  const bool at_end =
      count > 0 && ERR_GET_LIB(last) == ERR_LIB_PEM && ERR_GET_REASON(last) == PEM_R_NO_START_LINE;
  if (count == 0 || (last != 0 && !at_end)) {
    return absl::InvalidArgumentError(
        absl::StrCat(AsAbsl(what), ": not a PEM certificate",
                     count > 0 ? absl::StrCat(" after ", count, " certificates") : std::string(),
                     " (", OpenSslReason(), ")"));
  }
  ERR_clear_error();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> ReadPemFile(std::string_view what, const std::string& path) {
  const std::string echo = base_internal::Echo(path, 256);
  if (path.empty())
    return absl::InvalidArgumentError(absl::StrCat(AsAbsl(what), ": no file named"));
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string why = absl::StrCat(AsAbsl(what), " \"", echo, "\": ", std::strerror(err));
    if (err == ENOENT) return absl::NotFoundError(why);
    return absl::InvalidArgumentError(why);
  }
  std::string out;
  char buffer[4096];
  while (in.read(buffer, sizeof(buffer)) || in.gcount() > 0) {
    out.append(buffer, static_cast<std::size_t>(in.gcount()));
    if (out.size() > kMaxPemBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(AsAbsl(what), " \"", echo, "\": larger than ", kMaxPemBytes, " bytes"));
    }
  }
  if (in.bad()) {
    return absl::InvalidArgumentError(absl::StrCat(AsAbsl(what), " \"", echo, "\": read error"));
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(AsAbsl(what), " \"", echo, "\": empty"));
  }
  return out;
}

absl::Status CheckCertificates(std::string_view what, const std::string& pem) {
  return ForEachCertificate(what, pem, [](X509&, int) {});
}

absl::Status CheckKeyPair(std::string_view chain_what, const std::string& chain_pem,
                          std::string_view key_what, const std::string& key_pem) {
  Cert leaf;
  absl::Status chain = ForEachCertificate(chain_what, chain_pem, [&](X509& cert, int index) {
    if (index == 0) {
      X509_up_ref(&cert);
      leaf.reset(&cert);
    }
  });
  if (!chain.ok()) return chain;
  Bio bio = MemoryBio(key_pem);
  Key key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(AsAbsl(key_what), ": not a PEM private key (", OpenSslReason(), ")"));
  }
  if (X509_check_private_key(leaf.get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(AsAbsl(key_what), " is not the key of ",
                                                   AsAbsl(chain_what), "'s certificate"));
  }
  if (X509_cmp_current_time(X509_get0_notAfter(leaf.get())) <= 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(AsAbsl(chain_what), ": the certificate has expired"));
  }
  if (X509_cmp_current_time(X509_get0_notBefore(leaf.get())) >= 0) {
    return absl::FailedPreconditionError(
        absl::StrCat(AsAbsl(chain_what), ": the certificate is not valid yet"));
  }
  return absl::OkStatus();
}

}  // namespace framekit::rpc_internal
