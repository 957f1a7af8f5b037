#pragma once
/// \file io/atomic_write.hpp
/// Whole-file reads with a size cap, and atomic replacement of a file.
///
/// `write_file_atomic(path, data)` (POSIX): creates `path.tmp.XXXXXX` (a new name, O_EXCL) in
/// the target's directory, writes everything, `fsync`s, closes and `rename`s it over `path`, then
/// `fsync`s the directory. Readers see either the old or the new file, never a mix; on any
/// failure the temporary file is removed and an existing `path` is left untouched. The file
/// keeps the mode of the file it replaces; a new one gets 0666 less the umask, as open(2) gives
/// any new file. A symbolic link at `path` is replaced by a regular file (the link target is not
/// written). Anything else at `path` that is not a regular file (a character or block device, a
/// FIFO, a socket, a directory) is refused before anything is written: kIoError `path: is a
/// character device, not a regular file`, and it is left as it is (saving over /dev/null does
/// not replace /dev/null).
///
/// File size limit (RLIMIT_FSIZE, `ulimit -f`): a write past the limit raises SIGXFSZ, whose
/// default action kills the process (leaving the temporary file behind). The library does not
/// change signal dispositions; a process that wants the documented error instead (kIoError
/// `... write failed on path.tmp.XXXXXX: File too large`, temporary file removed, `path`
/// untouched) must ignore SIGXFSZ, e.g. `signal(SIGXFSZ, SIG_IGN)` at the start of `main`, as
/// `toptheta-thresholds` does.
/// On other platforms a best-effort fallback writes the temporary file with stdio and renames it
/// (removing the target first where rename cannot replace; not atomic there).

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>
#include <vector>

/// \def TOPTHETA_IO_POSIX
/// 1 on POSIX systems (Linux, macOS): saves fsync the file and its directory and rename it over
/// the target with rename(2); 0 elsewhere (std::rename, no fsync).
#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <stdlib.h>  // realpath
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

/// What read_file() expects a file to hold.
enum class FileContent {
  kBinary,  ///< any bytes: the whole file is read
  kText,    ///< text, which holds no NUL byte: reading stops after the first one (see read_file())
};

/// Reads the whole file at `path` into `*out` (binary, no conversions). Errors: kNotFound when
/// it does not exist, kIoError for other failures (a directory, a read error), kDataLoss when it
/// is larger than `max_bytes`. Messages start with `path: `.
///
/// With FileContent::kText, reading stops at the end of the 64 KiB read that holds the first
/// NUL byte, and `*out` receives the bytes up to there: a text parser then refuses that byte at
/// its line and column, without first reading the rest of a binary file, or `max_bytes` of an
/// endless stream such as /dev/zero.
inline Status read_file(const std::string& path, std::string* out, std::size_t max_bytes,
                        FileContent content = FileContent::kBinary) {
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
      if (content == FileContent::kText && std::memchr(buf, 0, n)) break;
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

namespace detail {
#if TOPTHETA_IO_POSIX
/// "a character device", "a FIFO (named pipe)", ... for a `st_mode` that is not a regular file.
inline const char* non_regular_file_kind(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISFIFO(m)) return "a FIFO (named pipe)";
  if (S_ISSOCK(m)) return "a socket";
  return "a special file";
}

/// `path` with its directory part resolved (realpath) and the last component kept as written, or
/// `path` itself when the directory cannot be resolved.
inline std::string resolved_parent_path(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  const std::string leaf = slash == std::string::npos ? path : path.substr(slash + 1);
  char* real = ::realpath(dir.c_str(), nullptr);
  if (!real) return path;
  std::string out(real);
  std::free(real);
  if (out.empty() || out.back() != '/') out += '/';
  return out + leaf;
}
#endif

/// True when `a` and `b` name the same file: on POSIX, when both exist, the same device and
/// inode (so `x/t.txt`, `./x/t.txt`, `x/../x/t.txt`, a symbolic link to it and a hard link all
/// match); otherwise the same path once their directories are resolved. Elsewhere: equal strings.
inline bool same_file_path(const std::string& a, const std::string& b) {
  if (a == b) return true;
#if TOPTHETA_IO_POSIX
  struct stat sa, sb;
  if (::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0)
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
  return resolved_parent_path(a) == resolved_parent_path(b);
#else
  return false;
#endif
}
}  // namespace detail

#if TOPTHETA_IO_POSIX
namespace detail {
/// Creates a new file `path.tmp.XXXXXX` (six random letters or digits; O_EXCL, retried on a
/// name that exists) with open(2)'s `mode` (less the umask). A new target's 0666 gets the umask
/// this way: mkstemp's 0600 would need the umask to widen, and reading the umask means setting
/// it, which races with other threads. Returns the descriptor and sets `*tmp_path`, or -1 with
/// errno set.
inline int create_temporary(const std::string& path, mode_t mode, std::string* tmp_path) {
  static std::atomic<std::uint64_t> counter{0};
  const char* const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  struct timespec ts {};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  std::uint64_t x = std::uint64_t(ts.tv_nsec) ^ (std::uint64_t(ts.tv_sec) << 30) ^
                    (std::uint64_t(::getpid()) << 40) ^ reinterpret_cast<std::uintptr_t>(tmp_path);
  for (int attempt = 0; attempt < 1000; ++attempt) {
    // splitmix64 of the seed and a process-wide counter: distinct names per call and thread.
    std::uint64_t z = (x += 0x9E3779B97F4A7C15ull * (counter.fetch_add(1) + 1));
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::string name = path + ".tmp.";
    for (int i = 0; i < 6; ++i, z /= 62) name += alphabet[z % 62];
    const int fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd >= 0) {
      *tmp_path = std::move(name);
      return fd;
    }
    if (errno != EEXIST) return -1;
  }
  errno = EEXIST;
  return -1;
}

