//! The host memory one training step needs, measured in a child process (this test binary re-run
//! on one ignored test): the kernel's peak-RSS counter is reset (`/proc/self/clear_refs`) right
//! before the step, and the step's peak is `VmHWM` minus the RSS at that point. The child's large
//! allocations are mmapped (a fixed `MALLOC_MMAP_THRESHOLD_`), so freed tensors go back to the
//! system and the peak is that of the live tensors, not of glibc's heap history.

use std::process::Command;

/// The line a child prints its result on.
const RESULT: &str = "LF_PEAK_RSS_RESULT";

fn status_kib(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = text
        .lines()
        .find(|l| l.starts_with(key))
        .expect("status line");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number")
}

/// In the child: runs `step` and prints the bytes its peak RSS rose by, and the value it returns.
/// Run no warm-up step before: memory the allocator keeps after a step stays resident and would
/// hide the next step's peak (one-time allocations are the same in every case and cancel out).
pub fn report_step(step: impl FnOnce() -> f64) {
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs");
    let before = status_kib("VmRSS:");
    let value = step();
    let peak = status_kib("VmHWM:");
    println!("{RESULT} {} {value}", (peak - before) * 1024);
}

/// In the parent: re-runs this binary on the ignored test `child` with `env` set, and returns
/// what its [`report_step`] printed: the step's peak bytes and value.
pub fn measure(child: &str, env: &[(&str, String)]) -> (u64, f64) {
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(&exe)
        .args([
            "--exact",
            child,
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        // A fixed mmap threshold: glibc otherwise raises it each time an mmapped block is freed,
        // after which large tensors come from the heap, where freed ones linger and fragment.
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        .output()
        .expect("child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once(RESULT).map(|(_, r)| r.to_string()))
        .unwrap_or_else(|| {
            panic!(
                "child failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut parts = line.split_whitespace();
    let bytes = parts.next().and_then(|v| v.parse().ok()).expect("bytes");
    let value = parts.next().and_then(|v| v.parse().ok()).expect("value");
    (bytes, value)
}
