//! Pod volumes on the host and the bind mounts a container gets.
//!
//! Volume contents live under the pod's directory (`volumes/<kind>/<name>`): emptyDir (a tmpfs with
//! `size=sizeLimit` for medium Memory, mounted on the host like the kubelet does so that all
//! containers of the pod share it), files of configMap / secret / downwardAPI / projected volumes,
//! with service-account tokens from the TokenRequest API. PVCs resolve to their bound PV's
//! `hostPath` / `local` directory; PV contents are never removed. The mounts themselves are made by
//! the launch script, inside the container's own mount namespace.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod, Volume};
use kube::Client;

use crate::config::ImageMount;
use crate::env::{field_ref, resource_ref, PodFacts};
use crate::error::{ContainerError, Error, Result};
use crate::network::run;
use crate::objects;
use crate::poddir::PodDir;
use crate::quantity;
use crate::token::{TokenSource, DEFAULT_EXPIRATION_SECONDS};

/// The kubelet's default file mode for configMap, secret, downwardAPI and projected volumes.
pub const DEFAULT_MODE: u32 = 0o644;

/// A volume ready on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVolume {
    pub path: PathBuf,
    /// Always mounted read-only (configMap, secret, downwardAPI, projected; a read-only PVC).
    pub read_only: bool,
}

/// A pod's volumes, and what must be undone or refreshed.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    pub volumes: BTreeMap<String, HostVolume>,
    /// tmpfs mounted on the host (emptyDir medium Memory), unmounted at pod cleanup.
    pub tmpfs: Vec<PathBuf>,
    /// Token files to refresh, with the delay until their refresh.
    pub tokens: Vec<(TokenSource, std::time::Duration)>,
}

/// A file of a configMap/secret/downwardAPI/projected volume, relative to the volume's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    pub path: PathBuf,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// A bind mount of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
    /// The source is a subPath of a volume: created when missing, as the kubelet does.
    pub subpath: bool,
}

/// A relative path without `..` (volume item paths, subPath).
pub fn safe_relative(p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    if p.is_empty() || path.is_absolute() {
        return Err(format!("path {p:?} must be relative and non-empty"));
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!("path {p:?} must not contain '..'"));
    }
    Ok(path.to_path_buf())
}

fn mode(m: Option<i32>, default: u32) -> u32 {
    m.and_then(|m| u32::try_from(m).ok()).unwrap_or(default) & 0o7777
}

/// The files of a configMap or secret volume (or projection): every key, or the listed items.
pub fn key_files(
    what: &str,
    data: Option<&BTreeMap<String, Vec<u8>>>,
    items: Option<&[KeyToPath]>,
    default_mode: u32,
    optional: bool,
) -> Result<Vec<VolumeFile>, String> {
    let Some(data) = data else {
        return if optional {
            Ok(vec![])
        } else {
            Err(format!("{what} not found"))
        };
    };
    match items {
        None | Some([]) => data
            .iter()
            .map(|(k, v)| {
                Ok(VolumeFile {
                    path: safe_relative(k)?,
                    data: v.clone(),
                    mode: default_mode,
                })
            })
            .collect(),
        Some(items) => {
            let mut out = vec![];
            for item in items {
                match data.get(&item.key) {
                    Some(v) => out.push(VolumeFile {
                        path: safe_relative(&item.path)?,
                        data: v.clone(),
                        mode: mode(item.mode, default_mode),
                    }),
                    None if optional => {}
                    None => {
                        return Err(format!(
                            "{what}: references non-existent key {:?}",
                            item.key
                        ))
                    }
                }
            }
            Ok(out)
        }
    }
}

