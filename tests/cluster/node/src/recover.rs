//! Cleanup of what a crashed run of the node left on the host (at start), or what pods that did not
//! stop in time left (at exit): for every pod directory with a runtime record, the processes in its
//! network namespace, the namespace and veth, its tmpfs volumes and volume directories. Pods still
//! bound to the node are then adopted by their workers.

use std::path::Path;

use crate::network;
use crate::poddir::{PodDir, RuntimeRecord};
use crate::volumes;

pub async fn cleanup_leftovers(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir.join("pods")) else {
        return;
    };
    for e in entries.flatten() {
        let dir = PodDir { root: e.path() };
        let Some(record) = RuntimeRecord::load(&dir.runtime_record()) else {
            continue;
        };
        tracing::info!(dir = %dir.root.display(), "removing leftovers of a previous run");
        if let (Some(netns), Some(veth)) = (&record.netns, &record.veth) {
            network::destroy_sandbox(netns, veth).await;
        }
        volumes::teardown(&dir, &record.tmpfs).await;
        let _ = std::fs::remove_file(dir.runtime_record());
    }
}
