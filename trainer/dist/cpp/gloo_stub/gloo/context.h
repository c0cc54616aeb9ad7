// Stub: see ../README.md. Only declares what ProcessGroupGloo.hpp's inline members mention; the real
// gloo::Context lives inside libtorch_cpu.so and is never touched by lf-dist's shim.
#pragma once
#include <chrono>

namespace gloo {
class Context {
 public:
  // Declared for the inline ProcessGroupGloo::setTimeout; deliberately not defined (never called).
  void setTimeout(std::chrono::milliseconds timeout);
};
} // namespace gloo
