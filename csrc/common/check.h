// Argument checks shared by every kernel entry point: a failed check is the caller's mistake and
// becomes std::invalid_argument (pybind11 turns it into ValueError) with a message naming the
// argument.
//
// Messages are built with std::to_string and snprintf, not iostreams: on an H200 machine (Ubuntu
// 24.04, g++ 13, the torch image's Python) every message of fastal._cuda that streamed a number
// segfaulted (gdb: inside basic_ostream::_M_insert<double>), while those of strings alone went
// through; the cause was not established. Nothing here touches a locale facet.
#pragma once
#include <cstdio>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace fastal {

namespace detail {

template <typename T>
void append(std::string& out, const T& value) {
  using D = std::decay_t<T>;
  if constexpr (std::is_same_v<D, std::string>) {
    out += value;
  } else if constexpr (std::is_same_v<D, const char*> || std::is_same_v<D, char*>) {
    out += value ? value : "(null)";
  } else if constexpr (std::is_same_v<D, bool>) {
    out += value ? "1" : "0";  // as an ostream prints it
  } else if constexpr (std::is_same_v<D, char>) {
    out += value;
  } else if constexpr (std::is_integral_v<D> && std::is_signed_v<D>) {
    out += std::to_string(static_cast<long long>(value));
  } else if constexpr (std::is_integral_v<D>) {
    out += std::to_string(static_cast<unsigned long long>(value));
  } else if constexpr (std::is_enum_v<D>) {
    out += std::to_string(static_cast<long long>(value));
  } else if constexpr (std::is_floating_point_v<D>) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "%g", static_cast<double>(value));  // an ostream's default
    out += buf;
  } else if constexpr (std::is_pointer_v<D>) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%p", static_cast<const void*>(value));
    out += buf;
  } else {
    static_assert(std::is_same_v<D, void>, "fastal::concat: unsupported message part");
  }
}

}  // namespace detail

// The parts of a message, one after the other (numbers as an ostream would print them).
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::string out;
  (detail::append(out, parts), ...);
  return out;
}

template <typename... Parts>
[[noreturn]] void fail_argument(const Parts&... parts) {
  throw std::invalid_argument(concat(parts...));
}

template <typename... Parts>
[[noreturn]] void fail_internal(const Parts&... parts) {
  throw std::runtime_error(concat("internal error: ", parts...));
}

}  // namespace fastal

#define FASTAL_REQUIRE(cond, ...)                      \
  do {                                                 \
    if (!(cond)) ::fastal::fail_argument(__VA_ARGS__); \
  } while (0)

// A broken invariant of fastal's own (not the caller's input): RuntimeError in Python.
#define FASTAL_ASSERT(cond, ...)                       \
  do {                                                 \
    if (!(cond)) ::fastal::fail_internal(__VA_ARGS__); \
  } while (0)
