#pragma once
// NRAID_ASSERT: an invariant of the data plane. Always on, whatever NDEBUG
// says (after TigerStyle): a broken invariant prints the expression, file and
// line to stderr and aborts the process, loudly, before it can touch a disk
// with wrong data. Operating errors (EIO, a lost peer, a bad frame) are not
// asserted: they are handled, counted and tested.
#include <cstdio>
#include <cstdlib>

namespace nraid {

[[noreturn]] __attribute__((cold, noinline)) inline void assert_failed(const char* expression, const char* file,
                                                                       int line, const char* function) {
  std::fprintf(stderr, "nraid: assertion failed: %s (%s:%d, in %s)\n", expression, file, line, function);
  std::fflush(stderr);
  std::abort();
}

}  // namespace nraid

#define NRAID_ASSERT(expression)                                                             \
  (__builtin_expect(static_cast<bool>(expression), 1)                                        \
       ? static_cast<void>(0)                                                                \
       : ::nraid::assert_failed(#expression, __FILE__, __LINE__, __func__))

// A branch that no input can reach.
#define NRAID_UNREACHABLE(what) ::nraid::assert_failed("unreachable: " what, __FILE__, __LINE__, __func__)
