// lf-dist's C++ shim: the smallest C ABI over PyTorch's own c10d that the Rust side needs.
//
// * A TCPStore (rank 0 hosts it) with an arrival check that records which ranks showed up.
// * ProcessGroupGloo (CPU tensors) or, with -DLF_DIST_NCCL, ProcessGroupNCCL (CUDA tensors),
//   held as a c10d::Backend.
// * Blocking collectives on tch tensors: tch's `C_tensor*` *is* `at::Tensor*` (torch-sys'
//   `typedef torch::Tensor *tensor;`), so the collectives work in place on the Rust tensors.
// * CUDA caching allocator peak statistics (NCCL/CUDA builds only).
//
// Every entry point returns 0 on success. On failure it returns non-zero and stores a malloc'd,
// NUL-terminated one-line message in *err (freed with lf_dist_free_string); no C++ exception
// ever crosses the C boundary. c10::Error is caught first so the message is
// what_without_backtrace() (what() carries a multi-line C++ backtrace).

#include <algorithm>
#include <chrono>
#include <thread>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#ifdef LF_DIST_NCCL
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

constexpr int kOk = 0;
constexpr int kError = 1;
constexpr int kRendezvousIncomplete = 2;
constexpr int kRendezvousAborted = 3;

struct StoreHandle {
  c10::intrusive_ptr<c10d::Store> store;
};

struct GroupHandle {
  c10::intrusive_ptr<c10d::Backend> backend;
  int64_t device_index; // -1 for CPU (Gloo)
};

struct WorkHandle {
  c10::intrusive_ptr<c10d::Work> work;
  std::vector<at::Tensor> keep_alive;
};

void set_error(char** err, const std::string& message) {
  if (err == nullptr) {
    return;
  }
  char* copy = static_cast<char*>(std::malloc(message.size() + 1));
  if (copy != nullptr) {
    std::memcpy(copy, message.data(), message.size());
    copy[message.size()] = '\0';
  }
  *err = copy;
}

template <typename F>
int guarded(char** err, F&& body) {
  try {
    body();
    return kOk;
  } catch (const c10::Error& e) {
    set_error(err, e.what_without_backtrace());
  } catch (const std::exception& e) {
    set_error(err, e.what());
  } catch (...) {
    set_error(err, "unknown C++ exception");
  }
  return kError;
}

std::string arrival_key(int rank) {
  return "arrived/" + std::to_string(rank);
}

} // namespace

extern "C" {

void lf_dist_free_string(char* s) {
  std::free(s);
}

// Connects to (rank 0: hosts) the TCPStore at host:port. Does not wait for other ranks. Every key
// of this group lives under `prefix`, so several groups of one process can share the port
// (multiTenant: one server per process and port).
int lf_dist_store_new(
    const char* host,
    uint16_t port,
    int is_server,
    int64_t timeout_ms,
    const char* prefix,
    StoreHandle** out,
    char** err) {
  return guarded(err, [&] {
    c10d::TCPStoreOptions opts;
    opts.port = port;
    opts.isServer = is_server != 0;
    opts.numWorkers = std::nullopt; // arrival is checked by lf_dist_store_arrive, which names the missing ranks
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    opts.multiTenant = true;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new StoreHandle{c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp)};
  });
}

void lf_dist_store_free(StoreHandle* handle) {
  try {
    delete handle;
  } catch (...) {
  }
}

