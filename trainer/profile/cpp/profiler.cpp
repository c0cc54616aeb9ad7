// The profiler shim: libtorch's Kineto profiler (what torch.profiler drives from Python) started,
// stopped and saved as a Chrome trace, and user-scope ranges (torch.profiler.record_function) for
// step markers. C ABI; every C++ exception becomes an error string the caller frees.
#include <ATen/record_function.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <cstdlib>
#include <cstring>
#include <set>
#include <string>

namespace {

char* copy(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p != nullptr) std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

// A named range: the name lives as long as the RecordFunction that reports it.
struct Range {
  std::string name;
  at::RecordFunction guard{at::RecordScope::USER_SCOPE};
};

}  // namespace

extern "C" {

int lf_profiler_start(int with_cuda, char** error) {
  try {
    using torch::profiler::impl::ActivityType;
    std::set<ActivityType> activities{ActivityType::CPU};
    if (with_cuda != 0) activities.insert(ActivityType::CUDA);
    torch::profiler::impl::ProfilerConfig config(
        torch::profiler::impl::ProfilerState::KINETO, /*report_input_shapes=*/true,
        /*profile_memory=*/false, /*with_stack=*/false, /*with_flops=*/false);
    torch::autograd::profiler::prepareProfiler(config, activities);
    torch::autograd::profiler::enableProfiler(config, activities);
    return 0;
  } catch (const std::exception& e) {
    *error = copy(e.what());
    return 1;
  }
}

int lf_profiler_stop(const char* path, char** error) {
  try {
    auto result = torch::autograd::profiler::disableProfiler();
    if (path != nullptr && result) result->save(path);
    return 0;
  } catch (const std::exception& e) {
    *error = copy(e.what());
    return 1;
  }
}

void* lf_profiler_range_push(const char* name) {
  auto* range = new Range{name, at::RecordFunction(at::RecordScope::USER_SCOPE)};
  if (range->guard.isActive()) {
    range->guard.before(std::string_view(range->name), c10::ArrayRef<const c10::IValue>{});
  }
  return range;
}

void lf_profiler_range_pop(void* range) {
  auto* r = static_cast<Range*>(range);
  r->guard.end();
  delete r;
}

void lf_profiler_free(char* s) { std::free(s); }

}  // extern "C"
