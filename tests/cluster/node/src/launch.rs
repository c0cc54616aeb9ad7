//! Starting a container: a generated shell script run as
//! `ip netns exec <netns> unshare --uts sh -c <script>`. `ip netns exec` enters the pod's network
//! namespace, unshares a mount namespace (with `/` made rslave, so nothing propagates back) and
//! bind-mounts `/etc/netns/<netns>/*` over `/etc/*` (the pod's hosts file). The script makes the
//! container's bind mounts, sets the UTS hostname, remounts `/` read-only when asked, then
//! `exec setpriv ... env -i ... <command>`: the process keeps the spawned pid and process group, and
//! the memory cgroup the forked child joined before it executed `ip` (see `cgroup.rs`).

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::error::{ContainerError, Error, Result};
use crate::volumes::{host_path, Mount};

/// PATH of the launch chain (`ip`, `unshare`, `sh`, `mount`, `setpriv`, `env`).
pub const HOST_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// What a runtime searches when the container's environment has no PATH.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The content of the start marker once the script reached the container's command.
pub const STARTED: &[u8] = b"started";

/// The user, group and supplementary groups a container runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: i64,
    pub gid: i64,
    pub groups: Vec<i64>,
}

/// The container's identity from its securityContext, then the pod's (root when unset; no image
/// user exists). `runAsNonRoot` without a non-zero `runAsUser` is the kubelet's config error.
pub fn identity(pod: &Pod, container: &Container) -> Result<Identity, ContainerError> {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = container.security_context.as_ref();
    let uid = csc
        .and_then(|c| c.run_as_user)
        .or(psc.and_then(|p| p.run_as_user));
    let gid = csc
        .and_then(|c| c.run_as_group)
        .or(psc.and_then(|p| p.run_as_group));
    let non_root = csc
        .and_then(|c| c.run_as_non_root)
        .or(psc.and_then(|p| p.run_as_non_root))
        .unwrap_or(false);
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    if non_root {
        match uid {
            None => {
                return Err(ContainerError::config(format!(
                    "container has runAsNonRoot and image will run as root (pod: {pod_name:?}, container: {})",
                    container.name
                )))
            }
            Some(0) => {
                return Err(ContainerError::config(format!(
                    "container's runAsUser breaks non-root policy (pod: {pod_name:?}, container: {})",
                    container.name
                )))
            }
            Some(_) => {}
        }
    }
    let mut groups: Vec<i64> = vec![];
    for g in psc.and_then(|p| p.fs_group).into_iter().chain(
        psc.and_then(|p| p.supplemental_groups.clone())
            .into_iter()
            .flatten(),
    ) {
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    Ok(Identity {
        uid: uid.unwrap_or(0),
        gid: gid.unwrap_or(0),
        groups,
    })
}

/// Whether the container asked for a read-only root filesystem.
pub fn read_only_root(container: &Container) -> bool {
    container
        .security_context
        .as_ref()
        .and_then(|s| s.read_only_root_filesystem)
        .unwrap_or(false)
}

/// Everything the launch script needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub netns: String,
    pub hostname: String,
    pub mounts: Vec<Mount>,
    /// Where the mount sources are staged first (under [`stage_root`]).
    pub stage_dir: String,
    /// Mount targets that are files (their source is a file).
    pub file_targets: BTreeSet<String>,
    pub read_only_root: bool,
    pub working_dir: String,
    pub identity: Identity,
    pub env: Vec<(String, String)>,
    pub argv: Vec<String>,
}

/// Single-quotes a string for `sh`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Where a pod's container stages its mount sources (see [`script`]); removed with the sandbox.
pub fn stage_root(netns: &str) -> PathBuf {
    PathBuf::from(format!("/run/lf-node/{netns}"))
}

/// Whether mounting at `target` hides `path`.
fn shadows(target: &str, path: &str) -> bool {
    let t = target.trim_end_matches('/');
    t.is_empty() || path == t || path.starts_with(&format!("{t}/"))
}

