//! The parameter bookkeeping every optimiser shares: lazily created per-parameter state, the
//! fp32 master copy for 16-bit parameters, CPU offload, and (de)serialisation of all of it.
//!
//! Each optimiser is an [`UpdateRule`]: a pure per-tensor update over `(target, grad, state)`.
//! The engine decides what `target` is:
//! * the parameter itself (fp32 training, or `pure_bf16` where parameters and states stay bf16);
//! * an fp32 master copy on the parameter's device when the parameter is 16-bit under AMP — the
//!   update runs in fp32 and the result is cast back into the parameter;
//! * with `offload_optimizer: cpu`, an fp32 master copy on the CPU next to fp32 states on the CPU:
//!   the gradient is copied to the host, the step runs there and only the updated parameter (in
//!   its own 16-bit or 32-bit dtype) is copied back.
//!
//! ## ZeRO partitioning
//! State is kept per parameter and every state tensor is either parameter-shaped (element-wise:
//! AdamW's moments, the master copy, 8-bit codes flattened in blocks of 256) or a small factored
//! summary (Adafactor's row/column statistics). A rank's shard of a parameter is the flat element
//! range `[start, end)` of `p.reshape(-1)`; the element-wise states shard the same way
//! (`state.reshape(-1).narrow(0, start, end - start)`, with 8-bit block constants sharded at block
//! boundaries, i.e. ranges aligned to 256), and the step count is replicated. Adafactor's factored
//! statistics need the full gradient row/column means and are therefore partitioned by whole
//! parameters, not element ranges.

use std::collections::HashMap;

use tch::{Device, Kind, Tensor};

use crate::optimizer::{OptimError, Optimizer, StateBytes};

/// One optimiser's per-tensor arithmetic.
pub(crate) trait UpdateRule: Send {
    /// The short name written into the state dict (`adamw`, `sgd`, ...), checked on load.
    fn name(&self) -> &'static str;
    /// Names of the state tensors for a parameter of this shape (in [`Self::init`] order).
    fn state_names(&self, shape: &[i64]) -> Vec<&'static str>;
    /// Fresh (zero) state for updating `target`, with floating state tensors in `kind`.
    fn init(&mut self, target: &Tensor, kind: Kind) -> Vec<Tensor>;
    /// Updates `target` in place from `grad` (same device and dtype as `target`); `step` is the
    /// 1-based count of updates of this parameter including this one.
    fn update(
        &mut self,
        target: &mut Tensor,
        grad: &Tensor,
        state: &mut [Tensor],
        step: i64,
        lr: f64,
    );
}

/// Where the update runs and in which precision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Placement {
    /// Keep an fp32 master copy and fp32 states on the CPU.
    pub offload: bool,
    /// `pure_bf16`: no master copy, states in the parameter's dtype.
    pub pure_16bit: bool,
}

struct Slot {
    step: i64,
    master: Option<Tensor>,
    state: Vec<Tensor>,
}

/// The generic optimiser over an [`UpdateRule`].
pub(crate) struct Engine<R: UpdateRule> {
    rule: R,
    names: Vec<String>,
    shapes: Vec<Vec<i64>>,
    /// Each parameter's dtype and device at construction: where its state goes.
    kinds: Vec<(Kind, Device)>,
    slots: Vec<Option<Slot>>,
    placement: Placement,
}

fn is_16bit(kind: Kind) -> bool {
    matches!(kind, Kind::Half | Kind::BFloat16)
}

/// A deep copy of `t` as `kind` on `device`.
fn fresh_copy(t: &Tensor, kind: Kind, device: Device) -> Tensor {
    let mut out = Tensor::empty(t.size(), (kind, device));
    out.copy_(&t.detach());
    out
}

