//! A decoder linear layer: a frozen (possibly quantised) base weight, an optional bias, and an
//! optional LoRA/DoRA adapter with PEFT's exact forward.

use std::cell::Cell;

use tch::{Kind, Tensor};

use crate::names::TensorPath;

thread_local! {
    /// Set while [`without_adapters`] runs on this thread.
    static ADAPTERS_OFF: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every adapter bypassed, as PEFT's `disable_adapter()` does: the forward passes
/// in `f` (on this thread) compute the base model alone. DPO's reference log-probabilities under
/// LoRA come from this, with no second copy of the weights. The previous state is restored when
/// `f` returns or unwinds.
pub fn without_adapters<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ADAPTERS_OFF.with(|off| off.set(self.0));
        }
    }
    let _restore = Restore(ADAPTERS_OFF.with(|off| off.replace(true)));
    f()
}

/// Whether adapters are bypassed on this thread ([`without_adapters`]).
pub(crate) fn adapters_off() -> bool {
    ADAPTERS_OFF.with(Cell::get)
}

/// The base weight of a linear layer, `[out_features, in_features]`.
pub enum BaseWeight {
    /// A plain tensor in the model's dtype (trainable in `full`/`freeze` fine-tuning).
    Dense(Tensor),
    /// NF4/FP4/int8 storage (QLoRA); dequantised in each forward, never trained.
    Quantized(lf_quant::QuantizedWeight),
}

impl BaseWeight {
    /// The weight as a dense tensor of `kind` (dequantised for quantised storage, one layer at a
    /// time, so only one layer's dense copy exists at once).
    pub fn dense(&self, kind: Kind) -> Tensor {
        match self {
            BaseWeight::Dense(w) => {
                if w.kind() == kind {
                    w.shallow_clone()
                } else {
                    w.to_kind(kind)
                }
            }
            BaseWeight::Quantized(q) => q.dequantize(kind),
        }
    }

    /// Bytes held by the stored weight (quantised storage counted as stored).
    pub fn storage_bytes(&self) -> u64 {
        match self {
            BaseWeight::Dense(w) => (w.numel() * w.kind().elt_size_in_bytes()) as u64,
            BaseWeight::Quantized(q) => q.storage_bytes(),
        }
    }

    /// The dense tensor, when the weight is not quantised (for training and saving it).
    pub fn as_dense(&self) -> Option<&Tensor> {
        match self {
            BaseWeight::Dense(w) => Some(w),
            BaseWeight::Quantized(_) => None,
        }
    }
}

/// LoRA (DoRA, AdaLoRA) parameters of one linear layer, in PEFT's layout.
pub struct Adapter {
    /// `lora_A.weight`, `[r, in_features]`.
    pub a: Tensor,
    /// `lora_B.weight`, `[out_features, r]`.
    pub b: Tensor,
    /// DoRA's `lora_magnitude_vector`, `[out_features]`, when DoRA is on.
    pub magnitude: Option<Tensor>,
    /// AdaLoRA's singular values `lora_E`, `[r, 1]`: the update is `B·diag(E)·A` (SVD form).
    pub singular: Option<Tensor>,
    /// α/r (or α/√r with rsLoRA; AdaLoRA: α/(init_r + 1e-5)).
    pub scaling: f64,
    /// Dropout probability applied to the adapter's input while training.
    pub dropout: f64,
}

impl Adapter {
    /// The adapter's tensors with their PEFT names, for the linear at `path` (Hugging Face path),
    /// sharing storage with the adapter.
    pub fn named_tensors(&self, path: &TensorPath) -> Vec<(String, Tensor)> {
        if let Some(e) = &self.singular {
            // AdaLoRA's are parameters of the layer itself, named without `.weight`.
            return vec![
                (path.adalora_a(), self.a.shallow_clone()),
                (path.adalora_b(), self.b.shallow_clone()),
                (path.adalora_e(), e.shallow_clone()),
            ];
        }
        let mut out = vec![
            (path.lora_a(), self.a.shallow_clone()),
            (path.lora_b(), self.b.shallow_clone()),
        ];
        if let Some(m) = &self.magnitude {
            out.push((path.lora_magnitude_vector(), m.shallow_clone()));
        }
        out
    }

    /// `A`, or AdaLoRA's `diag(E)·A`: the adapter's first factor, `[r, in]`.
    fn down(&self) -> Tensor {
        match &self.singular {
            Some(e) => &self.a * e,
            None => self.a.shallow_clone(),
        }
    }

