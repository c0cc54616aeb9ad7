//! Memory cgroups, as a kubelet with runc makes them: one per run of a container at
//! `<hierarchy>/lf-node/<node>-<state-dir hash>/<pod-uid>/<container>-<run>` (run 1, 2, ... as it restarts: a
//! directory still being removed never meets the next run), limited to the container's
//! `resources.limits.memory` (no swap on top). The launch chain joins it in the forked child before
//! it executes anything (see `launch::spawn`), so everything the container runs is charged there
//! and the kernel's OOM killer acts at the limit. When the container exits its OOM kills are read
//! (v1 `memory.oom_control`, v2 `memory.events`: `oom_kill N`) and reported as `OOMKilled`; what
//! the container left behind is killed and the directory removed, as are the pod's directory when
//! the pod is done and the node's at start (a crashed run's) and at exit.
//!
//! cgroup v1 (the hierarchy the `memory` controller is mounted on) and v2 (a unified hierarchy
//! whose `cgroup.controllers` lists `memory`; the controller is enabled down the tree through
//! `cgroup.subtree_control`, `memory.oom.group` kills the whole container as the kubelet asks) are
//! supported. Without either, memory limits are not enforced (said once at start).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup version of the memory controller's hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The node's part of the memory hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroups {
    pub version: Version,
    /// `<mount>/lf-node/<node>-<state-dir hash>`: one directory per pod uid below it.
    pub root: PathBuf,
}

/// Where the memory controller is mounted, from `/proc/self/mounts`: the cgroup v1 hierarchy with
/// the `memory` option, and the cgroup2 mount points (whose controllers are checked separately).
pub fn memory_mounts(mounts: &str) -> (Option<PathBuf>, Vec<PathBuf>) {
    let mut v1 = None;
    let mut v2 = vec![];
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, target, fstype, options, ..] = fields[..] else {
            continue;
        };
        match fstype {
            "cgroup" if v1.is_none() && options.split(',').any(|o| o == "memory") => {
                v1 = Some(PathBuf::from(target));
            }
            "cgroup2" => v2.push(PathBuf::from(target)),
            _ => {}
        }
    }
    (v1, v2)
}

/// `oom_kill N` from v1 `memory.oom_control` or v2 `memory.events` (absent before Linux 4.13).
pub fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut parts = l.split_whitespace();
        (parts.next() == Some("oom_kill"))
            .then(|| parts.next()?.parse().ok())
            .flatten()
    })
}

/// Whether a space-separated controller list (`cgroup.controllers`, `cgroup.subtree_control`)
/// names the memory controller.
pub fn lists_memory(controllers: &str) -> bool {
    controllers.split_whitespace().any(|c| c == "memory")
}

/// The values a limit is written as: v1 `memory.limit_in_bytes` (`-1`: none), v2 `memory.max`.
pub fn limit_value(version: Version, bytes: Option<u64>) -> String {
    match (version, bytes) {
        (_, Some(b)) => b.to_string(),
        (Version::V1, None) => "-1".into(),
        (Version::V2, None) => "max".into(),
    }
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("writing {value:?} to {}: {e}", path.display()),
        )
    })
}

/// Enables the memory controller for a v2 directory's children.
fn enable_memory(dir: &Path) -> io::Result<()> {
    let control = dir.join("cgroup.subtree_control");
    if std::fs::read_to_string(&control).is_ok_and(|s| lists_memory(&s)) {
        return Ok(());
    }
    write(&control, "+memory")
}

fn mkdir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(io::Error::new(
            e.kind(),
            format!("creating {}: {e}", dir.display()),
        )),
        _ => Ok(()),
    }
}

/// The node's directory name under `lf-node/`: its name and a short hash of its state directory,
/// so that nodes of the same name in different clusters on one host stay apart while a restarted
/// node (same state directory) finds its own leftovers.
pub fn instance_name(node: &str, state_dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    state_dir.hash(&mut h);
    format!("{node}-{:08x}", h.finish() as u32)
}

