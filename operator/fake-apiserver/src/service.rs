//! The HTTP side: a `tower::Service` that answers Kubernetes API requests from the [`Store`].

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::registry::{parse_path, Target};
use crate::selector::{FieldSelector, LabelSelector};
use crate::shared::{Body, RequestRecord, Shared};
use crate::store::{Key, Propagation, Store, WriteKind};

/// The fake API server as a `tower::Service`; cheap to clone. Give it to
/// `kube::Client::new(service, "default")`.
#[derive(Clone, Debug)]
pub struct FakeService {
    pub(crate) shared: Arc<Shared>,
}

impl tower_service::Service<Request<kube::client::Body>> for FakeService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    return Ok(error_response(&ApiError::bad_request(&format!(
                        "cannot read body: {e}"
                    ))))
                }
            };
            let path = parts.uri.path().to_string();
            let query = parts.uri.query().unwrap_or("").to_string();
            let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let response = match take_fault(&shared, &parts.method, &path) {
                Some(err) => error_response(&err),
                None => handle(
                    &shared,
                    &parts.method,
                    &path,
                    &params,
                    &content_type,
                    &bytes,
                ),
            };
            shared
                .requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(RequestRecord {
                    method: parts.method.to_string(),
                    path,
                    query,
                    field_manager: params.get("fieldManager").cloned(),
                    code: response.status().as_u16(),
                });
            Ok(response)
        })
    }
}

fn take_fault(shared: &Shared, method: &Method, path: &str) -> Option<ApiError> {
    let mut faults = shared.faults.lock().unwrap_or_else(|e| e.into_inner());
    let fault = faults
        .iter_mut()
        .find(|f| f.method == method && path.contains(&f.path_contains) && f.remaining > 0)?;
    fault.remaining -= 1;
    Some(fault.error.clone())
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(value).unwrap_or_default());
    let mut resp = Response::new(Full::new(bytes).boxed_unsync());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(err: &ApiError) -> Response<Body> {
    json_response(
        StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &err.to_status(),
    )
}

fn handle(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    params: &HashMap<String, String>,
    content_type: &str,
    body: &[u8],
) -> Response<Body> {
    match route(shared, method, path, params, content_type, body) {
        Ok(resp) => resp,
        Err(err) => error_response(&err),
    }
}

