// Stub: see ../../README.md. ProcessGroupGloo.hpp holds these only through smart pointers.
#pragma once

namespace gloo {
namespace transport {
class Device;
class UnboundBuffer;
} // namespace transport
} // namespace gloo