/// The files of a downwardAPI volume (or projection).
pub fn downward_files(
    facts: &PodFacts<'_>,
    items: &[DownwardAPIVolumeFile],
    default_mode: u32,
) -> Result<Vec<VolumeFile>, String> {
    let containers = facts
        .pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    items
        .iter()
        .map(|item| {
            let value = if let Some(f) = &item.field_ref {
                field_ref(facts, &f.field_path)?
            } else if let Some(r) = &item.resource_field_ref {
                let name = r.container_name.as_deref().unwrap_or_default();
                let c = containers
                    .iter()
                    .find(|c| c.name == name)
                    .ok_or_else(|| format!("resourceFieldRef: no container {name:?}"))?;
                resource_ref(
                    c,
                    facts.allocatable,
                    &r.resource,
                    r.divisor.as_ref().map(|d| d.0.as_str()),
                )?
            } else {
                return Err(format!("downwardAPI item {:?} has no source", item.path));
            };
            Ok(VolumeFile {
                path: safe_relative(&item.path)?,
                data: value.into_bytes(),
                mode: mode(item.mode, default_mode),
            })
        })
        .collect()
}

/// `base/sub` for a volume mount's subPath, refusing to leave the volume.
pub fn subpath(base: &Path, sub: &str) -> Result<PathBuf, String> {
    if sub.is_empty() {
        return Ok(base.to_path_buf());
    }
    Ok(base.join(safe_relative(sub)?))
}

fn depth(target: &str) -> usize {
    target.split('/').filter(|s| !s.is_empty()).count()
}

fn normal_target(t: &str) -> String {
    let t = t.trim_end_matches('/');
    if t.is_empty() {
        "/".into()
    } else {
        t.into()
    }
}

/// A container's bind mounts in order: image contents, its volume mounts (parents before
/// children), then its termination-message file.
pub fn plan_mounts(
    container: &Container,
    volumes: &BTreeMap<String, HostVolume>,
    lookup: &dyn Fn(&str) -> Option<String>,
    image_mounts: &[ImageMount],
    termination: Option<(PathBuf, String)>,
) -> Result<Vec<Mount>, ContainerError> {
    let mut image: Vec<Mount> = image_mounts
        .iter()
        .map(|m| Mount {
            source: m.source.clone(),
            target: normal_target(&m.target),
            read_only: true,
            subpath: false,
        })
        .collect();
    image.sort_by_key(|m| depth(&m.target));
    let mut mounts = vec![];
    for vm in container.volume_mounts.iter().flatten() {
        let volume = volumes.get(&vm.name).ok_or_else(|| {
            ContainerError::config(format!(
                "volume {:?} of container {:?} is not prepared",
                vm.name, container.name
            ))
        })?;
        let sub = match (&vm.sub_path, &vm.sub_path_expr) {
            (Some(s), _) if !s.is_empty() => s.clone(),
            (_, Some(e)) if !e.is_empty() => crate::env::expand(e, lookup),
            _ => String::new(),
        };
        let source = subpath(&volume.path, &sub)
            .map_err(|e| ContainerError::config(format!("volume mount {:?}: {e}", vm.name)))?;
        mounts.push(Mount {
            source,
            target: normal_target(&vm.mount_path),
            read_only: volume.read_only || vm.read_only.unwrap_or(false),
            subpath: !sub.is_empty(),
        });
    }
    mounts.sort_by_key(|m| depth(&m.target));
    image.extend(mounts);
    if let Some((source, target)) = termination {
        image.push(Mount {
            source,
            target: normal_target(&target),
            read_only: false,
            subpath: false,
        });
    }
    Ok(image)
}

/// The host path behind a path inside the container: through the deepest mount covering it.
pub fn host_path(pod_path: &str, mounts: &[Mount]) -> PathBuf {
    let p = Path::new(pod_path);
    mounts
        .iter()
        .filter_map(|m| {
            p.strip_prefix(&m.target)
                .ok()
                .map(|rest| (depth(&m.target), m.source.join(rest)))
        })
        .max_by_key(|(d, _)| *d)
        .map(|(_, path)| path)
        .unwrap_or_else(|| p.to_path_buf())
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |e| Error::io(context, e)
}

