//! Service-account tokens for projected volumes, requested with the TokenRequest API exactly as
//! the kubelet does (bound to the pod), and refreshed at 80% of their lifetime.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::error::{Error, Result};

/// The kubelet's default `expirationSeconds`.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// A token file of a projected volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSource {
    pub namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub service_account: String,
    pub audience: Option<String>,
    pub expiration_seconds: i64,
    /// The host file, rewritten in place on refresh.
    pub file: PathBuf,
    pub mode: u32,
}

/// When to refresh a token that is valid for `lifetime`: after 80% of it (the kubelet's rule, which
/// also refreshes tokens older than 24 h).
pub fn refresh_after(lifetime: Duration) -> Duration {
    let eighty = lifetime.mul_f64(0.8);
    eighty
        .min(Duration::from_secs(24 * 3600))
        .max(Duration::from_secs(1))
}

/// Requests a token; returns it with the time until it should be refreshed.
pub async fn request(client: &Client, src: &TokenSource) -> Result<(String, Duration)> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &src.namespace);
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: src
                .audience
                .clone()
                .filter(|a| !a.is_empty())
                .map(|a| vec![a]),
            expiration_seconds: Some(src.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(src.pod_name.clone()),
                uid: Some(src.pod_uid.clone()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let now = Timestamp::now();
    let answer = api
        .create_token_request(&src.service_account, &PostParams::default(), &request)
        .await?;
    let status = answer.status.unwrap_or_default();
    let token = status.token.filter(|t| !t.is_empty()).ok_or_else(|| {
        Error::Invalid(format!(
            "token request for service account {}/{} returned no token",
            src.namespace, src.service_account
        ))
    })?;
    let lifetime = status
        .expiration_timestamp
        .and_then(|t| {
            let secs = t.0.as_second() - now.as_second();
            u64::try_from(secs).ok()
        })
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(
            u64::try_from(src.expiration_seconds).unwrap_or(600),
        ));
    Ok((token, refresh_after(lifetime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_at_eighty_percent_capped_at_a_day() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(2880)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(365 * 24 * 3600)),
            Duration::from_secs(24 * 3600)
        );
        assert_eq!(refresh_after(Duration::ZERO), Duration::from_secs(1));
    }
}