/// A file written to its temporary `tmp` (fsynced and closed) that `commit_file` renames over
/// `path`.
struct StagedFile {
  std::string path, tmp;
};

/// Everything of write_file_atomic() but the rename: on failure the temporary is removed and
/// nothing else was touched.
inline Status stage_file(const std::string& path, std::string_view data, StagedFile* out) {
  if (path.empty()) return Status::invalid_argument("empty output path");
  {
    // Only a regular file (or a symbolic link, which rename replaces) may be replaced: renaming
    // over a device or FIFO would silently swap it for a regular file.
    struct stat lst;
    if (::lstat(path.c_str(), &lst) == 0 && !S_ISREG(lst.st_mode) && !S_ISLNK(lst.st_mode))
      return Status::io_error(path + ": is " + detail::non_regular_file_kind(lst.st_mode) +
                              ", not a regular file; it is not replaced");
  }
  // A new file gets 0666 less the umask, as open(2) gives any file. A replaced file keeps its
  // mode: the temporary is created with at most its permission bits (the umask may narrow them,
  // never widen them: another user who could open the temporary before a fchmod narrowed it
  // would read what is written next), then set to exactly them.
  struct stat st;
  const bool replacing = ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
  std::string tmp_path;
  const int fd =
      detail::create_temporary(path, replacing ? mode_t(st.st_mode & 0777) : 0666, &tmp_path);
  if (fd < 0) {
    const int e = errno;
    return Status::io_error(path + ": cannot create a temporary file " + path + ".tmp.XXXXXX: " +
                            detail::errno_text(e));
  }
  const auto fail = [&](const char* what, int e, bool close_fd) {
    if (close_fd) ::close(fd);
    ::unlink(tmp_path.c_str());
    return Status::io_error(path + ": " + what + " " + tmp_path + ": " + detail::errno_text(e));
  };
  if (replacing && ::fchmod(fd, mode_t(st.st_mode & 07777)) != 0)
    return fail("cannot set the mode of", errno, true);
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
  *out = {path, tmp_path};
  return {};
}

/// Renames a staged file over its path and fsyncs the directory (a failure there does not undo
/// the already visible replacement). On a failed rename the temporary is removed.
inline Status commit_file(const StagedFile& f) {
  if (::rename(f.tmp.c_str(), f.path.c_str()) != 0) {
    const int e = errno;
    ::unlink(f.tmp.c_str());
    return Status::io_error(f.path + ": cannot rename " + f.tmp + ": " + detail::errno_text(e));
  }
  const std::size_t slash = f.path.find_last_of('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : f.path.substr(0, slash));
  const int dfd = ::open(dir.c_str(), O_RDONLY);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
  return {};
}
}  // namespace detail
#endif

/// Atomically replaces (or creates) the file at `path` with `data` (see the file comment).
/// Errors are kIoError with the operating system's reason, e.g.
/// `out/th.txt: cannot create a temporary file out/th.txt.tmp.XXXXXX: Permission denied`;
/// kIoError `path: is a character device, not a regular file` (likewise a block device, a FIFO,
/// a socket, a directory) when `path` exists and is neither a regular file nor a symbolic link,
/// with nothing written; kInvalidArgument for an empty `path`. A file size limit is reported as
/// kIoError (`File too large`) only when the process ignores SIGXFSZ (see the file comment);
/// otherwise the signal kills the process.
inline Status write_file_atomic(const std::string& path, std::string_view data) {
  if (path.empty()) return Status::invalid_argument("empty output path");
#if TOPTHETA_IO_POSIX
  detail::StagedFile f;
  TOPTHETA_RETURN_IF_ERROR(detail::stage_file(path, data, &f));
  return detail::commit_file(f);
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

/// Replaces two files together, each atomically (write_file_atomic()): both are written to
/// their temporaries first, and a failure there (a path that is not a regular file, a directory
/// without write permission, a full disk) leaves both paths untouched. Only then are they renamed,
/// `first` before `second`; a failure between the two renames (rare: both temporaries exist
/// already) leaves `first` replaced. Same errors as write_file_atomic(). Elsewhere than POSIX,
/// the two writes one after the other.
inline Status write_files_atomic(const std::string& first, std::string_view first_data,
                                 const std::string& second, std::string_view second_data) {
#if TOPTHETA_IO_POSIX
  detail::StagedFile a, b;
  TOPTHETA_RETURN_IF_ERROR(detail::stage_file(first, first_data, &a));
  const Status sb = detail::stage_file(second, second_data, &b);
  if (!sb.ok()) {
    ::unlink(a.tmp.c_str());
    return sb;
  }
  const Status ca = detail::commit_file(a);
  if (!ca.ok()) {
    ::unlink(b.tmp.c_str());
    return ca;
  }
  return detail::commit_file(b);
#else
  TOPTHETA_RETURN_IF_ERROR(write_file_atomic(first, first_data));
  return write_file_atomic(second, second_data);
#endif
}

}  // namespace toptheta
