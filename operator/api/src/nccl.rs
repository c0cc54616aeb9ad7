//! Which environment variables a tenant may set through `spec.distributed.nccl`: the settings of
//! the communication libraries the trainer uses, and nothing that changes how a process is loaded
//! (`LD_PRELOAD`, `LD_LIBRARY_PATH`, `PATH`) or what it believes about its cluster
//! (`KUBERNETES_*`). One rule, two enforcers: the CRD's CEL rule ([`cel_rule`]) at admission, and
//! the renderer (`lf-render`'s `validate_nccl`) through [`check`], for objects stored before the
//! rule existed.

/// Prefixes of the variables the communication stack reads:
/// - `NCCL_`: NCCL itself (`NCCL_DEBUG`, `NCCL_SOCKET_IFNAME`, `NCCL_IB_HCA`, ...).
/// - `TORCH_NCCL_`: libtorch's NCCL process group (`TORCH_NCCL_ASYNC_ERROR_HANDLING`,
///   `TORCH_NCCL_BLOCKING_WAIT`, `TORCH_NCCL_TRACE_BUFFER_SIZE`, ...).
/// - `TORCH_DISTRIBUTED_`: `TORCH_DISTRIBUTED_DEBUG` (c10d's collective checks).
/// - `TORCH_GLOO_`, `GLOO_`: the Gloo process group and library (`GLOO_SOCKET_IFNAME`).
/// - `UCX_`: UCX (`UCX_TLS`, `UCX_NET_DEVICES`), used by NCCL's UCX net plugin.
/// - `FI_`: libfabric (`FI_PROVIDER`, `FI_EFA_USE_DEVICE_RDMA`), used on EFA.
pub const ALLOWED_PREFIXES: &[&str] = &[
    "NCCL_",
    "TORCH_NCCL_",
    "TORCH_DISTRIBUTED_",
    "TORCH_GLOO_",
    "GLOO_",
    "UCX_",
    "FI_",
];

/// Single variables allowed besides the prefixes: the CUDA caching allocator's settings (one of
/// the operator's defaults, documented as overridable) and libtorch's log level, which PyTorch's
/// distributed debugging guide pairs with `TORCH_DISTRIBUTED_DEBUG`.
pub const ALLOWED_NAMES: &[&str] = &["PYTORCH_CUDA_ALLOC_CONF", "TORCH_CPP_LOG_LEVEL"];

/// Variables under an allowed prefix that make a library load code or settings from a path: NCCL's
/// plugins (`NCCL_NET_PLUGIN`, `NCCL_TUNER_PLUGIN`, `NCCL_PROFILER_PLUGIN`, `NCCL_ENV_PLUGIN`: every
/// name ending in [`LOADER_SUFFIX`]), NCCL's settings file (which may itself name a plugin), UCX's
/// module directory and libfabric's provider path. With them a tenant could run code that is not
/// in the image (what an allowed-image list is there to prevent). Plugins belong in the image.
pub const LOADER_NAMES: &[&str] = &["NCCL_CONF_FILE", "UCX_MODULE_DIR", "FI_PROVIDER_PATH"];

/// See [`LOADER_NAMES`].
pub const LOADER_SUFFIX: &str = "_PLUGIN";

/// Whether `spec.distributed.nccl` may set `name`.
pub fn allowed(name: &str) -> bool {
    let known =
        ALLOWED_PREFIXES.iter().any(|p| name.starts_with(p)) || ALLOWED_NAMES.contains(&name);
    known && !name.ends_with(LOADER_SUFFIX) && !LOADER_NAMES.contains(&name)
}

/// What is allowed, in words, for error messages.
pub fn allowed_description() -> String {
    let prefixes: Vec<String> = ALLOWED_PREFIXES.iter().map(|p| format!("{p}*")).collect();
    format!(
        "only {} and {} may be set, and none that loads code ({}, *{LOADER_SUFFIX})",
        prefixes.join(", "),
        ALLOWED_NAMES.join(", "),
        LOADER_NAMES.join(", ")
    )
}

/// `Err(message)` naming `name` and what is allowed, when [`allowed`] refuses it.
pub fn check(name: &str) -> Result<(), String> {
    if allowed(name) {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not allowed: {}",
            allowed_description()
        ))
    }
}

/// The most variables `spec.distributed.nccl` may hold (also what bounds the CEL rule's cost).
pub const MAX_VARIABLES: usize = 64;

/// [`allowed`] as a CEL rule on the `nccl` map (`self` is the map; `all` ranges over its keys).
pub fn cel_rule() -> kube::core::Rule {
    let quoted = |names: &[&str]| -> String {
        let items: Vec<String> = names.iter().map(|n| format!("'{n}'")).collect();
        format!("[{}]", items.join(", "))
    };
    let prefixes: Vec<String> = ALLOWED_PREFIXES
        .iter()
        .map(|p| format!("k.startsWith('{p}')"))
        .collect();
    let rule = format!(
        "self.all(k, ({} || k in {}) && !k.endsWith('{LOADER_SUFFIX}') && !(k in {}))",
        prefixes.join(" || "),
        quoted(ALLOWED_NAMES),
        quoted(LOADER_NAMES),
    );
    let message = format!("distributed.nccl: {}", allowed_description());
    kube::core::Rule::new(rule).message(kube::core::Message::Message(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn communication_settings_pass_and_loader_or_process_variables_do_not() {
        for ok in [
            "NCCL_DEBUG",
            "NCCL_SOCKET_IFNAME",
            "TORCH_NCCL_BLOCKING_WAIT",
            "TORCH_DISTRIBUTED_DEBUG",
            "GLOO_SOCKET_IFNAME",
            "UCX_TLS",
            "FI_PROVIDER",
            "PYTORCH_CUDA_ALLOC_CONF",
        ] {
            assert!(allowed(ok), "{ok}");
        }
        for bad in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "PATH",
            "KUBERNETES_SERVICE_HOST",
            "PYTHONPATH",
            "NCCL_NET_PLUGIN",
            "NCCL_TUNER_PLUGIN",
            "NCCL_CONF_FILE",
            "UCX_MODULE_DIR",
            "FI_PROVIDER_PATH",
            "NCCL",
            "nccl_debug",
        ] {
            let err = check(bad).unwrap_err();
            assert!(err.contains(bad) && err.contains("NCCL_*"), "{err}");
        }
    }
}
