//! The node's configuration and the parsers of its repeatable command-line values (pure).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Taint;

use crate::quantity;

/// Everything the node was told on its command line, validated.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub gpus: u32,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub pod_cidr: Cidr,
    pub bridge: String,
    pub api_host: String,
    pub api_port: u16,
    pub image_mounts: Vec<ImageMount>,
    pub image_env: Vec<(String, String)>,
    pub state_dir: PathBuf,
    pub hosts_file: Option<PathBuf>,
    pub peer_hosts_dir: Option<PathBuf>,
}

impl NodeConfig {
    /// The node's allocatable CPU in cores and memory in bytes (what unset limits default to).
    pub fn allocatable(&self) -> Allocatable {
        Allocatable {
            cpu: quantity::parse(&self.cpu).unwrap_or(0.0),
            memory: quantity::parse(&self.memory).unwrap_or(0.0),
            ephemeral_storage: 0.0,
        }
    }
}

/// Node allocatable resources in base units.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Allocatable {
    pub cpu: f64,
    pub memory: f64,
    pub ephemeral_storage: f64,
}

/// An IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// The number of addresses in the network.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }
}

/// A host directory shown read-only inside every pod ("image contents").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMount {
    pub source: PathBuf,
    pub target: String,
}

/// `k=v` (a label or an image environment variable).
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// `key=value:Effect` or `key:Effect`.
pub fn parse_taint(s: &str) -> Result<Taint, String> {
    let (kv, effect) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected key=value:Effect, got {s:?}"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "taint effect must be NoSchedule, PreferNoSchedule or NoExecute, got {effect:?}"
        ));
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(format!("taint {s:?} has no key"));
    }
    Ok(Taint {
        key: key.to_string(),
        value: value.filter(|v| !v.is_empty()),
        effect: effect.to_string(),
        time_added: None,
    })
}

/// `SRC:DST` with both absolute.
pub fn parse_image_mount(s: &str) -> Result<ImageMount, String> {
    let (src, dst) = s
        .split_once(':')
        .ok_or_else(|| format!("expected SRC:DST, got {s:?}"))?;
    if !src.starts_with('/') || !dst.starts_with('/') {
        return Err(format!("both paths of {s:?} must be absolute"));
    }
    let target = dst.trim_end_matches('/');
    Ok(ImageMount {
        source: PathBuf::from(src),
        target: if target.is_empty() { "/" } else { target }.to_string(),
    })
}

/// `10.244.1.0/24`; the address is masked to the network.
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (addr, prefix) = s
        .split_once('/')
        .ok_or_else(|| format!("expected A.B.C.D/N, got {s:?}"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|e| format!("bad address in {s:?}: {e}"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|e| format!("bad prefix length in {s:?}: {e}"))?;
    if !(8..=30).contains(&prefix) {
        return Err(format!("prefix length of {s:?} must be 8..=30"));
    }
    let mask = u32::MAX << (32 - u32::from(prefix));
    Ok(Cidr {
        network: Ipv4Addr::from(u32::from(addr) & mask),
        prefix,
    })
}

/// A resource quantity such as `16` or `64Gi`.
pub fn parse_quantity(s: &str) -> Result<String, String> {
    match quantity::parse(s) {
        Some(v) if v >= 0.0 => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not a resource quantity")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_with_and_without_value() {
        let t = parse_taint("nvidia.com/gpu=present:NoSchedule").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            ("nvidia.com/gpu", Some("present"), "NoSchedule")
        );
        let t = parse_taint("dedicated:NoExecute").unwrap();
        assert_eq!((t.key.as_str(), t.value), ("dedicated", None));
        assert!(parse_taint("a=b:Sometimes").is_err());
        assert!(parse_taint("a=b").is_err());
        assert!(parse_taint("=b:NoSchedule").is_err());
    }

    #[test]
    fn labels_and_env() {
        assert_eq!(
            parse_key_value("topology.kubernetes.io/zone=a=b").unwrap(),
            ("topology.kubernetes.io/zone".into(), "a=b".into())
        );
        assert_eq!(
            parse_key_value("EMPTY=").unwrap(),
            ("EMPTY".into(), "".into())
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=v").is_err());
    }

    #[test]
    fn image_mounts() {
        let m = parse_image_mount("/work/target/debug:/usr/local/bin/").unwrap();
        assert_eq!(m.source, PathBuf::from("/work/target/debug"));
        assert_eq!(m.target, "/usr/local/bin");
        assert!(parse_image_mount("relative:/x").is_err());
        assert!(parse_image_mount("/only").is_err());
    }

    #[test]
    fn cidrs_are_masked() {
        let c = parse_cidr("10.244.1.7/24").unwrap();
        assert_eq!(c.network, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.size(), 256);
        assert!(parse_cidr("10.244.1.0").is_err());
        assert!(parse_cidr("10.244.1.0/31").is_err());
    }

    #[test]
    fn quantities() {
        assert!(parse_quantity("64Gi").is_ok());
        assert!(parse_quantity("lots").is_err());
    }
}
