//! Name resolution without DNS: per-pod `/etc/hosts` files (bind-mounted by `ip netns exec` from
//! `/etc/netns/<netns>/hosts`) listing, besides localhost and the pod's own names, the records
//! CoreDNS would serve for pods with `hostname` + `subdomain` (a headless Service of that name):
//! `<hostname>.<subdomain>[.<ns>[.svc[.cluster.local]]]`.
//!
//! The node identity may list only its own pods, so the records come from the pods of this node:
//! enough for a one-node cluster, or for gangs that land on one node. With `--peer-hosts-dir`, the
//! lf-node processes of one machine also share their records through files in that directory
//! (`<node>.hosts`, polled every second), so pods of different nodes resolve each other. Pod files
//! are rewritten in place (same inode, so running pods see the change through their bind mount)
//! whenever a record of this node or of a peer changes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The cluster domain CoreDNS would serve.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// One pod's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub ip: String,
    pub namespace: String,
    pub hostname: String,
    pub subdomain: Option<String>,
    /// `spec.hostAliases`: (ip, names).
    pub aliases: Vec<(String, Vec<String>)>,
    /// Where this pod's hosts file lives.
    pub file: PathBuf,
}

impl HostRecord {
    /// The names other pods resolve to this pod, longest first (empty without a subdomain).
    pub fn dns_names(&self) -> Vec<String> {
        let Some(sub) = &self.subdomain else {
            return vec![];
        };
        let short = format!("{}.{sub}", self.hostname);
        vec![
            format!("{short}.{}.svc.{CLUSTER_DOMAIN}", self.namespace),
            format!("{short}.{}.svc", self.namespace),
            format!("{short}.{}", self.namespace),
            short,
        ]
    }
}

/// The pod's hostname as the kubelet sets it: `spec.hostname`, else the pod name, cut to 63.
pub fn pod_hostname(hostname: Option<&str>, pod_name: &str) -> String {
    let h = hostname.filter(|h| !h.is_empty()).unwrap_or(pod_name);
    h.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

const HEADER: &str = "# Kubernetes-managed hosts file (lf-node).
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
";

/// One pod's `/etc/hosts`: localhost, its own names, its host aliases, then every known record
/// (this node's, then `peers`: the lines other nodes published).
pub fn render_pod(own: &HostRecord, all: &[&HostRecord], peers: &str) -> String {
    let mut out = String::from(HEADER);
    let mut own_names = own.dns_names();
    own_names.push(own.hostname.clone());
    out.push_str(&format!("{}\t{}\n", own.ip, own_names.join(" ")));
    if !own.aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for (ip, names) in &own.aliases {
            out.push_str(&format!("{ip}\t{}\n", names.join(" ")));
        }
    }
    out.push_str(&records(all));
    if !peers.is_empty() {
        out.push_str("\n# Pods of other nodes (lf-node --peer-hosts-dir)\n");
        out.push_str(peers);
    }
    out
}

/// The shared file for the host: every record.
pub fn render_shared(all: &[&HostRecord]) -> String {
    format!("# lf-node: pod records of this node\n{}", records(all))
}

fn record_lines(all: &[&HostRecord]) -> Vec<String> {
    all.iter()
        .filter(|r| r.subdomain.is_some())
        .map(|r| format!("{}\t{}", r.ip, r.dns_names().join(" ")))
        .collect()
}

fn records(all: &[&HostRecord]) -> String {
    let lines = record_lines(all);
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            "\n# Pods with hostname and subdomain (headless Services)\n{}\n",
            lines.join("\n")
        )
    }
}

/// Rewrites a file in place: same inode, so a bind mount of it shows the new content.
pub fn write_in_place(path: &Path, content: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    f.write_all(content.as_bytes())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// A directory where the lf-node processes of one machine publish their pod records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerDir {
    pub dir: PathBuf,
    pub node: String,
}

impl PeerDir {
    fn own_file(&self) -> PathBuf {
        self.dir.join(format!("{}.hosts", self.node))
    }