/// Replaces a directory's content with `files`.
pub fn write_files(dir: &Path, files: &[VolumeFile]) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(format!("clearing {}", dir.display())))?;
    }
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io(format!("chmod {}", dir.display())))?;
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        std::fs::write(&path, &f.data).map_err(io(format!("writing {}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
            .map_err(io(format!("chmod {}", path.display())))?;
    }
    Ok(())
}

/// Whether `path` is a mount point in the node's mount namespace.
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == want)
}

fn meta(pod: &Pod) -> (String, String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
        pod.metadata.uid.clone().unwrap_or_default(),
    )
}

/// Prepares every volume of the pod on the host. Errors leave the pod waiting (the kubelet's
/// FailedMount), and `prepare` is retried.
pub async fn prepare(client: &Client, facts: &PodFacts<'_>, dir: &PodDir) -> Result<Prepared> {
    let pod = facts.pod;
    let mut prepared = Prepared::default();
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        if let Err(e) = prepare_one(client, facts, dir, v, &mut prepared).await {
            // tmpfs mounted for earlier volumes stay recorded in `prepared`; undo them.
            teardown(dir, &prepared.tmpfs).await;
            return Err(Error::Invalid(format!(
                "MountVolume.SetUp failed for volume {:?}: {e}",
                v.name
            )));
        }
    }
    Ok(prepared)
}

