#pragma once
/// \file status.hpp
/// `Status`: the result of an operation that can fail because of user data (shapes coming from a
/// caller's buffers, a threshold table, a file). Works with `-fno-exceptions`.

#include <string>
#include <utility>

namespace toptheta {

/// What went wrong, in the categories of absl::Status / gRPC codes. Every fallible function of
/// the library documents the codes it returns; `kOk` is success.
enum class StatusCode {
  kOk = 0,           ///< success

  kInvalidArgument,  ///< shapes, strides or options that do not fit together
  kOutOfRange,       ///< an index (layer, head, length) outside the table
  kNotFound,         ///< a file or entry that does not exist
  kDataLoss,         ///< malformed / truncated / corrupted data
  kIoError,          ///< the operating system refused a read or write
  kFailedPrecondition,  ///< the state does not allow the call: an instruction set the build
                        ///< or CPU lacks, a table of the other form, heads without thresholds
};

/// Name of a status code, e.g. "invalid argument".
inline const char* to_string(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "ok";
    case StatusCode::kInvalidArgument: return "invalid argument";
    case StatusCode::kOutOfRange: return "out of range";
    case StatusCode::kNotFound: return "not found";
    case StatusCode::kDataLoss: return "data loss";
    case StatusCode::kIoError: return "i/o error";
    case StatusCode::kFailedPrecondition: return "failed precondition";
  }
  return "unknown";
}

/// Success, or an error code with a human-readable message. Cheap to return when ok.
class [[nodiscard]] Status {
 public:
  /// Success (code kOk, empty message).
  Status() = default;
  /// A status with `code` and a human-readable `message` (which names the argument at fault).
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  /// Success; the same as `Status()`.
  static Status ok_status() { return Status(); }
  /// StatusCode::kInvalidArgument with message `m`.
  static Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
  /// StatusCode::kOutOfRange with message `m`.
  static Status out_of_range(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
  /// StatusCode::kNotFound with message `m`.
  static Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  /// StatusCode::kDataLoss with message `m`.
  static Status data_loss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
  /// StatusCode::kIoError with message `m`.
  static Status io_error(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
  /// StatusCode::kFailedPrecondition with message `m`.
  static Status failed_precondition(std::string m) {
    return {StatusCode::kFailedPrecondition, std::move(m)};
  }

  /// True on success (code() == StatusCode::kOk).
  bool ok() const { return code_ == StatusCode::kOk; }
  /// Same as ok(), so that `if (status)` reads "if it succeeded".
  explicit operator bool() const { return ok(); }
  /// The error category; kOk on success.
  StatusCode code() const { return code_; }
  /// The human-readable message; empty on success.
  const std::string& message() const { return message_; }
  /// "invalid argument: <message>" or "ok".
  std::string to_string() const {
    return ok() ? std::string("ok") : std::string(toptheta::to_string(code_)) + ": " + message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

/// Returns early from the enclosing function when `expr` yields a non-ok Status.
#define TOPTHETA_RETURN_IF_ERROR(expr)          \
  do {                                          \
    ::toptheta::Status toptheta_status_ = (expr); \
    if (!toptheta_status_.ok()) return toptheta_status_; \
  } while (0)

namespace detail {
/// The check of a public function's output pointer: kInvalidArgument "<fn>: <arg> is null"
/// when `p` is null, ok otherwise.
inline Status require_output(const void* p, const char* fn, const char* arg) {
  if (p != nullptr) return {};
  return Status::invalid_argument(std::string(fn) + ": " + arg + " is null");
}
}  // namespace detail

}  // namespace toptheta
