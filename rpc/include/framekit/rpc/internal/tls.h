// Reading the PEM files of ServerTls and ClientTls, with a clear status for each way a file can
// be wrong (missing, unreadable, not PEM, a key that does not match its certificate, a
// certificate out of its validity period), before gRPC sees them: gRPC reports such files only
// as a port it cannot add or a handshake that fails.
#ifndef FRAMEKIT_RPC_INTERNAL_TLS_H_
#define FRAMEKIT_RPC_INTERNAL_TLS_H_

#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace framekit::rpc_internal {

// The contents of `path`, the option named `what`: NotFound when there is no such file,
// InvalidArgument when it cannot be read, is empty or larger than 1 MiB.
absl::StatusOr<std::string> ReadPemFile(std::string_view what, const std::string& path);

// One or more PEM certificates (a chain, or a CA bundle). InvalidArgument naming `what` when
// `pem` holds none, or anything that does not parse.
absl::Status CheckCertificates(std::string_view what, const std::string& pem);

// A certificate chain and the private key of its first certificate. InvalidArgument when either
// does not parse or the key is not the certificate's; FailedPrecondition when the certificate
// is expired or not yet valid.
absl::Status CheckKeyPair(std::string_view chain_what, const std::string& chain_pem,
                          std::string_view key_what, const std::string& key_pem);

}  // namespace framekit::rpc_internal

#endif  // FRAMEKIT_RPC_INTERNAL_TLS_H_
