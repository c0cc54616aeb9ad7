//! The pods bound to this node: a watch with `fieldSelector spec.nodeName=<node>` (restarted with
//! backoff on errors), one worker task per pod uid, and the wait for all of them at shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::context::{shutting_down, NodeCtx};
use crate::worker::Worker;

/// How long the node waits for its pods to stop at shutdown (their grace is capped at 30 s).
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(45);

struct Entry {
    tx: watch::Sender<Option<Arc<Pod>>>,
    handle: JoinHandle<()>,
}

struct Manager {
    ctx: Arc<NodeCtx>,
    workers: HashMap<String, Entry>,
    /// Pods whose worker is done (deleted by the node, still in the API for a while).
    finished: HashSet<String>,
    done_tx: mpsc::UnboundedSender<String>,
}

fn uid(pod: &Pod) -> Option<String> {
    pod.metadata.uid.clone()
}

impl Manager {
    fn dispatch(&mut self, pod: Pod, existing: bool) {
        let Some(uid) = uid(&pod) else {
            return;
        };
        if self.finished.contains(&uid) {
            return;
        }
        if let Some(entry) = self.workers.get(&uid) {
            entry.tx.send_replace(Some(Arc::new(pod)));
            return;
        }
        if *self.ctx.shutdown.borrow() {
            return;
        }
        tracing::info!(
            pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default()),
            %uid,
            existing,
            "new pod on this node"
        );
        let (tx, rx) = watch::channel(Some(Arc::new(pod)));
        let ctx = self.ctx.clone();
        let done = self.done_tx.clone();
        let id = uid.clone();
        let handle = tokio::spawn(async move {
            Worker::run(ctx, rx, existing).await;
            let _ = done.send(id);
        });
        self.workers.insert(uid, Entry { tx, handle });
    }

    fn vanish(&mut self, uid: &str) {
        if let Some(entry) = self.workers.get(uid) {
            entry.tx.send_replace(None);
        }
    }
}

/// Watches the node's pods and runs them until the node shuts down; then waits for the workers.
pub async fn run(ctx: Arc<NodeCtx>) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let selector = format!("spec.nodeName={}", ctx.config.name);
    let mut stream = watcher::watcher(api, watcher::Config::default().fields(&selector))
        .default_backoff()
        .boxed();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut m = Manager {
        ctx: ctx.clone(),
        workers: HashMap::new(),
        finished: HashSet::new(),
        done_tx,
    };
    let mut shutdown = ctx.shutdown.clone();
    let mut first_list = true;
    let mut listed: HashSet<String> = HashSet::new();
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(Event::Init)) => listed.clear(),
                Some(Ok(Event::InitApply(pod))) => {
                    if let Some(u) = uid(&pod) {
                        listed.insert(u);
                    }
                    m.dispatch(pod, first_list);
                }
                Some(Ok(Event::InitDone)) => {
                    let missing: Vec<String> = m.workers.keys().filter(|u| !listed.contains(*u)).cloned().collect();
                    for u in missing {
                        m.vanish(&u);
                    }
                    m.finished.retain(|u| listed.contains(u));
                    first_list = false;
                }
                Some(Ok(Event::Apply(pod))) => m.dispatch(pod, false),
                Some(Ok(Event::Delete(pod))) => {
                    if let Some(u) = uid(&pod) {
                        m.vanish(&u);
                        m.finished.remove(&u);
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "pod watch failed; retrying"),
                None => {
                    tracing::error!("pod watch ended");
                    break;
                }
            },
            Some(u) = done_rx.recv() => {
                if let Some(entry) = m.workers.remove(&u) {
                    let _ = entry.handle.await;
                }
                m.finished.insert(u);
            }
            _ = shutting_down(&mut shutdown) => break,
        }
    }
    let count = m.workers.len();
    if count > 0 {
        tracing::info!(pods = count, "stopping the node's pods");
    }
    // The senders stay alive while the workers stop: a dropped sender reads as "pod gone".
    let (senders, handles): (Vec<_>, Vec<JoinHandle<()>>) =
        m.workers.drain().map(|(_, e)| (e.tx, e.handle)).unzip();
    if tokio::time::timeout(SHUTDOWN_WAIT, futures::future::join_all(handles))
        .await
        .is_err()
    {
        tracing::warn!("some pods did not stop in time");
    }
    drop(senders);
}
