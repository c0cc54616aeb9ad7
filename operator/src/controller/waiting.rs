//! The status while a job waits for something outside it: the previous attempt's pods to go, an
//! earlier job of the same name to be collected, the Job controller to create pods, the API
//! server to accept a child. Pure, like the rest of [`transitions`](super::transitions).

use lf_api::conditions::{self, types};
use lf_api::status::Phase;

use super::observe::Terminating;
use super::transitions::Draft;

/// How long a pod may terminate before the status says it looks stuck.
const STUCK_TERMINATING: std::time::Duration = std::time::Duration::from_secs(120);

impl Draft {
    /// The previous attempt's pods are still there.
    pub fn previous_attempt_terminating(
        &mut self,
        pods: usize,
        stuck: Option<&Terminating>,
        suspend: bool,
    ) {
        let mut msg = format!("waiting for {pods} pod(s) of the previous attempt to terminate");
        if let Some(t) = stuck.filter(|t| t.for_how_long >= STUCK_TERMINATING) {
            let node = t.node.as_deref().unwrap_or("no node");
            msg.push_str(&format!(
                "; pod {} on {node} has been terminating for {} s: if that node is gone, `kubectl delete pod {} --force`",
                t.pod,
                t.for_how_long.as_secs(),
                t.pod
            ));
        }
        if suspend {
            self.condition(types::READY, false, "PreviousAttemptTerminating", &msg);
            self.st.message = Some(msg);
        } else {
            self.phase(Phase::Pending, "PreviousAttemptTerminating", &msg);
        }
    }

    /// A child's name is still held by an earlier FineTuneJob of this name (being collected).
    pub fn earlier_job_children(&mut self, message: &str) {
        self.phase(Phase::Pending, "EarlierJobChildren", message);
    }

    /// The current attempt's Job has no pods, and the Job controller says why (`note`).
    pub fn pods_not_created(&mut self, attempt: u32, note: &str) {
        let msg = format!("attempt {attempt}: the Job controller cannot create pods: {note}");
        self.phase(Phase::Pending, "FailedCreate", &msg);
        self.st.message = Some(conditions::truncate(&msg, conditions::MAX_MESSAGE));
    }

    /// The API server refused to create a child (`message`: its words, e.g. a ResourceQuota).
    pub fn create_refused(&mut self, message: &str) {
        let msg = format!("the API server refused a child of this job: {message}");
        self.phase(Phase::Pending, "CreateForbidden", &msg);
        self.st.message = Some(conditions::truncate(&msg, conditions::MAX_MESSAGE));
    }
}