impl Cgroups {
    /// The node's cgroup directory, created (and, on v2, the memory controller enabled down to
    /// it), or `None` with the reason logged once: memory limits are then not enforced.
    pub fn detect(node: &str) -> Option<Cgroups> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let (v1, v2) = memory_mounts(&mounts);
        let found = match v1 {
            Some(m) => Some((Version::V1, m)),
            None => v2
                .into_iter()
                .find(|m| {
                    std::fs::read_to_string(m.join("cgroup.controllers"))
                        .is_ok_and(|s| lists_memory(&s))
                })
                .map(|m| (Version::V2, m)),
        };
        let Some((version, mount)) = found else {
            tracing::warn!("no memory cgroup hierarchy (cgroup v1 memory or v2 with memory): container memory limits are not enforced and OOMKilled is never reported");
            return None;
        };
        let cgroups = Cgroups {
            version,
            root: mount.join("lf-node").join(node),
        };
        match cgroups.create_root(&mount) {
            Ok(()) => {
                tracing::info!(?version, root = %cgroups.root.display(), "container memory limits are enforced with memory cgroups");
                Some(cgroups)
            }
            Err(e) => {
                tracing::warn!(?version, error = %e, "cannot create the node's memory cgroup: container memory limits are not enforced and OOMKilled is never reported");
                None
            }
        }
    }

    fn create_root(&self, mount: &Path) -> io::Result<()> {
        let parent = self.root.parent().unwrap_or(mount);
        if self.version == Version::V2 {
            enable_memory(mount)?;
        }
        for dir in [parent, &self.root] {
            mkdir(dir)?;
            if self.version == Version::V2 {
                enable_memory(dir)?;
            }
        }
        Ok(())
    }

    pub fn pod_dir(&self, pod_uid: &str) -> PathBuf {
        self.root.join(pod_uid)
    }

    /// The directory of one run of a container.
    pub fn container_dir(&self, pod_uid: &str, container: &str, run: u64) -> PathBuf {
        self.pod_dir(pod_uid).join(format!("{container}-{run}"))
    }

    /// A fresh cgroup for one run of a container, limited to `limit` bytes (none: unlimited) with
    /// no swap. A directory found there anyway is emptied and reused; its earlier OOM kills do not
    /// count.
    pub fn create(
        &self,
        pod_uid: &str,
        container: &str,
        run: u64,
        limit: Option<u64>,
    ) -> io::Result<ContainerCgroup> {
        let pod = self.pod_dir(pod_uid);
        mkdir(&pod)?;
        if self.version == Version::V2 {
            enable_memory(&pod)?;
        }
        let dir = self.container_dir(pod_uid, container, run);
        if dir.exists() {
            let _ = remove_tree(&dir, Duration::from_millis(500));
        }
        mkdir(&dir)?;
        let limit_text = limit_value(self.version, limit);
        match self.version {
            Version::V1 => {
                // memsw (memory + swap) may never be below the memory limit: lift it first, then
                // set both to the limit (the kubelet's "no swap" on v1).
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                let has_memsw = memsw.exists();
                if has_memsw {
                    write(&memsw, "-1")?;
                }
                write(&dir.join("memory.limit_in_bytes"), &limit_text)?;
                if has_memsw {
                    write(&memsw, &limit_text)?;
                }
            }
            Version::V2 => {
                write(&dir.join("memory.max"), &limit_text)?;
                let swap = dir.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
                let group = dir.join("memory.oom.group");
                if group.exists() {
                    write(&group, "1")?;
                }
            }
        }
        let mut cg = ContainerCgroup {
            version: self.version,
            dir,
            baseline: None,
        };
        cg.baseline = cg.oom_kills();
        Ok(cg)
    }

    /// Removes a pod's cgroups (killing what is left in them).
    pub fn remove_pod(&self, pod_uid: &str) {
        let dir = self.pod_dir(pod_uid);
        if let Err(e) = remove_tree(&dir, Duration::from_secs(5)) {
            tracing::warn!(dir = %dir.display(), error = %e, "removing the pod's cgroups");
        }
    }

    /// Removes every pod's cgroups (the leftovers of a crashed run, at start).
    pub fn remove_pods(&self) {
        for sub in subdirs(&self.root) {
            tracing::info!(dir = %sub.display(), "removing a leftover pod cgroup");
            if let Err(e) = remove_tree(&sub, Duration::from_secs(5)) {
                tracing::warn!(dir = %sub.display(), error = %e, "removing a leftover pod cgroup");
            }
        }
    }

    /// Removes the node's directory, and `lf-node/` when no other node uses it (at exit).
    pub fn remove_node(&self) {
        if let Err(e) = remove_tree(&self.root, Duration::from_secs(5)) {
            tracing::warn!(dir = %self.root.display(), error = %e, "removing the node's cgroups");
        }
        if let Some(parent) = self.root.parent() {
            // Busy while another node of this machine still has its directory there.
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// One run of a container's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCgroup {
    pub version: Version,
    pub dir: PathBuf,
    /// OOM kills counted before the container ran (a reused directory's).
    baseline: Option<u64>,
}

impl ContainerCgroup {
    /// The file the launch chain writes itself into.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    fn oom_kills(&self) -> Option<u64> {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        parse_oom_kills(&std::fs::read_to_string(self.dir.join(file)).ok()?)
    }

    /// Whether the kernel's OOM killer killed a process of this run. Without an `oom_kill`
    /// counter (v1 before Linux 4.13): the limit was hit and the container died of SIGKILL.
    pub fn oom_killed(&self, signal: Option<i32>) -> bool {
        match self.oom_kills() {
            Some(n) => n > self.baseline.unwrap_or(0),
            None => {
                let failcnt = std::fs::read_to_string(self.dir.join("memory.failcnt"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                self.version == Version::V1 && failcnt > 0 && signal == Some(libc::SIGKILL)
            }
        }
    }

    /// Kills what the container left in its cgroup and removes the directory (in the background:
    /// dying processes keep it busy for a moment).
    pub fn release(self) {
        kill_all(&self.dir);
        tokio::task::spawn_blocking(move || {
            if let Err(e) = remove_tree(&self.dir, Duration::from_secs(5)) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "removing a container's cgroup");
            }
        });
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The processes of one cgroup (not of its children).
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILL to every process of a cgroup (v2: `cgroup.kill`, children included).
fn kill_all(dir: &Path) {
    let kill = dir.join("cgroup.kill");
    if kill.exists() && std::fs::write(&kill, "1").is_ok() {
        return;
    }
    for pid in procs(dir) {
        if pid > 1 {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Removes a cgroup directory and its children, deepest first, killing their processes and
/// retrying while dying processes keep a directory busy, until `patience` is spent.
pub fn remove_tree(dir: &Path, patience: Duration) -> io::Result<()> {
    let deadline = Instant::now() + patience;
    remove_until(dir, deadline)
}

fn remove_until(dir: &Path, deadline: Instant) -> io::Result<()> {
    for sub in subdirs(dir) {
        remove_until(&sub, deadline)?;
    }
    loop {
        // Only the directory: a cgroup's control files go with it (they cannot be unlinked).
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("removing {}: {e}", dir.display()),
                ))
            }
            Err(_) => {
                kill_all(dir);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn same_node_name_in_two_clusters_gets_two_directories() {
        let a = instance_name("lf-node-1", Path::new("/tmp/lf-e2e.a/cluster/node-1"));
        let b = instance_name("lf-node-1", Path::new("/tmp/lf-e2e.b/cluster/node-1"));
        assert_ne!(a, b);
        assert!(a.starts_with("lf-node-1-"));
        assert_eq!(
            a,
            instance_name("lf-node-1", Path::new("/tmp/lf-e2e.a/cluster/node-1"))
        );
    }

    #[test]
    fn finds_the_memory_hierarchies() {
        let (v1, v2) = memory_mounts(MOUNTS);
        assert_eq!(v1, Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(v2, vec![PathBuf::from("/sys/fs/cgroup/unified")]);
        // Pure v2 (the systemd default) and a v1 hierarchy with the controllers co-mounted.
        let (v1, v2) = memory_mounts("cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n");
        assert_eq!((v1, v2), (None, vec![PathBuf::from("/sys/fs/cgroup")]));
        let (v1, _) = memory_mounts("cgroup /c/m cgroup rw,memory,hugetlb 0 0\nbad line\n");
        assert_eq!(v1, Some(PathBuf::from("/c/m")));
        let (v1, _) = memory_mounts("cgroup /c/x cgroup rw,memory_recursiveprot 0 0\n");
        assert_eq!(v1, None);
    }

    #[test]
    fn parses_oom_kill_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_oom_kills(v1), Some(2));
        let v2 = "low 0\nhigh 0\nmax 14\noom 1\noom_kill 1\noom_group_kill 1\n";
        assert_eq!(parse_oom_kills(v2), Some(1));
        // Linux before 4.13 has no counter.
        assert_eq!(parse_oom_kills("oom_kill_disable 0\nunder_oom 0\n"), None);
        assert_eq!(parse_oom_kills(""), None);
    }

    #[test]
    fn controller_lists_and_limit_values() {
        assert!(lists_memory("cpuset cpu io memory pids\n"));
        assert!(!lists_memory("cpuset cpu io pids"));
        assert!(!lists_memory("memory_x"));
        assert_eq!(limit_value(Version::V1, Some(150 << 20)), "157286400");
        assert_eq!(limit_value(Version::V1, None), "-1");
        assert_eq!(limit_value(Version::V2, None), "max");
    }

    #[test]
    fn layout() {
        let cg = Cgroups {
            version: Version::V1,
            root: PathBuf::from("/sys/fs/cgroup/memory/lf-node/n0"),
        };
        assert_eq!(
            cg.container_dir("uid-1", "trainer", 2),
            PathBuf::from("/sys/fs/cgroup/memory/lf-node/n0/uid-1/trainer-2")
        );
        let c = ContainerCgroup {
            version: Version::V1,
            dir: cg.container_dir("uid-1", "trainer", 1),
            baseline: None,
        };
        assert_eq!(
            c.procs(),
            PathBuf::from("/sys/fs/cgroup/memory/lf-node/n0/uid-1/trainer-1/cgroup.procs")
        );
    }

    /// The counters as files (a plain directory stands in for the cgroup).
    #[test]
    fn oom_verdict_from_the_counters() {
        let dir = tempfile::tempdir().unwrap();
        let c = |version, baseline| ContainerCgroup {
            version,
            dir: dir.path().to_path_buf(),
            baseline,
        };
        let put = |f: &str, s: &str| std::fs::write(dir.path().join(f), s).unwrap();
        put(
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        );
        assert!(c(Version::V1, Some(0)).oom_killed(Some(libc::SIGKILL)));
        assert!(!c(Version::V1, Some(1)).oom_killed(Some(libc::SIGKILL)));
        put("memory.events", "oom 0\noom_kill 0\n");
        assert!(!c(Version::V2, Some(0)).oom_killed(Some(libc::SIGKILL)));
        // No counter: the limit was hit and SIGKILL ended it.
        put("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\n");
        put("memory.failcnt", "3\n");
        assert!(c(Version::V1, None).oom_killed(Some(libc::SIGKILL)));
        assert!(!c(Version::V1, None).oom_killed(None));
        put("memory.failcnt", "0\n");
        assert!(!c(Version::V1, None).oom_killed(Some(libc::SIGKILL)));
    }

    /// On a host with memory cgroups (and as root): a shell that outgrows its limit is killed by
    /// the kernel, the counter says so, and everything is removed. Skipped elsewhere.
    #[test]
    fn a_real_oom_kill_is_detected() {
        let node = format!("unit-test-{}", std::process::id());
        let Some(cgroups) = Cgroups::detect(&node) else {
            eprintln!("no memory cgroups here: skipped");
            return;
        };
        let run = |n: u64, limit: u64, script: &str| {
            let cg = cgroups.create("pod-uid", "main", n, Some(limit)).unwrap();
            let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
                cg.procs().as_os_str(),
            ))
            .unwrap();
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", script]);
            // SAFETY: join_cgroup is async-signal-safe.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    crate::launch::join_cgroup(&path)
                });
            }
            let status = cmd.status().unwrap();
            let signal = std::os::unix::process::ExitStatusExt::signal(&status);
            let verdict = (status.code(), signal, cg.oom_killed(signal));
            kill_all(&cg.dir);
            remove_tree(&cg.dir, Duration::from_secs(5)).unwrap();
            verdict
        };
        // 64 MiB of shell variable against a 16 MiB limit.
        let hog = "x=$(head -c 67108864 /dev/zero | tr '\\0' a); [ ${#x} = 67108864 ]";
        assert_eq!(run(1, 16 << 20, hog), (None, Some(libc::SIGKILL), true));
        assert_eq!(run(2, 1 << 30, hog), (Some(0), None, false));
        assert_eq!(run(3, 16 << 20, "exit 3"), (Some(3), None, false));
        cgroups.remove_node();
        assert!(!cgroups.root.exists());
    }

    #[test]
    fn remove_tree_takes_children_first() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pod");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(root.join("b")).unwrap();
        remove_tree(&root, Duration::from_millis(100)).unwrap();
        assert!(!root.exists());
        remove_tree(&root, Duration::from_millis(100)).unwrap();
    }
}
