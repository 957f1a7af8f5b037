#pragma once
/// \file io/atomic_write.hpp
/// Whole-file reads with a size cap, and atomic replacement of a file.
///
/// `write_file_atomic(path, data)` (POSIX): creates `path.tmp.XXXXXX` in the target's directory
/// with `mkstemp`, writes everything, `fsync`s, closes and `rename`s it over `path`, then
/// `fsync`s the directory. Readers see either the old or the new file, never a mix; on any
/// failure the temporary file is removed and an existing `path` is left untouched. The new file
/// keeps the mode of the file it replaces, or gets 0644 when there was none. A symbolic link at
/// `path` is replaced by a regular file (the link target is not written).
/// On other platforms a best-effort fallback writes the temporary file with stdio and renames it
/// (removing the target first where rename cannot replace; not atomic there).

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

/// \def TOPTHETA_IO_POSIX
/// 1 on POSIX systems (Linux, macOS): saves fsync the file and its directory and rename it over
/// the target with rename(2); 0 elsewhere (std::rename, no fsync).
#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#define TOPTHETA_IO_POSIX 1
#else
#define TOPTHETA_IO_POSIX 0
#endif

#include "../status.hpp"

namespace toptheta {

namespace detail {
inline std::string errno_text(int e) { return std::strerror(e); }
}  // namespace detail

/// Reads the whole file at `path` into `*out` (binary, no conversions). Errors: kNotFound when
/// it does not exist, kIoError for other failures (a directory, a read error), kDataLoss when it
/// is larger than `max_bytes`. Messages start with `path: `.
inline Status read_file(const std::string& path, std::string* out, std::size_t max_bytes) {
  TOPTHETA_RETURN_IF_ERROR(detail::require_output(out, "read_file", "out"));
  errno = 0;
  std::FILE* fp = std::fopen(path.c_str(), "rb");
  if (!fp) {
    const int e = errno;
    return Status(e == ENOENT ? StatusCode::kNotFound : StatusCode::kIoError,
                  path + ": cannot open: " + detail::errno_text(e));
  }
  std::string data;
  char buf[1 << 16];
  for (;;) {
    const std::size_t n = std::fread(buf, 1, sizeof buf, fp);
    if (n > 0) {
      if (data.size() + n > max_bytes) {
        std::fclose(fp);
        return Status::data_loss(path + ": file is larger than " + std::to_string(max_bytes) +
                                 " bytes");
      }
      data.append(buf, n);
    }
    if (n < sizeof buf) {
      if (std::ferror(fp)) {
        const int e = errno;
        std::fclose(fp);
        return Status::io_error(path + ": read failed: " + detail::errno_text(e));
      }
      break;
    }
  }
  std::fclose(fp);
  *out = std::move(data);
  return {};
}

/// Atomically replaces (or creates) the file at `path` with `data` (see the file comment).
/// Errors are kIoError with the operating system's reason, e.g.
/// `out/th.txt: cannot create a temporary file out/th.txt.tmp.XXXXXX: Permission denied`.
inline Status write_file_atomic(const std::string& path, std::string_view data) {
  if (path.empty()) return Status::invalid_argument("empty output path");
#if TOPTHETA_IO_POSIX
  std::vector<char> tmp(path.begin(), path.end());
  const char suffix[] = ".tmp.XXXXXX";
  tmp.insert(tmp.end(), suffix, suffix + sizeof suffix);  // includes the terminating NUL
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) {
    const int e = errno;
    return Status::io_error(path + ": cannot create a temporary file " + path + ".tmp.XXXXXX: " +
                            detail::errno_text(e));
  }
  const std::string tmp_path(tmp.data());
  const auto fail = [&](const char* what, int e, bool close_fd) {
    if (close_fd) ::close(fd);
    ::unlink(tmp_path.c_str());
    return Status::io_error(path + ": " + what + " " + tmp_path + ": " + detail::errno_text(e));
  };
  struct stat st;
  const mode_t mode = (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode))
                          ? mode_t(st.st_mode & 07777)
                          : mode_t(0644);
  if (::fchmod(fd, mode) != 0) return fail("cannot set the mode of", errno, true);
  const char* p = data.data();
  std::size_t left = data.size();
  while (left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("write failed on", errno, true);
    }
    p += n;
    left -= std::size_t(n);
  }
  if (::fsync(fd) != 0) return fail("fsync failed on", errno, true);
  if (::close(fd) != 0) return fail("close failed on", errno, false);
  if (::rename(tmp_path.c_str(), path.c_str()) != 0)
    return fail("cannot rename", errno, false);
  // Make the rename durable; failure here does not undo the (already visible) replacement.
  const std::size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
  return {};
#else
  const std::string tmp_path = path + ".tmp.toptheta";
  errno = 0;
  std::FILE* fp = std::fopen(tmp_path.c_str(), "wb");
  if (!fp)
    return Status::io_error(path + ": cannot create a temporary file " + tmp_path + ": " +
                            detail::errno_text(errno));
  const bool wrote = std::fwrite(data.data(), 1, data.size(), fp) == data.size();
  const int e = errno;
  if (std::fclose(fp) != 0 || !wrote) {
    std::remove(tmp_path.c_str());
    return Status::io_error(path + ": write failed on " + tmp_path + ": " + detail::errno_text(e));
  }
  if (std::rename(tmp_path.c_str(), path.c_str()) != 0) {
    std::remove(path.c_str());
    if (std::rename(tmp_path.c_str(), path.c_str()) != 0) {
      const int e2 = errno;
      std::remove(tmp_path.c_str());
      return Status::io_error(path + ": cannot rename " + tmp_path + ": " + detail::errno_text(e2));
    }
  }
  return {};
#endif
}

}  // namespace toptheta