    /// The record lines of every other node, in file-name order.
    pub fn read_peers(&self) -> String {
        let own = format!("{}.hosts", self.node);
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return String::new();
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                name.is_some_and(|n| n.ends_with(".hosts") && !n.starts_with('.') && n != own)
            })
            .collect();
        files.sort();
        files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .flat_map(|t| {
                t.lines()
                    .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                    .map(|l| format!("{l}\n"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Publishes this node's record lines (atomically: peers never read half a file).
    fn publish(&self, lines: &[String]) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let tmp = self.dir.join(format!(".{}.hosts.tmp", self.node));
        let mut text = format!("# lf-node {}\n", self.node);
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&tmp, text)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, self.own_file())
            .map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
    }
}

/// The records of the node's pods, keyed by pod uid, and the files rendered from them.
#[derive(Debug, Default)]
pub struct HostsTable {
    records: BTreeMap<String, HostRecord>,
    shared_file: Option<PathBuf>,
    peer_dir: Option<PeerDir>,
    peers: String,
}

impl HostsTable {
    pub fn new(shared_file: Option<PathBuf>, peer_dir: Option<PeerDir>) -> Self {
        let table = HostsTable {
            records: BTreeMap::new(),
            shared_file,
            peer_dir,
            peers: String::new(),
        };
        table.rewrite();
        table
    }

    /// Re-reads the other nodes' records; rewrites the pods' files when they changed.
    pub fn refresh_peers(&mut self) {
        let Some(dir) = &self.peer_dir else {
            return;
        };
        let peers = dir.read_peers();
        if peers != self.peers {
            self.peers = peers;
            self.rewrite();
        }
    }

    /// Withdraws this node's records from the peer directory (node exit).
    pub fn leave(&mut self) {
        if let Some(dir) = &self.peer_dir {
            let _ = std::fs::remove_file(dir.own_file());
        }
    }

    /// Adds or replaces a pod's record and rewrites every file.
    pub fn insert(&mut self, uid: &str, record: HostRecord) {
        self.records.insert(uid.to_string(), record);
        self.rewrite();
    }

    /// Removes a pod's record and rewrites every other file.
    pub fn remove(&mut self, uid: &str) {
        if self.records.remove(uid).is_some() {
            self.rewrite();
        }
    }