/// The launch script. Every value is quoted; setup failures exit before the start marker (stdin,
/// opened for writing by the node) is written.
///
/// Mounts go in two phases, as a container runtime resolves every source on the host before it
/// mounts anything into the container: first each source is bind-mounted at `stage_dir/<i>`,
/// then each staged copy at its target, parents before children. A source under another mount's
/// target (a claim's directory under `/tmp` while the pod mounts an emptyDir at `/tmp`) is thus
/// never shadowed. Targets that would hide the staging directory itself go last.
pub fn script(spec: &LaunchSpec) -> String {
    let mut s = String::from("set -e\n");
    let stage = spec.stage_dir.trim_end_matches('/');
    s.push_str(&format!("mkdir -p {}\n", quote(stage)));
    for (i, m) in spec.mounts.iter().enumerate() {
        let staged = quote(&format!("{stage}/{i}"));
        if spec.file_targets.contains(&m.target) {
            s.push_str(&format!("[ -e {staged} ] || : > {staged}\n"));
        } else {
            s.push_str(&format!("mkdir -p {staged}\n"));
        }
        s.push_str(&format!(
            "mount --bind {} {staged}\n",
            quote(&m.source.to_string_lossy())
        ));
    }
    let mut order: Vec<usize> = (0..spec.mounts.len()).collect();
    order.sort_by_key(|&i| {
        let t = &spec.mounts[i].target;
        (
            shadows(t, stage),
            t.trim_end_matches('/').matches('/').count(),
        )
    });
    for i in order {
        let m = &spec.mounts[i];
        let target = quote(&m.target);
        if spec.file_targets.contains(&m.target) {
            let parent = Path::new(&m.target)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|| "/".into());
            s.push_str(&format!(
                "[ -e {target} ] || {{ mkdir -p {}; : > {target}; }}\n",
                quote(&parent)
            ));
        } else {
            s.push_str(&format!("[ -d {target} ] || mkdir -p {target}\n"));
        }
        s.push_str(&format!(
            "mount --bind {} {target}\n",
            quote(&format!("{stage}/{i}"))
        ));
        if m.read_only {
            s.push_str(&format!("mount -o remount,bind,ro {target}\n"));
        }
    }
    let wd = quote(&spec.working_dir);
    s.push_str(&format!("[ -d {wd} ] || mkdir -p {wd}\n"));
    if spec.read_only_root {
        s.push_str("mount -o remount,bind,ro /\n");
    }
    s.push_str(&format!(
        "printf %s {} > /proc/sys/kernel/hostname\n",
        quote(&spec.hostname)
    ));
    s.push_str(&format!("cd {wd}\n"));
    s.push_str("printf started >&0\nexec </dev/null\n");
    let groups = if spec.identity.groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!(
            "--groups={}",
            spec.identity
                .groups
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    s.push_str(&format!(
        "exec setpriv --reuid={} --regid={} {groups} -- env -i --",
        spec.identity.uid, spec.identity.gid
    ));
    for (k, v) in &spec.env {
        s.push(' ');
        s.push_str(&quote(&format!("{k}={v}")));
    }
    for a in &spec.argv {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s.push('\n');
    s
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Looks the command up as the runtime would inside the container (through its mounts and PATH);
/// the error is the runtime's StartError message.
pub fn find_executable(
    argv0: &str,
    path_env: Option<&str>,
    working_dir: &str,
    mounts: &[Mount],
) -> Result<(), String> {
    if argv0.contains('/') {
        let full = if argv0.starts_with('/') {
            argv0.to_string()
        } else {
            format!("{}/{argv0}", working_dir.trim_end_matches('/'))
        };
        return if is_executable(&host_path(&full, mounts)) {
            Ok(())
        } else {
            Err(format!(
                "exec: {argv0:?}: stat {full}: no such file or directory"
            ))
        };
    }
    let found = path_env
        .unwrap_or(DEFAULT_PATH)
        .split(':')
        .map(|d| if d.is_empty() { working_dir } else { d })
        .any(|d| {
            is_executable(&host_path(
                &format!("{}/{argv0}", d.trim_end_matches('/')),
                mounts,
            ))
        });
    if found {
        Ok(())
    } else {
        Err(format!(
            "exec: {argv0:?}: executable file not found in $PATH"
        ))
    }
}

/// A started container process (the leader of its own process group).
#[derive(Debug)]
pub struct Started {
    pub child: tokio::process::Child,
    pub pid: i32,
}

/// Writes the calling process into a cgroup (`0` names the writer). Runs in the forked child
/// before it executes the launch chain: only open(2), write(2) and close(2) on a path allocated
/// before the fork, which are async-signal-safe.
pub fn join_cgroup(procs: &CStr) -> std::io::Result<()> {
    // SAFETY: a valid NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: one byte from a static buffer to an open descriptor.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let err = std::io::Error::last_os_error();
    // SAFETY: the descriptor opened above, closed once.
    unsafe { libc::close(fd) };
    if n == 1 {
        Ok(())
    } else {
        Err(err)
    }
}

/// Spawns the launch chain with stdout and stderr appended to `log` and the start marker as stdin,
/// in the cgroup whose `cgroup.procs` is given (joined before anything is executed, so the
/// container's every process is charged there).
pub fn spawn(
    spec: &LaunchSpec,
    log: &Path,
    marker: &Path,
    cgroup_procs: Option<&Path>,
) -> Result<Started> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| Error::io("duplicating the log file", e))?;
    let marker_file = std::fs::File::create(marker)
        .map_err(|e| Error::io(format!("creating {}", marker.display()), e))?;
    let mut command = tokio::process::Command::new("ip");
    command
        .args(["netns", "exec", &spec.netns, "unshare", "--uts", "sh", "-c"])
        .arg(script(spec))
        .env_clear()
        .env("PATH", HOST_PATH)
        .stdin(Stdio::from(marker_file))
        .stdout(Stdio::from(log_file))
        .stderr(Stdio::from(log_err))
        .process_group(0);
    if let Some(procs) = cgroup_procs {
        let path = CString::new(procs.as_os_str().as_bytes())
            .map_err(|_| Error::Invalid(format!("cgroup path {}", procs.display())))?;
        // SAFETY: the closure only calls `join_cgroup`, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || join_cgroup(&path));
        }
    }
    let child = command.spawn().map_err(|e| {
        let what = if cgroup_procs.is_some() {
            "spawning ip netns exec in the container's cgroup"
        } else {
            "spawning ip netns exec"
        };
        Error::io(what, e)
    })?;
    let pid = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| Error::Invalid("spawned process has no pid".into()))?;
    Ok(Started { child, pid })
}