// Announces `rank` and waits up to timeout_ms for all `world` ranks, polling the store so that
// rank 0's verdict reaches everyone. Returns:
// - kOk: everybody arrived (arrived[] all 1);
// - kRendezvousIncomplete: this rank's own deadline passed; arrived[r] = 1 if rank r's key is
//   present, 0 if absent, 2 if the store could not be asked. Rank 0 then publishes the list under
//   kAbortKey and keeps the store up briefly (until the arrived ranks acknowledge, at most 3 s),
//   so that every rank can report the same missing ranks instead of "connection closed";
// - kRendezvousAborted: rank 0 gave up first; arrived[] is rank 0's list.
int lf_dist_store_arrive(
    StoreHandle* handle,
    int rank,
    int world,
    int64_t timeout_ms,
    uint8_t* arrived,
    char** err) {
  const std::string kAbortKey = "rendezvous-failed";
  const std::string kAckKey = "rendezvous-failed-ack";
  auto& store = handle->store;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  auto pause = std::chrono::milliseconds(std::min(500, 50 + world));
  int status = guarded(err, [&] {
    std::string one("1");
    store->set(arrival_key(rank), std::vector<uint8_t>(one.begin(), one.end()));
  });
  if (status != kOk) {
    return status;
  }
  std::vector<std::string> keys;
  keys.reserve(world);
  for (int r = 0; r < world; ++r) {
    keys.push_back(arrival_key(r));
  }
  while (true) {
    bool all = false;
    bool aborted = false;
    std::vector<uint8_t> verdict;
    status = guarded(err, [&] {
      all = store->check(keys);
      if (!all && rank != 0 && store->check({kAbortKey})) {
        verdict = store->get(kAbortKey);
        aborted = true;
        store->add(kAckKey, 1);
      }
    });
    if (status != kOk) {
      for (int r = 0; r < world; ++r) {
        arrived[r] = 2;
      }
      return status; // the store is gone (rank 0 died) or the network broke
    }
    if (all) {
      for (int r = 0; r < world; ++r) {
        arrived[r] = 1;
      }
      return kOk;
    }
    if (aborted) {
      for (int r = 0; r < world; ++r) {
        arrived[r] = static_cast<size_t>(r) < verdict.size() ? verdict[r] : 2;
      }
      set_error(err, "rank 0 gave up waiting and reported the missing ranks");
      return kRendezvousAborted;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      break;
    }
    std::this_thread::sleep_for(pause);
  }
  int present = 0;
  for (int r = 0; r < world; ++r) {
    char* ignored = nullptr;
    bool here = false;
    int check = guarded(&ignored, [&] { here = store->check({keys[r]}); });
    lf_dist_free_string(ignored);
    arrived[r] = check != kOk ? 2 : (here ? 1 : 0);
    present += arrived[r] == 1 ? 1 : 0;
  }
  if (rank == 0) {
    char* ignored = nullptr;
    guarded(&ignored, [&] {
      store->set(kAbortKey, std::vector<uint8_t>(arrived, arrived + world));
      auto linger = std::chrono::steady_clock::now() + std::chrono::seconds(3);
      while (store->add(kAckKey, 0) < present - 1 && std::chrono::steady_clock::now() < linger) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    });
    lf_dist_free_string(ignored);
  }
  set_error(err, "timed out waiting for the other ranks");
  return kRendezvousIncomplete;
}

// Creates a Gloo process group over the store. `iface` (a network interface name) or `hostname`
// (an address to bind to) picks Gloo's transport device; both empty: Gloo's default device (the
// address this machine's hostname resolves to).
int lf_dist_group_new_gloo(
    StoreHandle* handle,
    int rank,
    int world,
    int64_t timeout_ms,
    const char* iface,
    const char* hostname,
    GroupHandle** out,
    char** err) {
  return guarded(err, [&] {
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("gloo", handle->store);
    auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::milliseconds(timeout_ms));
    if (iface != nullptr && iface[0] != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(iface));
    } else if (hostname != nullptr && hostname[0] != '\0') {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(hostname));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(prefixed, rank, world, opts);
    *out = new GroupHandle{pg, -1};
  });
}

// Creates an NCCL process group for CUDA device `device_index` (made the current device).
int lf_dist_group_new_nccl(
    StoreHandle* handle,
    int rank,
    int world,
    int64_t timeout_ms,
    int64_t device_index,
    GroupHandle** out,
    char** err) {
#ifdef LF_DIST_NCCL
  return guarded(err, [&] {
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device_index));
    auto prefixed = c10::make_intrusive<c10d::PrefixStore>("nccl", handle->store);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = std::chrono::milliseconds(timeout_ms);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(prefixed, rank, world, opts);
    *out = new GroupHandle{pg, device_index};
  });
