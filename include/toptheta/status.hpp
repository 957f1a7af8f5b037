#pragma once
/// \file status.hpp
/// `Status`: the result of an operation that can fail because of user data (shapes coming from a
/// caller's buffers, a threshold table, a file). Works with `-fno-exceptions`.

#include <string>
#include <utility>

namespace toptheta {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  ///< shapes, strides or options that do not fit together
  kOutOfRange,       ///< an index (layer, head, length) outside the table
  kNotFound,         ///< a file or entry that does not exist
  kDataLoss,         ///< malformed / truncated / corrupted data
  kIoError,          ///< the operating system refused a read or write
  kFailedPrecondition,
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
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return Status(); }
  static Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
  static Status out_of_range(std::string m) { return {StatusCode::kOutOfRange, std::move(m)}; }
  static Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status data_loss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
  static Status io_error(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
  static Status failed_precondition(std::string m) {
    return {StatusCode::kFailedPrecondition, std::move(m)};
  }

  bool ok() const { return code_ == StatusCode::kOk; }
  explicit operator bool() const { return ok(); }
  StatusCode code() const { return code_; }
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

}  // namespace toptheta
