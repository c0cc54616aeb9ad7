//! Per-GPU utilisation, memory, temperature and power through NVML (`libnvidia-ml.so.1`, the
//! library the NVIDIA driver installs), loaded at run time: a machine without it (the CPU, CI) has
//! no GPU figures, and that is not an error. NVML sees the GPUs of this container (all the pod's
//! GPUs), whatever `CUDA_VISIBLE_DEVICES` says.

use std::ffi::{c_int, c_uint, c_ulonglong, c_void};

use libloading::Library;

/// The driver's library; `LF_NVML_LIBRARY` names another (a test double, a driver elsewhere).
pub const DEFAULT_LIBRARY: &str = "libnvidia-ml.so.1";
pub const LIBRARY_VAR: &str = "LF_NVML_LIBRARY";

type Handle = *mut c_void;
const NVML_SUCCESS: c_int = 0;
const NVML_TEMPERATURE_GPU: c_int = 0;

#[repr(C)]
#[derive(Default)]
struct Utilization {
    gpu: c_uint,
    memory: c_uint,
}

#[repr(C)]
#[derive(Default)]
struct Memory {
    total: c_ulonglong,
    free: c_ulonglong,
    used: c_ulonglong,
}

/// One GPU's figures (each `None` when NVML does not report it for that device).
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSample {
    pub index: u32,
    pub utilization_percent: Option<f64>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub temperature_celsius: Option<f64>,
    pub power_watts: Option<f64>,
}

/// NVML, initialised, with the device handles.
pub struct Nvml {
    devices: Vec<Handle>,
    utilization: unsafe extern "C" fn(Handle, *mut Utilization) -> c_int,
    memory: unsafe extern "C" fn(Handle, *mut Memory) -> c_int,
    temperature: unsafe extern "C" fn(Handle, c_int, *mut c_uint) -> c_int,
    power: unsafe extern "C" fn(Handle, *mut c_uint) -> c_int,
    // Last: the function pointers above point into it.
    _library: Library,
}

// SAFETY: NVML's API is thread-safe (NVIDIA's NVML reference, "Thread safety"); the handles are
// opaque pointers NVML owns for the life of the initialised library, which `Nvml` keeps loaded.
unsafe impl Send for Nvml {}
unsafe impl Sync for Nvml {}

impl Nvml {
    /// Loads `library`, initialises NVML and enumerates the GPUs; why not, when it cannot.
    pub fn load(library: &str) -> Result<Nvml, String> {
        // SAFETY: loading the NVIDIA management library runs its (driver-provided) initialisers.
        let lib = unsafe { Library::new(library) }.map_err(|e| e.to_string())?;
        // SAFETY: each symbol is declared with the signature of NVML's public header (nvml.h).
        unsafe {
            let init: unsafe extern "C" fn() -> c_int =
                *lib.get(b"nvmlInit_v2\0").map_err(|e| e.to_string())?;
            let count_fn: unsafe extern "C" fn(*mut c_uint) -> c_int = *lib
                .get(b"nvmlDeviceGetCount_v2\0")
                .map_err(|e| e.to_string())?;
            let handle_fn: unsafe extern "C" fn(c_uint, *mut Handle) -> c_int = *lib
                .get(b"nvmlDeviceGetHandleByIndex_v2\0")
                .map_err(|e| e.to_string())?;
            let utilization = *lib
                .get(b"nvmlDeviceGetUtilizationRates\0")
                .map_err(|e| e.to_string())?;
            let memory = *lib
                .get(b"nvmlDeviceGetMemoryInfo\0")
                .map_err(|e| e.to_string())?;
            let temperature = *lib
                .get(b"nvmlDeviceGetTemperature\0")
                .map_err(|e| e.to_string())?;
            let power = *lib
                .get(b"nvmlDeviceGetPowerUsage\0")
                .map_err(|e| e.to_string())?;
            let rc = init();
            if rc != NVML_SUCCESS {
                return Err(format!("nvmlInit_v2 returned {rc}"));
            }
            let mut count: c_uint = 0;
            let rc = count_fn(&mut count);
            if rc != NVML_SUCCESS {
                return Err(format!("nvmlDeviceGetCount_v2 returned {rc}"));
            }
            let mut devices = Vec::with_capacity(count as usize);
            for i in 0..count {
                let mut handle: Handle = std::ptr::null_mut();
                if handle_fn(i, &mut handle) == NVML_SUCCESS {
                    devices.push(handle);
                }
            }
            Ok(Nvml {
                devices,
                utilization,
                memory,
                temperature,
                power,
                _library: lib,
            })
        }
    }

    /// Every GPU's current figures.
    pub fn sample(&self) -> Vec<GpuSample> {
        self.devices
            .iter()
            .enumerate()
            .map(|(index, &device)| {
                let (mut util, mut mem) = (Utilization::default(), Memory::default());
                let (mut temp, mut milliwatts): (c_uint, c_uint) = (0, 0);
                // SAFETY: `device` is a handle NVML gave for this initialised library; each out
                // parameter is a live, correctly laid out value.
                let (u, m, t, p) = unsafe {
                    (
                        (self.utilization)(device, &mut util),
                        (self.memory)(device, &mut mem),
                        (self.temperature)(device, NVML_TEMPERATURE_GPU, &mut temp),
                        (self.power)(device, &mut milliwatts),
                    )
                };
                let ok = |rc: c_int| rc == NVML_SUCCESS;
                GpuSample {
                    index: index as u32,
                    utilization_percent: ok(u).then_some(util.gpu as f64),
                    memory_used_bytes: ok(m).then_some(mem.used),
                    memory_total_bytes: ok(m).then_some(mem.total),
                    temperature_celsius: ok(t).then_some(temp as f64),
                    power_watts: ok(p).then_some(milliwatts as f64 / 1000.0),
                }
            })
            .collect()
    }
}