async fn prepare_one(
    client: &Client,
    facts: &PodFacts<'_>,
    dir: &PodDir,
    v: &Volume,
    out: &mut Prepared,
) -> Result<()> {
    let (ns, pod_name, uid) = meta(facts.pod);
    let ro = |path: PathBuf| HostVolume {
        path,
        read_only: true,
    };
    if let Some(e) = &v.empty_dir {
        let path = dir.volume("empty-dir", &v.name);
        std::fs::create_dir_all(&path).map_err(io(format!("creating {}", path.display())))?;
        if e.medium.as_deref() == Some("Memory") {
            if !is_mountpoint(&path) {
                let mut opts = String::from("mode=1777");
                if let Some(limit) = &e.size_limit {
                    let bytes = quantity::bytes(&limit.0)
                        .ok_or_else(|| Error::Invalid(format!("bad sizeLimit {:?}", limit.0)))?;
                    opts.push_str(&format!(",size={bytes}"));
                }
                let target = path.to_string_lossy().into_owned();
                run("mount", &["-t", "tmpfs", "-o", &opts, "tmpfs", &target]).await?;
            }
            out.tmpfs.push(path.clone());
        } else {
            let m = mode(e.mode, 0o777);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(m))
                .map_err(io(format!("chmod {}", path.display())))?;
        }
        out.volumes.insert(
            v.name.clone(),
            HostVolume {
                path,
                read_only: false,
            },
        );
    } else if let Some(h) = &v.host_path {
        let path = PathBuf::from(&h.path);
        match h.type_.as_deref().unwrap_or_default() {
            "DirectoryOrCreate" => std::fs::create_dir_all(&path)
                .map_err(io(format!("creating {}", path.display())))?,
            "FileOrCreate" if !path.exists() => {
                std::fs::write(&path, b"").map_err(io(format!("creating {}", path.display())))?
            }
            "" | "FileOrCreate" => {}
            _ if !path.exists() => {
                return Err(Error::Invalid(format!(
                    "hostPath {:?} does not exist",
                    h.path
                )))
            }
            _ => {}
        }
        out.volumes.insert(
            v.name.clone(),
            HostVolume {
                path,
                read_only: false,
            },
        );
    } else if let Some(c) = &v.persistent_volume_claim {
        let path = objects::claim_path(client, &ns, &c.claim_name).await?;
        out.volumes.insert(
            v.name.clone(),
            HostVolume {
                path: PathBuf::from(path),
                read_only: c.read_only.unwrap_or(false),
            },
        );
    } else if let Some(c) = &v.config_map {
        let data = objects::config_map(client, &ns, &c.name).await?;
        let files = key_files(
            &format!("configmap {:?}", c.name),
            data.as_ref(),
            c.items.as_deref(),
            mode(c.default_mode, DEFAULT_MODE),
            c.optional.unwrap_or(false),
        )
        .map_err(Error::Invalid)?;
        let path = dir.volume("configmap", &v.name);
        write_files(&path, &files)?;
        out.volumes.insert(v.name.clone(), ro(path));
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let data = objects::secret(client, &ns, &name).await?;
        let files = key_files(
            &format!("secret {name:?}"),
            data.as_ref(),
            s.items.as_deref(),
            mode(s.default_mode, DEFAULT_MODE),
            s.optional.unwrap_or(false),
        )
        .map_err(Error::Invalid)?;
        let path = dir.volume("secret", &v.name);
        write_files(&path, &files)?;
        out.volumes.insert(v.name.clone(), ro(path));
    } else if let Some(d) = &v.downward_api {
        let files = downward_files(
            facts,
            d.items.as_deref().unwrap_or_default(),
            mode(d.default_mode, DEFAULT_MODE),
        )
        .map_err(Error::Invalid)?;
        let path = dir.volume("downward-api", &v.name);
        write_files(&path, &files)?;
        out.volumes.insert(v.name.clone(), ro(path));
    } else if let Some(p) = &v.projected {
        let path = dir.volume("projected", &v.name);
        let default_mode = mode(p.default_mode, DEFAULT_MODE);
        let mut files = vec![];
        let mut tokens = vec![];
        for src in p.sources.iter().flatten() {
            if let Some(t) = &src.service_account_token {
                let sa = facts
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "default".into());
                let rel = safe_relative(&t.path).map_err(Error::Invalid)?;
                let source = TokenSource {
                    namespace: ns.clone(),
                    pod_name: pod_name.clone(),
                    pod_uid: uid.clone(),
                    service_account: sa,
                    audience: t.audience.clone(),
                    expiration_seconds: t.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECONDS),
                    file: path.join(&rel),
                    mode: default_mode,
                };
                let (token, refresh) = crate::token::request(client, &source).await?;
                files.push(VolumeFile {
                    path: rel,
                    data: token.into_bytes(),
                    mode: default_mode,
                });
                tokens.push((source, refresh));
            } else if let Some(c) = &src.config_map {
                let data = objects::config_map(client, &ns, &c.name).await?;
                files.extend(
                    key_files(
                        &format!("configmap {:?}", c.name),
                        data.as_ref(),
                        c.items.as_deref(),
                        default_mode,
                        c.optional.unwrap_or(false),
                    )
                    .map_err(Error::Invalid)?,
                );
            } else if let Some(s) = &src.secret {
                let data = objects::secret(client, &ns, &s.name).await?;
                files.extend(
                    key_files(
                        &format!("secret {:?}", s.name),
                        data.as_ref(),
                        s.items.as_deref(),
                        default_mode,
                        s.optional.unwrap_or(false),
                    )
                    .map_err(Error::Invalid)?,
                );
            } else if let Some(d) = &src.downward_api {
                files.extend(
                    downward_files(facts, d.items.as_deref().unwrap_or_default(), default_mode)
                        .map_err(Error::Invalid)?,
                );
            } else {
                return Err(Error::Invalid(
                    "unsupported projected source (clusterTrustBundle and podCertificate are not implemented)"
                        .into(),
                ));
            }
        }
        write_files(&path, &files)?;
        out.tokens.extend(tokens);
        out.volumes.insert(v.name.clone(), ro(path));
    } else {
        return Err(Error::Invalid(
            "unsupported volume type (lf-node supports emptyDir, hostPath, persistentVolumeClaim of hostPath/local PVs, configMap, secret, downwardAPI and projected)".into(),
        ));
    }
    Ok(())
}