impl<R: UpdateRule> Engine<R> {
    pub fn new(
        rule: R,
        params: &[(String, Tensor)],
        placement: Placement,
    ) -> Result<Self, OptimError> {
        let mut seen = std::collections::HashSet::new();
        for (name, p) in params {
            if !seen.insert(name.as_str()) {
                return Err(OptimError::BadParam {
                    name: name.clone(),
                    message: "appears twice".into(),
                });
            }
            if !matches!(
                p.kind(),
                Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
            ) {
                return Err(OptimError::BadParam {
                    name: name.clone(),
                    message: format!(
                        "has dtype {:?}; only floating-point parameters can be optimised",
                        p.kind()
                    ),
                });
            }
        }
        Ok(Engine {
            rule,
            names: params.iter().map(|(n, _)| n.clone()).collect(),
            shapes: params.iter().map(|(_, p)| p.size()).collect(),
            kinds: params.iter().map(|(_, p)| (p.kind(), p.device())).collect(),
            slots: params.iter().map(|_| None).collect(),
            placement,
        })
    }

    /// The master copy a parameter gets, if any, and the dtype and device of its state.
    fn layout(&self, p: &Tensor) -> (Option<(Kind, Device)>, Kind, Device) {
        if self.placement.offload {
            (Some((Kind::Float, Device::Cpu)), Kind::Float, Device::Cpu)
        } else if self.placement.pure_16bit {
            (None, p.kind(), p.device())
        } else if is_16bit(p.kind()) {
            (Some((Kind::Float, p.device())), Kind::Float, p.device())
        } else {
            (None, p.kind(), p.device())
        }
    }

    fn new_slot(&mut self, p: &Tensor) -> Slot {
        let (master, state_kind, _) = self.layout(p);
        let master = master.map(|(k, d)| fresh_copy(p, k, d));
        let state = {
            let target = master.as_ref().unwrap_or(p);
            self.rule.init(target, state_kind)
        };
        Slot {
            step: 0,
            master,
            state,
        }
    }

    fn check_params(&self, params: &[Tensor]) -> Result<(), OptimError> {
        if params.len() != self.names.len() {
            return Err(OptimError::ParamCount {
                expected: self.names.len(),
                got: params.len(),
            });
        }
        for ((p, name), shape) in params.iter().zip(&self.names).zip(&self.shapes) {
            if &p.size() != shape {
                return Err(OptimError::BadParam {
                    name: name.clone(),
                    message: format!(
                        "has shape {:?}, the optimiser was built for {shape:?}",
                        p.size()
                    ),
                });
            }
        }
        Ok(())
    }
}

impl<R: UpdateRule> Optimizer for Engine<R> {
    fn step(&mut self, params: &[Tensor], lr: f64) -> Result<(), OptimError> {
        self.check_params(params)?;
        if !lr.is_finite() || lr < 0.0 {
            return Err(OptimError::InvalidConfig {
                key: "learning_rate",
                message: format!("{lr} is not a usable learning rate"),
            });
        }
        let _guard = tch::no_grad_guard();
        for (i, p) in params.iter().enumerate() {
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            if self.slots[i].is_none() {
                let slot = self.new_slot(p);
                self.slots[i] = Some(slot);
            }
            let Some(slot) = self.slots[i].as_mut() else {
                continue;
            };
            slot.step += 1;
            match slot.master.as_mut() {
                Some(master) => {
                    let g = grad.to_device(master.device()).to_kind(master.kind());
                    self.rule.update(master, &g, &mut slot.state, slot.step, lr);
                    let mut p = p.shallow_clone();
                    p.copy_(master);
                }
                None => {
                    let mut target = p.shallow_clone();
                    let g = if grad.kind() == p.kind() {
                        grad
                    } else {
                        grad.to_kind(p.kind())
                    };
                    self.rule
                        .update(&mut target, &g, &mut slot.state, slot.step, lr);
                }
            }
        }
        Ok(())
    }