    /// `s·B·A` (AdaLoRA: `s·B·diag(E)·A`) in fp32, `[out, in]`.
    pub fn delta_weight(&self) -> Tensor {
        self.b
            .to_kind(Kind::Float)
            .matmul(&self.down().to_kind(Kind::Float))
            * self.scaling
    }
}

/// A linear layer `y = x Wᵀ + b` with an optional adapter.
pub struct Linear {
    pub weight: BaseWeight,
    pub bias: Option<Tensor>,
    pub adapter: Option<Adapter>,
}

impl Linear {
    /// A dense linear layer without adapter.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight: BaseWeight::Dense(weight),
            bias,
            adapter: None,
        }
    }

    /// Every tensor of the linear at `path`, sharing storage: the weight (quantised storage as
    /// `{path}.weight.{role}`), the bias, and the adapter's tensors under their PEFT names.
    pub fn named_tensors(&self, path: &TensorPath) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        match &self.weight {
            BaseWeight::Dense(w) => out.push((path.weight(), w.shallow_clone())),
            BaseWeight::Quantized(q) => {
                let weight = path.pp("weight");
                for (role, t) in q.storage_tensors() {
                    out.push((weight.pp(role).to_string(), t));
                }
            }
        }
        if let Some(b) = &self.bias {
            out.push((path.bias(), b.shallow_clone()));
        }
        if let Some(ad) = &self.adapter {
            out.extend(ad.named_tensors(path));
        }
        out
    }

    /// The forward pass. With an adapter this is PEFT's:
    /// LoRA `y = W x + s·B(A(dropout(x)))` (AdaLoRA: `A` is `diag(E)·A`); DoRA, with `k = m / ‖W + s·BA‖` (row norm, detached),
    /// `y = W x + (k − 1)·W x + k·s·B(A(x))`, where with active dropout the middle term uses the
    /// dropped-out input as PEFT does. The adapter runs in its own dtype (fp32 unless `pure_bf16`);
    /// its input is cast to that dtype and its result back to the activation dtype. Inside
    /// [`without_adapters`] the adapter is bypassed.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let w = self.weight.dense(x.kind());
        let base = x.linear(&w, self.bias.as_ref());
        let Some(ad) = self.adapter.as_ref().filter(|_| !adapters_off()) else {
            return base;
        };
        let kind = ad.a.kind();
        let dropout_active = train && ad.dropout > 0.0;
        let xa = if dropout_active {
            x.dropout(ad.dropout, true)
        } else {
            x.shallow_clone()
        }
        .to_kind(kind);
        let lora = xa
            .linear::<Tensor>(&ad.down(), None)
            .linear::<Tensor>(&ad.b, None);
        let out_kind = base.kind();
        match &ad.magnitude {
            None => &base + (lora * ad.scaling).to_kind(out_kind),
            Some(m) => {
                let wk = w.to_kind(kind);
                let lora_weight = ad.b.matmul(&ad.a).detach();
                let norm = (&wk + lora_weight * ad.scaling)
                    .square()
                    .sum_dim_intlist(1, false, kind)
                    .sqrt()
                    .detach();
                let k = m / norm;
                let base_term = if dropout_active {
                    xa.linear::<Tensor>(&wk, None)
                } else {
                    match &self.bias {
                        Some(b) => (&base - b).to_kind(kind),
                        None => base.to_kind(kind),
                    }
                };
                let dora = (&k - 1.0) * base_term + &k * lora * ad.scaling;
                &base + dora.to_kind(out_kind)
            }
        }
    }

    /// The base weight with the adapter merged in (what PEFT's `merge_and_unload` computes), as
    /// `kind`: `W + s·BA` for LoRA, `(m / ‖W + s·BA‖) ⊙ (W + s·BA)` row-wise for DoRA.
    pub fn merged_weight(&self, kind: Kind) -> Tensor {
        tch::no_grad(|| {
            let w = self.weight.dense(Kind::Float);
            let Some(ad) = &self.adapter else {
                return w.to_kind(kind);
            };
            let merged = w + ad.delta_weight();
            let merged = match &ad.magnitude {
                None => merged,
                Some(m) => {
                    let norm = merged.square().sum_dim_intlist(1, true, Kind::Float).sqrt();
                    m.to_kind(Kind::Float).unsqueeze(1) / norm * merged
                }
            };
            merged.to_kind(kind)
        })
    }
}
