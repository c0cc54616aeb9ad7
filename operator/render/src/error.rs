//! Why a FineTuneJob cannot be rendered.

/// Why a FineTuneJob cannot be rendered. Each names the field at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("metadata.name is missing")]
    MissingName,
    #[error("metadata.name `{name}` {why}")]
    InvalidName { name: String, why: String },
    #[error("spec.model.source is required to run a job: the pods load the model's config.json, safetensors and tokenizer from that volume")]
    MissingModelSource,
    #[error("no trainer image: set spec.image or the operator's default trainer image")]
    MissingImage,
    #[error("{key}: {why}")]
    InvalidVolume { key: String, why: String },
    #[error("{key} is not supported: {why}")]
    Unsupported { key: String, why: String },
    #[error("spec.distributed.nccl.{key}: {why}")]
    InvalidNcclVariable { key: String, why: String },
    #[error("spec.training: {0}")]
    InvalidTraining(String),
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    #[error("invalid render context: {0}")]
    InvalidContext(String),
}
