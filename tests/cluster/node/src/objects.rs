//! The API objects a pod refers to, read with the node's identity (the Node authorizer lets a node
//! read the ConfigMaps, Secrets, PVCs and PVs of the pods bound to it).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Secret};
use kube::{Api, Client};

use crate::env::Objects;
use crate::error::{Error, Result};

/// Key → bytes of a ConfigMap (`data` and `binaryData`); `None` if it does not exist.
pub async fn config_map(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    Ok(api.get_opt(name).await?.map(|cm| {
        let mut out: BTreeMap<String, Vec<u8>> = cm
            .binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        out.extend(
            cm.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes())),
        );
        out
    }))
}

/// Key → bytes of a Secret; `None` if it does not exist.
pub async fn secret(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    Ok(api.get_opt(name).await?.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }))
}

fn strings(data: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, String> {
    data.into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect()
}

/// Fetches the ConfigMaps and Secrets named for env/envFrom.
pub async fn env_objects(
    client: &Client,
    ns: &str,
    config_maps: &BTreeSet<String>,
    secrets: &BTreeSet<String>,
) -> Result<Objects> {
    let mut objects = Objects::default();
    for name in config_maps {
        let data = config_map(client, ns, name).await?.map(strings);
        objects.config_maps.insert(name.clone(), data);
    }
    for name in secrets {
        let data = secret(client, ns, name).await?.map(strings);
        objects.secrets.insert(name.clone(), data);
    }
    Ok(objects)
}

/// The host directory behind a PVC: its bound PV must be `hostPath` or `local`.
pub async fn claim_path(client: &Client, ns: &str, claim: &str) -> Result<String> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let pvc = pvcs
        .get_opt(claim)
        .await?
        .ok_or_else(|| Error::Invalid(format!("persistentvolumeclaim {claim:?} not found")))?;
    let volume = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "persistentvolumeclaim {claim:?} is not bound to a volume"
            ))
        })?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = pvs
        .get_opt(&volume)
        .await?
        .ok_or_else(|| Error::Invalid(format!("persistentvolume {volume:?} not found")))?;
    let spec = pv.spec.unwrap_or_default();
    spec.host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "persistentvolume {volume:?} is neither hostPath nor local: lf-node cannot mount it"
            ))
        })
}