    fn rewrite(&self) {
        let mut all: Vec<&HostRecord> = self.records.values().collect();
        all.sort_by(|a, b| (&a.namespace, &a.hostname).cmp(&(&b.namespace, &b.hostname)));
        for r in &all {
            if let Err(e) = write_in_place(&r.file, &render_pod(r, &all, &self.peers)) {
                tracing::warn!(error = %e, "writing a pod's hosts file");
            }
        }
        if let Some(dir) = &self.peer_dir {
            if let Err(e) = dir.publish(&record_lines(&all)) {
                tracing::warn!(error = %e, "publishing records to the peer directory");
            }
        }
        if let Some(shared) = &self.shared_file {
            if let Err(e) = write_in_place(shared, &render_shared(&all)) {
                tracing::warn!(error = %e, "writing the shared hosts file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn rec(host: &str, ip: &str, sub: Option<&str>, file: PathBuf) -> HostRecord {
        HostRecord {
            ip: ip.into(),
            namespace: "team".into(),
            hostname: host.into(),
            subdomain: sub.map(String::from),
            aliases: vec![],
            file,
        }
    }

    #[test]
    fn names_like_coredns() {
        let r = rec("job-0-0", "10.244.1.2", Some("job"), PathBuf::new());
        assert_eq!(
            r.dns_names(),
            vec![
                "job-0-0.job.team.svc.cluster.local",
                "job-0-0.job.team.svc",
                "job-0-0.job.team",
                "job-0-0.job"
            ]
        );
        assert!(rec("p", "1.2.3.4", None, PathBuf::new())
            .dns_names()
            .is_empty());
        assert_eq!(pod_hostname(Some("h"), "p"), "h");
        assert_eq!(pod_hostname(None, "p"), "p");
        assert_eq!(pod_hostname(Some(""), &"x".repeat(70)).len(), 63);
    }

    #[test]
    fn pod_file_lists_itself_then_peers() {
        let a = rec("job-0-0", "10.244.1.2", Some("job"), PathBuf::new());
        let mut b = rec("job-0-1", "10.244.1.3", Some("job"), PathBuf::new());
        b.aliases = vec![("10.0.0.9".into(), vec!["foo".into(), "bar".into()])];
        let plain = rec("web", "10.244.1.4", None, PathBuf::new());
        let text = render_pod(
            &b,
            &[&a, &b, &plain],
            "10.244.2.2\tx.y.team.svc.cluster.local\n",
        );
        assert!(text.starts_with("# Kubernetes-managed hosts file"));
        assert!(text.contains("127.0.0.1\tlocalhost\n"));
        assert!(text.contains("10.244.1.3\tjob-0-1.job.team.svc.cluster.local job-0-1.job.team.svc job-0-1.job.team job-0-1.job job-0-1\n"));
        assert!(text.contains("10.0.0.9\tfoo bar\n"));
        assert!(text.contains("10.244.1.2\tjob-0-0.job.team.svc.cluster.local"));
        assert!(!text.contains("web"));
        assert!(text.ends_with("# Pods of other nodes (lf-node --peer-hosts-dir)\n10.244.2.2\tx.y.team.svc.cluster.local\n"));
        let own = render_pod(&plain, &[&plain], "");
        assert!(own.contains("10.244.1.4\tweb\n"));
    }

    #[test]
    fn files_are_rewritten_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let fa = dir.path().join("a/hosts");
        let fb = dir.path().join("b/hosts");
        let shared = dir.path().join("shared");
        let mut t = HostsTable::new(Some(shared.clone()), None);
        t.insert("ua", rec("job-0-0", "10.244.1.2", Some("job"), fa.clone()));
        let inode = std::fs::metadata(&fa).unwrap().ino();
        t.insert("ub", rec("job-0-1", "10.244.1.3", Some("job"), fb.clone()));
        let a_text = std::fs::read_to_string(&fa).unwrap();
        assert!(a_text.contains("job-0-1.job.team"), "{a_text}");
        assert_eq!(std::fs::metadata(&fa).unwrap().ino(), inode);
        assert!(std::fs::read_to_string(&shared)
            .unwrap()
            .contains("10.244.1.3\tjob-0-1.job"));
        t.remove("ub");
        assert!(!std::fs::read_to_string(&fa).unwrap().contains("job-0-1"));
        assert!(!std::fs::read_to_string(&shared)
            .unwrap()
            .contains("job-0-1"));
        assert_eq!(std::fs::metadata(&fa).unwrap().ino(), inode);
    }

    #[test]
    fn nodes_share_records_through_the_peer_dir() {
        let dir = tempfile::tempdir().unwrap();
        let peers = dir.path().join("peers");
        let pa = PeerDir {
            dir: peers.clone(),
            node: "lf-node-0".into(),
        };
        let pb = PeerDir {
            dir: peers.clone(),
            node: "lf-node-1".into(),
        };
        let mut a = HostsTable::new(None, Some(pa));
        let mut b = HostsTable::new(None, Some(pb));
        let fa = dir.path().join("a/hosts");
        a.insert("ua", rec("job-0-0", "10.244.1.2", Some("job"), fa.clone()));
        b.insert(
            "ub",
            rec(
                "job-0-1",
                "10.244.2.2",
                Some("job"),
                dir.path().join("b/hosts"),
            ),
        );
        a.refresh_peers();
        let text = std::fs::read_to_string(&fa).unwrap();
        assert!(
            text.contains("10.244.2.2\tjob-0-1.job.team.svc.cluster.local"),
            "{text}"
        );
        b.leave();
        a.refresh_peers();
        assert!(!std::fs::read_to_string(&fa).unwrap().contains("job-0-1"));
    }
}
