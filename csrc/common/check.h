// Argument checks shared by every kernel entry point: a failed check is the caller's mistake and
// becomes std::invalid_argument (pybind11 turns it into ValueError) with a message naming the argument.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace fastal {

template <typename... Parts>
[[noreturn]] void fail_argument(const Parts&... parts) {
  std::ostringstream msg;
  (msg << ... << parts);
  throw std::invalid_argument(msg.str());
}

}  // namespace fastal

#define FASTAL_REQUIRE(cond, ...)                 \
  do {                                            \
    if (!(cond)) ::fastal::fail_argument(__VA_ARGS__); \
  } while (0)