/// Sends a signal to a container's whole process group.
pub fn signal_group(pid: i32, signal: i32) {
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names the process group.
    let rc = unsafe { libc::kill(-pid, signal) };
    if rc != 0 {
        tracing::debug!(pid, signal, error = %std::io::Error::last_os_error(), "signalling process group");
    }
}

/// Whether the start marker says the script reached the container's command.
pub fn reached_command(marker: &Path) -> bool {
    std::fs::read(marker).map(|d| d == STARTED).unwrap_or(false)
}

/// The targets of mounts whose source is a file (file bind mounts).
pub fn file_targets(mounts: &[Mount]) -> BTreeSet<String> {
    mounts
        .iter()
        .filter(|m| {
            std::fs::metadata(&m.source)
                .map(|md| md.is_file())
                .unwrap_or(false)
        })
        .map(|m| m.target.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn identity_container_over_pod() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {
            "securityContext": {"runAsUser": 1000, "runAsGroup": 2000, "fsGroup": 3000, "supplementalGroups": [3000, 4000]},
            "containers": [{"name": "c", "securityContext": {"runAsUser": 65532}}]}}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            identity(&p, c).unwrap(),
            Identity {
                uid: 65532,
                gid: 2000,
                groups: vec![3000, 4000]
            }
        );
        let root = pod(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}));
        let c = &root.spec.as_ref().unwrap().containers[0];
        assert_eq!(identity(&root, c).unwrap().uid, 0);
    }

    #[test]
    fn run_as_non_root_needs_a_user() {
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {
            "securityContext": {"runAsNonRoot": true},
            "containers": [{"name": "c"}]}}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        let e = identity(&p, c).unwrap_err();
        assert_eq!(e.reason.as_str(), "CreateContainerConfigError");
        assert!(e.message.contains("runAsNonRoot"));
        let p = pod(json!({"metadata": {"name": "p"}, "spec": {
            "containers": [{"name": "c", "securityContext": {"runAsNonRoot": true, "runAsUser": 0}}]}}));
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert!(identity(&p, c).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
    }

    fn spec() -> LaunchSpec {
        LaunchSpec {
            netns: "lfp-1".into(),
            hostname: "job-0".into(),
            mounts: vec![
                Mount {
                    source: "/build/bin".into(),
                    target: "/usr/local/bin".into(),
                    read_only: true,
                    subpath: false,
                },
                Mount {
                    source: "/s/main.termination-log".into(),
                    target: "/dev/termination-log".into(),
                    read_only: false,
                    subpath: false,
                },
            ],
            stage_dir: "/run/lf-node/lfp-1/main".into(),
            file_targets: BTreeSet::from(["/dev/termination-log".to_string()]),
            read_only_root: true,
            working_dir: "/".into(),
            identity: Identity {
                uid: 65532,
                gid: 65532,
                groups: vec![65532],
            },
            env: vec![("A".into(), "x y".into()), ("Q".into(), "it's".into())],
            argv: vec!["sh".into(), "-c".into(), "echo $A; exit 3".into()],
        }
    }

    #[test]
    fn script_mounts_then_execs() {
        let s = script(&spec());
        let expected = "set -e
mkdir -p '/run/lf-node/lfp-1/main'
mkdir -p '/run/lf-node/lfp-1/main/0'
mount --bind '/build/bin' '/run/lf-node/lfp-1/main/0'
[ -e '/run/lf-node/lfp-1/main/1' ] || : > '/run/lf-node/lfp-1/main/1'
mount --bind '/s/main.termination-log' '/run/lf-node/lfp-1/main/1'
[ -e '/dev/termination-log' ] || { mkdir -p '/dev'; : > '/dev/termination-log'; }
mount --bind '/run/lf-node/lfp-1/main/1' '/dev/termination-log'
[ -d '/usr/local/bin' ] || mkdir -p '/usr/local/bin'
mount --bind '/run/lf-node/lfp-1/main/0' '/usr/local/bin'
mount -o remount,bind,ro '/usr/local/bin'
[ -d '/' ] || mkdir -p '/'
mount -o remount,bind,ro /
printf %s 'job-0' > /proc/sys/kernel/hostname
cd '/'
printf started >&0
exec </dev/null
exec setpriv --reuid=65532 --regid=65532 --groups=65532 -- env -i -- 'A=x y' 'Q=it'\\''s' 'sh' '-c' 'echo $A; exit 3'
";
        assert_eq!(s, expected);
    }

    #[test]
    fn the_script_runs_under_sh() {
        // Without the privileged parts: the env and argv reach the command intact.
        let mut sp = spec();
        sp.mounts.clear();
        sp.read_only_root = false;
        let full = script(&sp);
        let tail = full.lines().last().unwrap().replace(
            "exec setpriv --reuid=65532 --regid=65532 --groups=65532 -- ",
            "exec ",
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(tail)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x y\n");
    }

    #[test]
    fn the_child_joins_its_cgroup_before_exec() {
        // A plain file stands in for `cgroup.procs`: the child writes "0" (itself) there.
        let dir = tempfile::tempdir().unwrap();
        let procs = dir.path().join("cgroup.procs");
        std::fs::write(&procs, b"").unwrap();
        let path = CString::new(procs.as_os_str().as_bytes()).unwrap();
        let mut cmd = std::process::Command::new("true");
        // SAFETY: join_cgroup is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || join_cgroup(&path));
        }
        assert!(cmd.status().unwrap().success());
        assert_eq!(std::fs::read(&procs).unwrap(), b"0");
        // A cgroup that cannot be joined fails the spawn.
        let missing =
            CString::new(dir.path().join("none/cgroup.procs").as_os_str().as_bytes()).unwrap();
        let mut cmd = std::process::Command::new("true");
        // SAFETY: as above.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || join_cgroup(&missing));
        }
        assert!(cmd.status().is_err());
    }

    #[test]
    fn executables_are_found_through_mounts_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("lf-trainer");
        std::fs::write(&tool, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mounts = vec![Mount {
            source: bin.clone(),
            target: "/opt/lf/bin".into(),
            read_only: true,
            subpath: false,
        }];
        assert!(find_executable("lf-trainer", Some("/nope:/opt/lf/bin"), "/", &mounts).is_ok());
        assert!(find_executable("/opt/lf/bin/lf-trainer", None, "/", &mounts).is_ok());
        assert!(find_executable("sh", None, "/", &mounts).is_ok());
        let e = find_executable("lf-trainer", Some("/usr/bin"), "/", &mounts).unwrap_err();
        assert_eq!(
            e,
            "exec: \"lf-trainer\": executable file not found in $PATH"
        );
        assert!(find_executable("./x", None, "/tmp", &mounts)
            .unwrap_err()
            .contains("stat /tmp/./x"));
    }
}
