//! Leader election against the in-memory API server: one leader at a time, takeover after the
//! lease expires, immediate takeover after a release.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use lf_fake_apiserver::FakeApiServer;
use lf_operator::lease::{LeaderElector, LeaseConfig};

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_millis(1000),
        renew_deadline: Duration::from_millis(600),
        retry_period: Duration::from_millis(100),
        ..LeaseConfig::new("default", "lf-operator-leader", identity)
    }
}

fn holder(fake: &FakeApiServer) -> Option<String> {
    fake.get::<Lease>("default", "lf-operator-leader")?
        .spec?
        .holder_identity
}

#[tokio::test]
async fn only_one_leader_and_takeover_after_expiry() {
    let fake = FakeApiServer::new();
    let mut a = LeaderElector::new(fake.client(), config("a"));
    let mut b = LeaderElector::new(fake.client(), config("b"));
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(
        !b.try_acquire_or_renew().await.unwrap(),
        "b must wait while a holds a fresh lease"
    );
    assert!(a.try_acquire_or_renew().await.unwrap(), "a renews");
    assert_eq!(holder(&fake).as_deref(), Some("a"));

    // a stops renewing: b takes over once b has seen the record unchanged for the lease duration.
    assert!(!b.try_acquire_or_renew().await.unwrap());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(b.try_acquire_or_renew().await.unwrap());
    assert_eq!(holder(&fake).as_deref(), Some("b"));
    let lease = fake.get::<Lease>("default", "lf-operator-leader").unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
    // a, back, sees b's fresh record and does not steal it.
    assert!(!a.try_acquire_or_renew().await.unwrap());
}

#[tokio::test]
async fn concurrent_writers_cannot_both_win() {
    let fake = FakeApiServer::new();
    let mut a = LeaderElector::new(fake.client(), config("a"));
    let mut b = LeaderElector::new(fake.client(), config("b"));
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    assert!(
        ra.unwrap() ^ rb.unwrap(),
        "exactly one wins the creation race"
    );
}

#[tokio::test]
async fn release_hands_over_at_once() {
    let fake = FakeApiServer::new();
    let mut a = LeaderElector::new(fake.client(), config("a"));
    let mut b = LeaderElector::new(fake.client(), config("b"));
    a.acquire().await;
    assert!(!b.try_acquire_or_renew().await.unwrap());
    a.release().await.unwrap();
    assert!(b.try_acquire_or_renew().await.unwrap());
    assert_eq!(holder(&fake).as_deref(), Some("b"));
}

#[tokio::test]
async fn keep_leading_returns_when_the_lease_is_taken() {
    let fake = FakeApiServer::new();
    let mut a = LeaderElector::new(fake.client(), config("a"));
    a.acquire().await;
    // Someone else overwrites the lease (e.g. an operator with a skewed view).
    fake.modify::<Lease>("default", "lf-operator-leader", "intruder", |l| {
        l["spec"]["holderIdentity"] = serde_json::json!("intruder");
        l["spec"]["renewTime"] = serde_json::json!("2099-01-01T00:00:00.000000Z");
    })
    .unwrap();
    tokio::time::timeout(Duration::from_secs(3), a.keep_leading())
        .await
        .expect("keep_leading notices the loss");
}