#else
  (void)handle;
  (void)rank;
  (void)world;
  (void)timeout_ms;
  (void)device_index;
  (void)out;
  set_error(err, "lf-dist was built without the `nccl` feature");
  return kError;
#endif
}

void lf_dist_group_free(GroupHandle* group) {
  if (group == nullptr) {
    return;
  }
  try {
    group->backend->shutdown();
  } catch (...) {
  }
  try {
    delete group;
  } catch (...) {
  }
}

// Collectives. Each *_start launches the operation and returns a WorkHandle to wait on later
// (overlap with computation); the blocking variants are *_start + wait. The WorkHandle keeps
// references to the tensors so their storage outlives the operation.
int lf_dist_all_reduce_sum_start(GroupHandle* group, at::Tensor* tensor, WorkHandle** out, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    auto work = group->backend->allreduce(tensors, opts);
    *out = new WorkHandle{work, {*tensor}};
  });
}

int lf_dist_reduce_scatter_sum_start(
    GroupHandle* group,
    const at::Tensor* input,
    at::Tensor* output,
    WorkHandle** out,
    char** err) {
  return guarded(err, [&] {
    at::Tensor in = *input;
    c10d::ReduceScatterOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    auto work = group->backend->_reduce_scatter_base(*output, in, opts);
    *out = new WorkHandle{work, {in, *output}};
  });
}

int lf_dist_all_gather_start(
    GroupHandle* group,
    const at::Tensor* input,
    at::Tensor* output,
    WorkHandle** out,
    char** err) {
  return guarded(err, [&] {
    at::Tensor in = *input;
    auto work = group->backend->_allgather_base(*output, in, c10d::AllgatherOptions());
    *out = new WorkHandle{work, {in, *output}};
  });
}

int lf_dist_broadcast_start(GroupHandle* group, at::Tensor* tensor, int root, WorkHandle** out, char** err) {
  return guarded(err, [&] {
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    auto work = group->backend->broadcast(tensors, opts);
    *out = new WorkHandle{work, {*tensor}};
  });
}

// Blocks until the operation completed on this rank; throws (here: returns an error) when it
// failed or ran past the group's timeout.
int lf_dist_work_wait(WorkHandle* handle, char** err) {
  return guarded(err, [&] { handle->work->wait(); });
}

void lf_dist_work_free(WorkHandle* handle) {
  try {
    delete handle;
  } catch (...) {
  }
}

int lf_dist_barrier(GroupHandle* group, char** err) {
  return guarded(err, [&] {
    c10d::BarrierOptions opts;
    if (group->device_index >= 0) {
      opts.device_ids = {group->device_index};
    }
    group->backend->barrier(opts)->wait();
  });
}

// Peak bytes allocated by the CUDA caching allocator on `device` since the start or the last
// lf_dist_cuda_reset_peak (the statistic torch.cuda.max_memory_allocated reports).
int lf_dist_cuda_peak_allocated(int64_t device, uint64_t* out, char** err) {
#ifdef LF_DIST_NCCL
  return guarded(err, [&] {
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *out = static_cast<uint64_t>(stats.allocated_bytes[aggregate].peak);
  });
#else
  (void)device;
  (void)out;
  set_error(err, "lf-dist was built without the `nccl` feature (no CUDA support)");
  return kError;
#endif
}

int lf_dist_cuda_reset_peak(int64_t device, char** err) {
#ifdef LF_DIST_NCCL
  return guarded(err, [&] {
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
  });
#else
  (void)device;
  set_error(err, "lf-dist was built without the `nccl` feature (no CUDA support)");
  return kError;
#endif
}

// A tensor's gradient slot (`.grad`), which tch cannot assign: ZeRO hands each rank's optimiser a
// gradient shard it did not compute through autograd, and frees full gradients after the
// reduce-scatter. `grad` null clears the slot (the next backward allocates a fresh gradient).
int lf_dist_set_grad(at::Tensor* tensor, at::Tensor* grad, char** err) {
  return guarded(err, [&] {
    if (grad == nullptr) {
      tensor->mutable_grad().reset();
    } else {
      tensor->mutable_grad() = *grad;
    }
  });
}

} // extern "C"