/// Unmounts the pod's tmpfs volumes and removes its volume directories (never PV contents: those
/// are not under the pod directory, and bind mounts exist only in the containers' namespaces).
pub async fn teardown(dir: &PodDir, tmpfs: &[PathBuf]) {
    for t in tmpfs {
        if is_mountpoint(t) {
            let target = t.to_string_lossy().into_owned();
            if let Err(e) = run("umount", &[&target]).await {
                tracing::warn!(path = %t.display(), error = %e, "unmounting tmpfs; detaching lazily");
                if let Err(e) = run("umount", &["-l", &target]).await {
                    tracing::warn!(path = %t.display(), error = %e, "lazy unmount");
                }
            }
        }
    }
    let volumes = dir.volumes();
    if volumes.exists() {
        if tmpfs.iter().any(|t| is_mountpoint(t)) {
            tracing::warn!(dir = %volumes.display(), "a tmpfs is still mounted; keeping the volume directory");
            return;
        }
        if let Err(e) = tokio::fs::remove_dir_all(&volumes).await {
            tracing::warn!(dir = %volumes.display(), error = %e, "removing volume directories");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn relative_paths_only() {
        assert!(safe_relative("a/b").is_ok());
        assert!(safe_relative("../x").is_err());
        assert!(safe_relative("a/../../x").is_err());
        assert!(safe_relative("/etc").is_err());
        assert!(safe_relative("").is_err());
        assert_eq!(subpath(Path::new("/pv"), "").unwrap(), PathBuf::from("/pv"));
        assert_eq!(
            subpath(Path::new("/pv"), "runs/1").unwrap(),
            PathBuf::from("/pv/runs/1")
        );
        assert!(subpath(Path::new("/pv"), "../etc").is_err());
    }

    #[test]
    fn key_files_all_items_and_optional() {
        let d = data(&[("train.yaml", "a: 1"), ("ca.crt", "PEM")]);
        let all = key_files("cm", Some(&d), None, 0o644, false).unwrap();
        assert_eq!(all.len(), 2);
        let items = [KeyToPath {
            key: "ca.crt".into(),
            path: "certs/ca.crt".into(),
            mode: Some(0o600),
            user: None,
        }];
        let some = key_files("cm", Some(&d), Some(&items), 0o644, false).unwrap();
        assert_eq!(
            some,
            vec![VolumeFile {
                path: PathBuf::from("certs/ca.crt"),
                data: b"PEM".to_vec(),
                mode: 0o600
            }]
        );
        let missing = [KeyToPath {
            key: "nope".into(),
            path: "x".into(),
            mode: None,
            user: None,
        }];
        assert!(key_files("cm", Some(&d), Some(&missing), 0o644, false).is_err());
        assert!(key_files("cm", Some(&d), Some(&missing), 0o644, true)
            .unwrap()
            .is_empty());
        assert_eq!(
            key_files("configmap \"x\"", None, None, 0o644, false).unwrap_err(),
            "configmap \"x\" not found"
        );
        assert!(key_files("cm", None, None, 0o644, true).unwrap().is_empty());
    }

    #[test]
    fn downward_api_files() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "team", "labels": {"a": "1"}},
            "spec": {"containers": [{"name": "main", "resources": {"limits": {"cpu": "2"}}}]}
        }))
        .unwrap();
        let facts = PodFacts {
            pod: &pod,
            pod_ip: None,
            host_ip: "10.244.0.1",
            allocatable: Default::default(),
        };
        let items: Vec<DownwardAPIVolumeFile> = serde_json::from_value(json!([
            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}},
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "cpu", "resourceFieldRef": {"containerName": "main", "resource": "limits.cpu"}, "mode": 256}
        ]))
        .unwrap();
        let files = downward_files(&facts, &items, 0o644).unwrap();
        assert_eq!(files[0].data, b"team");
        assert_eq!(files[1].data, b"a=\"1\"");
        assert_eq!(
            (files[2].data.as_slice(), files[2].mode),
            (&b"2"[..], 0o400)
        );
    }

    #[test]
    fn mounts_in_order_with_subpaths_and_read_only() {
        let c: Container = serde_json::from_value(json!({"name": "main", "volumeMounts": [
            {"name": "out", "mountPath": "/output/runs", "subPathExpr": "$(JOB)"},
            {"name": "out", "mountPath": "/output/"},
            {"name": "cfg", "mountPath": "/etc/lf-trainer"},
            {"name": "models", "mountPath": "/models", "readOnly": true, "subPath": "llama"},
        ]}))
        .unwrap();
        let volumes = BTreeMap::from([
            (
                "out".to_string(),
                HostVolume {
                    path: PathBuf::from("/srv/pv-out"),
                    read_only: false,
                },
            ),
            (
                "cfg".to_string(),
                HostVolume {
                    path: PathBuf::from("/s/cfg"),
                    read_only: true,
                },
            ),
            (
                "models".to_string(),
                HostVolume {
                    path: PathBuf::from("/srv/models"),
                    read_only: false,
                },
            ),
        ]);
        let lookup = |n: &str| (n == "JOB").then(|| "ft1".to_string());
        let image = [ImageMount {
            source: PathBuf::from("/build/bin"),
            target: "/usr/local/bin".into(),
        }];
        let mounts = plan_mounts(
            &c,
            &volumes,
            &lookup,
            &image,
            Some((
                PathBuf::from("/s/main.termination-log"),
                "/dev/termination-log".into(),
            )),
        )
        .unwrap();
        let got: Vec<(&str, &str, bool)> = mounts
            .iter()
            .map(|m| (m.source.to_str().unwrap(), m.target.as_str(), m.read_only))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/build/bin", "/usr/local/bin", true),
                ("/srv/pv-out", "/output", false),
                ("/srv/models/llama", "/models", true),
                ("/srv/pv-out/ft1", "/output/runs", false),
                ("/s/cfg", "/etc/lf-trainer", true),
                ("/s/main.termination-log", "/dev/termination-log", false),
            ]
        );
        assert_eq!(
            host_path("/usr/local/bin/lf-trainer", &mounts),
            PathBuf::from("/build/bin/lf-trainer")
        );
        assert_eq!(
            host_path("/output/runs/x", &mounts),
            PathBuf::from("/srv/pv-out/ft1/x")
        );
        assert_eq!(host_path("/bin/sh", &mounts), PathBuf::from("/bin/sh"));
        assert_eq!(
            host_path("/usr/local/binx", &mounts),
            PathBuf::from("/usr/local/binx")
        );

        let bad: Container = serde_json::from_value(json!({"name": "main", "volumeMounts": [
            {"name": "out", "mountPath": "/o", "subPath": "../../etc"}]}))
        .unwrap();
        assert!(plan_mounts(&bad, &volumes, &lookup, &[], None).is_err());
        let unknown: Container = serde_json::from_value(json!({"name": "main", "volumeMounts": [
            {"name": "nope", "mountPath": "/o"}]}))
        .unwrap();
        assert!(plan_mounts(&unknown, &volumes, &lookup, &[], None).is_err());
    }

    #[test]
    fn write_files_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("v");
        write_files(
            &d,
            &[VolumeFile {
                path: "a".into(),
                data: b"1".to_vec(),
                mode: 0o600,
            }],
        )
        .unwrap();
        write_files(
            &d,
            &[VolumeFile {
                path: "b/c".into(),
                data: b"2".to_vec(),
                mode: 0o644,
            }],
        )
        .unwrap();
        assert!(!d.join("a").exists());
        assert_eq!(std::fs::read(d.join("b/c")).unwrap(), b"2");
        let m = std::fs::metadata(d.join("b/c"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, 0o644);
    }
}