    fn zero_grad(&mut self, params: &[Tensor]) {
        for p in params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "optimizer.kind".to_string(),
            Tensor::from_slice(self.rule.name().as_bytes()),
        )];
        for ((name, slot), shape) in self.names.iter().zip(&self.slots).zip(&self.shapes) {
            let Some(slot) = slot else { continue };
            out.push((format!("{name}.step"), Tensor::from_slice(&[slot.step])));
            if let Some(m) = &slot.master {
                out.push((format!("{name}.master"), m.shallow_clone()));
            }
            for (key, t) in self.rule.state_names(shape).into_iter().zip(&slot.state) {
                out.push((format!("{name}.{key}"), t.shallow_clone()));
            }
        }
        out
    }

    fn load_state_dict(&mut self, state: Vec<(String, Tensor)>) -> Result<(), OptimError> {
        let mut map: HashMap<String, Tensor> = state.into_iter().collect();
        let kind = map
            .remove("optimizer.kind")
            .ok_or_else(|| OptimError::State("missing `optimizer.kind`".into()))?;
        let mut buf = vec![0u8; kind.numel()];
        kind.f_copy_data_u8(&mut buf, kind.numel())?;
        let saved = String::from_utf8_lossy(&buf).to_string();
        if saved != self.rule.name() {
            return Err(OptimError::State(format!(
                "the checkpoint holds `{saved}` optimizer state but this run uses `{}`; resume with the same `optim`",
                self.rule.name()
            )));
        }
        let _guard = tch::no_grad_guard();
        let mut slots: Vec<Option<Slot>> = Vec::with_capacity(self.names.len());
        for i in 0..self.names.len() {
            let name = self.names[i].clone();
            let Some(step) = map.remove(&format!("{name}.step")) else {
                slots.push(None);
                continue;
            };
            let step = step.f_int64_value(&[0])?;
            // A template of the right shapes, dtypes and devices, then filled from the file.
            let shape = self.shapes[i].clone();
            let template = Tensor::zeros(&shape, self.kinds[i]);
            let mut slot = self.new_slot(&template);
            slot.step = step;
            if let Some(m) = slot.master.as_mut() {
                let key = format!("{name}.master");
                let saved = map
                    .remove(&key)
                    .ok_or_else(|| OptimError::State(format!("missing `{key}`")))?;
                copy_checked(m, &saved, &key)?;
            }
            for (key, t) in self
                .rule
                .state_names(&shape)
                .into_iter()
                .zip(slot.state.iter_mut())
            {
                let key = format!("{name}.{key}");
                let saved = map
                    .remove(&key)
                    .ok_or_else(|| OptimError::State(format!("missing `{key}`")))?;
                copy_checked(t, &saved, &key)?;
            }
            slots.push(Some(slot));
        }
        if let Some(extra) = map.keys().next() {
            return Err(OptimError::State(format!(
                "unexpected `{extra}` (state for a parameter this run does not train?)"
            )));
        }
        self.slots = slots;
        Ok(())
    }

    fn state_bytes(&self) -> u64 {
        let b = self.state_bytes_detail();
        b.device + b.host
    }

    fn state_bytes_detail(&self) -> StateBytes {
        let mut out = StateBytes::default();
        for slot in self.slots.iter().flatten() {
            let tensors = slot
                .master
                .iter()
                .map(|m| (m, true))
                .chain(slot.state.iter().map(|t| (t, false)));
            for (t, is_master) in tensors {
                let bytes = t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
                if t.device() == Device::Cpu && self.placement.offload {
                    out.host += bytes;
                } else {
                    out.device += bytes;
                }
                if is_master {
                    out.master += bytes;
                }
            }
        }
        out
    }
}

fn copy_checked(dst: &mut Tensor, src: &Tensor, key: &str) -> Result<(), OptimError> {
    if dst.size() != src.size() {
        return Err(OptimError::State(format!(
            "`{key}` has shape {:?}, expected {:?}",
            src.size(),
            dst.size()
        )));
    }
    dst.f_copy_(src)?;
    Ok(())
}