fn parse_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(&format!("the body is not valid JSON: {e}")))
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    params: &HashMap<String, String>,
    content_type: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    if params.get("dryRun").is_some_and(|v| !v.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the fake API server",
        ));
    }
    let target = {
        let store = shared.store();
        parse_path(&store.types, path).map_err(|e| ApiError::new(404, "NotFound", e.to_string()))?
    };
    let manager = params.get("fieldManager").cloned();
    let status = target.subresource.is_some();
    match (method.clone(), target.name.clone()) {
        (Method::GET, Some(name)) => {
            let store = shared.store();
            let key = key_of(&store, &target, &name)?;
            let t = &store.types[target.type_index];
            let stored = store
                .get(&key)
                .ok_or_else(|| ApiError::not_found(t, &name))?;
            Ok(json_response(StatusCode::OK, &stored.object))
        }
        (Method::GET, None) => {
            let labels = LabelSelector::parse(
                params
                    .get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or(""),
            )
            .map_err(|e| ApiError::bad_request(&e.to_string()))?;
            let fields = FieldSelector::parse(
                params
                    .get("fieldSelector")
                    .map(String::as_str)
                    .unwrap_or(""),
            )
            .map_err(|e| ApiError::bad_request(&e.to_string()))?;
            if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
                let since = params
                    .get("resourceVersion")
                    .and_then(|rv| rv.parse::<u64>().ok())
                    .filter(|rv| *rv > 0);
                Ok(crate::watch::response(
                    shared.clone(),
                    target,
                    labels,
                    fields,
                    since,
                ))
            } else {
                let store = shared.store();
                let t = &store.types[target.type_index];
                let items = store.list(
                    target.type_index,
                    target.namespace.as_deref(),
                    &labels,
                    &fields,
                );
                Ok(json_response(
                    StatusCode::OK,
                    &json!({
                        "apiVersion": t.api_version(),
                        "kind": format!("{}List", t.kind),
                        "metadata": {"resourceVersion": store.resource_version().to_string()},
                        "items": items,
                    }),
                ))
            }
        }
        (Method::POST, None) => {
            let object = parse_body(body)?;
            let mut store = shared.store();
            let ns = target.namespace.clone().unwrap_or_default();
            let created = store.create(
                target.type_index,
                &ns,
                object,
                manager.as_deref().unwrap_or("unknown"),
            )?;
            shared.notify(&store);
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Method::PUT, Some(name)) => {
            let object = parse_body(body)?;
            write(
                shared,
                &target,
                &name,
                &object,
                WriteKind::Replace,
                manager.as_deref().unwrap_or("unknown"),
                status,
            )
        }
        (Method::PATCH, Some(name)) => {
            let object = parse_body(body)?;
            let media = content_type.split(';').next().unwrap_or("").trim();
            let (kind, manager) = match media {
                "application/apply-patch+yaml" => {
                    let Some(m) = manager else {
                        return Err(ApiError::bad_request(
                            "PATCH requests with apply content type must have a fieldManager",
                        ));
                    };
                    let force = params.get("force").is_some_and(|f| f == "true");
                    (WriteKind::Apply { force }, m)
                }
                "application/merge-patch+json" | "application/strategic-merge-patch+json" => (
                    WriteKind::Merge,
                    manager.unwrap_or_else(|| "unknown".into()),
                ),
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the fake API server does not support patch type `{other}`"),
                    ))
                }
            };
            write(shared, &target, &name, &object, kind, &manager, status)
        }
        (Method::DELETE, Some(name)) => {
            let propagation = delete_propagation(params, body);
            let mut store = shared.store();
            let key = key_of(&store, &target, &name)?;
            let deleted = store.delete(&key, propagation)?;
            shared.notify(&store);
            Ok(json_response(StatusCode::OK, &deleted))
        }
        (Method::DELETE, None) => {
            let labels = LabelSelector::parse(
                params
                    .get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or(""),
            )
            .map_err(|e| ApiError::bad_request(&e.to_string()))?;
            let propagation = delete_propagation(params, body);
            let mut store = shared.store();
            let t = store.types[target.type_index].clone();
            let victims = store.list(
                target.type_index,
                target.namespace.as_deref(),
                &labels,
                &FieldSelector::default(),
            );
            let mut deleted = Vec::new();
            for v in victims {
                let name = v
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let ns = v
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if let Ok(obj) = store.delete(&(target.type_index, ns, name), propagation) {
                    deleted.push(obj);
                }
            }
            shared.notify(&store);
            Ok(json_response(
                StatusCode::OK,
                &json!({"apiVersion": t.api_version(), "kind": format!("{}List", t.kind), "metadata": {}, "items": deleted}),
            ))
        }
        (m, _) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{m} is not supported on {path}"),
        )),
    }
}

fn delete_propagation(params: &HashMap<String, String>, body: &[u8]) -> Propagation {
    let from_body: Option<String> = serde_json::from_slice::<Value>(body).ok().and_then(|b| {
        b.get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    match from_body
        .or_else(|| params.get("propagationPolicy").cloned())
        .as_deref()
    {
        Some("Orphan") => Propagation::Orphan,
        _ => Propagation::Cascade,
    }
}

fn key_of(store: &Store, target: &Target, name: &str) -> Result<Key, ApiError> {
    let t = &store.types[target.type_index];
    let ns = match (&target.namespace, t.namespaced) {
        (Some(ns), true) => ns.clone(),
        (None, false) => String::new(),
        (None, true) => return Err(ApiError::not_found(t, name)),
        (Some(_), false) => return Err(ApiError::not_found(t, name)),
    };
    Ok((target.type_index, ns, name.to_string()))
}

fn write(
    shared: &Arc<Shared>,
    target: &Target,
    name: &str,
    object: &Value,
    kind: WriteKind,
    manager: &str,
    status: bool,
) -> Result<Response<Body>, ApiError> {
    let mut store = shared.store();
    let key = key_of(&store, target, name)?;
    let existed = store.get(&key).is_some();
    let result = store.write(&key, object, kind, manager, status)?;
    shared.notify(&store);
    let code = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_response(code, &result))
}
