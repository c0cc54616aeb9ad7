//! Pod networking: one network namespace per pod (`lfp-<8 hex of the uid>`), a veth pair whose host
//! side (`lfv<8 hex>`) is a port of the node's bridge, an address from the node's pod CIDR with the
//! bridge's prefix length, loopback up, and no default route (nothing outside this machine is
//! reachable). Done with iproute2's `ip`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use tokio::process::Command;

use crate::config::Cidr;
use crate::error::{Error, Result};

/// The prefix of every network namespace the node creates (a cleanup script removes leftovers).
pub const NETNS_PREFIX: &str = "lfp-";

/// The Linux bridge pods attach to, with the host's address on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
}

/// The 8 hex digits of a pod uid that name its namespace and veth.
pub fn short_uid(uid: &str) -> String {
    let hex: String = uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    format!("{hex:0<8}").chars().take(8).collect()
}

pub fn netns_name(uid: &str) -> String {
    format!("{NETNS_PREFIX}{}", short_uid(uid))
}

pub fn veth_name(uid: &str) -> String {
    format!("lfv{}", short_uid(uid))
}

/// `/etc/netns/<netns>`: files there replace `/etc/<file>` inside `ip netns exec`.
pub fn etc_dir(netns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(netns)
}

/// The first IPv4 address and prefix length in `ip -j addr show` output.
pub fn parse_ip_addr_json(json: &str) -> Option<(Ipv4Addr, u8)> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.as_array()?
        .iter()
        .flat_map(|link| link["addr_info"].as_array().into_iter().flatten())
        .find(|a| a["family"] == "inet")
        .and_then(|a| {
            let ip = a["local"].as_str()?.parse().ok()?;
            let prefix = u8::try_from(a["prefixlen"].as_u64()?).ok()?;
            Some((ip, prefix))
        })
}

/// Runs a host command, returning its stdout or a typed error with its stderr.
pub async fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::io(format!("running {program}"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Reads the bridge's IPv4 address (the pods' gateway and the node's InternalIP).
pub async fn bridge(name: &str) -> Result<Bridge> {
    let json = run("ip", &["-j", "-4", "addr", "show", "dev", name]).await?;
    let (address, prefix) = parse_ip_addr_json(&json)
        .ok_or_else(|| Error::Invalid(format!("bridge {name} has no IPv4 address")))?;
    Ok(Bridge {
        name: name.to_string(),
        address,
        prefix,
    })
}

/// Pod addresses from the node's pod CIDR: `.2` upward (`.0` and `.1` are never handed out, nor
/// the broadcast address), released when the pod's sandbox goes.
#[derive(Debug)]
pub struct IpPool {
    cidr: Cidr,
    used: BTreeSet<u32>,
}

impl IpPool {
    pub fn new(cidr: Cidr) -> Self {
        IpPool {
            cidr,
            used: BTreeSet::new(),
        }
    }

    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let base = u32::from(self.cidr.network);
        let last = u32::try_from(self.cidr.size()).ok()?.checked_sub(2)?;
        let offset = (2..=last).find(|o| !self.used.contains(o))?;
        self.used.insert(offset);
        Some(Ipv4Addr::from(base + offset))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        let offset = u32::from(ip).wrapping_sub(u32::from(self.cidr.network));
        self.used.remove(&offset);
    }
}

/// A pod's network: its namespace, host-side veth and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub netns: String,
    pub veth: String,
    pub ip: Ipv4Addr,
}

/// Creates the namespace and veth pair and configures them; on failure removes what it made.
pub async fn create_sandbox(bridge: &Bridge, uid: &str, ip: Ipv4Addr) -> Result<Sandbox> {
    let sandbox = Sandbox {
        netns: netns_name(uid),
        veth: veth_name(uid),
        ip,
    };
    // Leftovers of a crashed run with the same name would make `ip netns add` fail.
    destroy_sandbox(&sandbox.netns, &sandbox.veth).await;
    if let Err(e) = configure(bridge, &sandbox).await {
        destroy_sandbox(&sandbox.netns, &sandbox.veth).await;
        return Err(e);
    }
    Ok(sandbox)
}

async fn configure(bridge: &Bridge, s: &Sandbox) -> Result<()> {
    let cidr = format!("{}/{}", s.ip, bridge.prefix);
    run("ip", &["netns", "add", &s.netns]).await?;
    run(
        "ip",
        &[
            "link", "add", &s.veth, "type", "veth", "peer", "name", "eth0", "netns", &s.netns,
        ],
    )
    .await?;
    run("ip", &["link", "set", &s.veth, "master", &bridge.name]).await?;
    run("ip", &["link", "set", &s.veth, "up"]).await?;
    // The address's prefix gives the one route: to the bridge's subnet. No default route.
    run("ip", &["-n", &s.netns, "addr", "add", &cidr, "dev", "eth0"]).await?;
    run("ip", &["-n", &s.netns, "link", "set", "eth0", "up"]).await?;
    run("ip", &["-n", &s.netns, "link", "set", "lo", "up"]).await?;
    Ok(())
}

/// Kills every process left in the namespace, then removes the veth, the namespace and its
/// `/etc/netns` directory. Errors are logged: it is also the cleanup of partial set-ups.
pub async fn destroy_sandbox(netns: &str, veth: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", netns]).await {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    if run("ip", &["link", "show", veth]).await.is_ok() {
        if let Err(e) = run("ip", &["link", "del", veth]).await {
            tracing::warn!(veth, error = %e, "removing veth");
        }
    }
    let exists = tokio::fs::metadata(format!("/run/netns/{netns}"))
        .await
        .is_ok();
    if exists {
        if let Err(e) = run("ip", &["netns", "del", netns]).await {
            tracing::warn!(netns, error = %e, "removing network namespace");
        }
    }
    let etc = etc_dir(netns);
    if tokio::fs::metadata(&etc).await.is_ok() {
        if let Err(e) = tokio::fs::remove_dir_all(&etc).await {
            tracing::warn!(dir = %etc.display(), error = %e, "removing /etc/netns dir");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_cidr;

    #[test]
    fn names_from_the_uid() {
        let uid = "3F2A9C1E-77b0-4d1e-9c7a-0123456789ab";
        assert_eq!(netns_name(uid), "lfp-3f2a9c1e");
        assert_eq!(veth_name(uid), "lfv3f2a9c1e");
        assert!(veth_name(uid).len() <= 15);
        assert_eq!(short_uid("ab"), "ab000000");
    }

    #[test]
    fn pool_hands_out_from_dot_two_and_reuses() {
        let mut pool = IpPool::new(parse_cidr("10.244.1.0/24").unwrap());
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(10, 244, 1, 2)));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(10, 244, 1, 3)));
        pool.release(Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(pool.allocate(), Some(Ipv4Addr::new(10, 244, 1, 2)));
        let mut small = IpPool::new(parse_cidr("10.0.0.0/30").unwrap());
        assert_eq!(small.allocate(), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(small.allocate(), None);
    }

    #[test]
    fn bridge_address_from_ip_json() {
        let json = r#"[{"ifindex":5,"ifname":"lfbr0","addr_info":[
            {"family":"inet6","local":"fe80::1","prefixlen":64},
            {"family":"inet","local":"10.244.0.1","prefixlen":16}]}]"#;
        assert_eq!(
            parse_ip_addr_json(json),
            Some((Ipv4Addr::new(10, 244, 0, 1), 16))
        );
        assert_eq!(parse_ip_addr_json("[]"), None);
        assert_eq!(parse_ip_addr_json("nonsense"), None);
    }
}
