//! Whose an existing object is, as Kubernetes' controller-ref manager decides it: an object
//! belongs to a FineTuneJob only when its controller owner reference names that FineTuneJob's
//! UID. The operator never takes over, rewrites or deletes an object that is not its own (a
//! pre-existing ServiceAccount `X-trainer` would otherwise lend its token to the trainer pods; a
//! pre-existing Role would have its rules replaced and be garbage-collected with the job).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use lf_api::FineTuneJob;

/// An object's controller (its owner reference with `controller: true`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

/// The controller among `refs`, if any.
pub fn controller_of(refs: Option<&[OwnerReference]>) -> Option<Controller> {
    let r = refs?.iter().find(|r| r.controller == Some(true))?;
    Some(Controller {
        kind: r.kind.clone(),
        name: r.name.clone(),
        uid: r.uid.clone(),
    })
}

/// Who holds an object with the name a child of a FineTuneJob needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// This FineTuneJob (by UID): the object is its child.
    ThisJob,
    /// An earlier FineTuneJob of the same name, deleted and re-created: the garbage collector
    /// removes the object soon, since its owner is gone.
    EarlierJob,
    /// Anything else: not the operator's to change (the text says who holds it).
    Other(String),
}

/// Decides who holds an object controlled by `controller`, for the FineTuneJob `name`/`uid`.
pub fn holder(controller: Option<&Controller>, name: &str, uid: &str) -> Holder {
    let kind = FineTuneJob::kind(&());
    match controller {
        Some(c) if c.kind == kind && c.uid == uid => Holder::ThisJob,
        Some(c) if c.kind == kind && c.name == name => Holder::EarlierJob,
        Some(c) => Holder::Other(format!(
            "is controlled by {} {} (uid {})",
            c.kind, c.name, c.uid
        )),
        None => Holder::Other("has no controller".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(kind: &str, name: &str, uid: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: "lf-operator.io/v1alpha1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller,
            block_owner_deletion: None,
        }
    }

    #[test]
    fn only_the_controller_reference_counts() {
        let refs = [
            owner("FineTuneJob", "demo", "u1", None),
            owner("FineTuneJob", "demo", "u2", Some(false)),
            owner("Deployment", "web", "u3", Some(true)),
        ];
        let c = controller_of(Some(&refs)).expect("one controller");
        assert_eq!((c.kind.as_str(), c.uid.as_str()), ("Deployment", "u3"));
        assert_eq!(controller_of(Some(&refs[..2])), None);
        assert_eq!(controller_of(None), None);
    }

    #[test]
    fn holders() {
        let c = |kind: &str, name: &str, uid: &str| Controller {
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
        };
        let cases: [(Option<Controller>, Holder); 5] = [
            (Some(c("FineTuneJob", "demo", "u1")), Holder::ThisJob),
            // Same UID is what counts, whatever the name says.
            (Some(c("FineTuneJob", "renamed", "u1")), Holder::ThisJob),
            (Some(c("FineTuneJob", "demo", "old")), Holder::EarlierJob),
            (
                Some(c("FineTuneJob", "other", "u9")),
                Holder::Other("is controlled by FineTuneJob other (uid u9)".into()),
            ),
            (None, Holder::Other("has no controller".into())),
        ];
        for (controller, want) in cases {
            assert_eq!(
                holder(controller.as_ref(), "demo", "u1"),
                want,
                "{controller:?}"
            );
        }
        assert_eq!(
            holder(Some(&c("Job", "demo", "u1")), "demo", "u1"),
            Holder::Other("is controlled by Job demo (uid u1)".into()),
            "the kind must match too"
        );
    }
}
