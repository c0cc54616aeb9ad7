//! The sparse mixture-of-experts MLP of Mixtral and Qwen3-MoE, and the router's load-balancing
//! loss, with transformers 5.25's numerics (`modeling_mixtral.py`, `modeling_qwen3_moe.py`).
//!
//! **Layout.** Checkpoints on the Hub hold one 2-D linear per expert
//! (`block_sparse_moe.experts.{e}.w1|w3|w2` for Mixtral, `mlp.experts.{e}.gate_proj|up_proj|
//! down_proj` for Qwen3-MoE), and transformers 5's `save_pretrained` writes that format back.
//! In memory transformers 5 fuses them at load time into two 3-D parameters per layer,
//! `mlp.experts.gate_up_proj` `[E, 2·I, H]` (gate rows first) and `mlp.experts.down_proj`
//! `[E, H, I]` (`conversion_mapping.py`: `MergeModulelist` + `Concatenate`), and renames Mixtral's
//! `block_sparse_moe` to `mlp`. We keep the checkpoint's layout: each expert is three [`Linear`]s
//! named as in the file, so loading is a rename-free read, QLoRA quantises every expert weight
//! as it quantises any other linear (one block-wise NF4 tensor per expert and projection), ZeRO-3
//! partitions them with the rest of the layer, and export writes the Hub's names. The fused
//! `[E, 2·I, H]` product is the same numbers (`gate_up[e] = cat(w1, w3)`); a matmul on the fused
//! rows and two on the halves differ only in summation order.
//!
//! **Routing** (both families): router logits `x Wᵍᵀ` in the activation dtype, softmax in fp32,
//! the top-k probabilities (k = `num_experts_per_tok`), renormalised to sum to 1 for Mixtral and
//! for Qwen3-MoE with `norm_topk_prob`; Qwen3-MoE casts the weights back to the logits' dtype,
//! Mixtral keeps them fp32 (the weighted expert output is cast to the activation dtype before it
//! is summed). Every routed token's output is `Σ_k w_k · down_k(silu(gate_k(x)) · up_k(x))`,
//! summed expert by expert in index order as transformers' `index_add_` does.
//!
//! **The CPU path is a loop over experts** (gather the tokens routed to `e`, run its SwiGLU,
//! scatter-add). A grouped-GEMM GPU path needs: the token→expert assignment sorted by expert
//! (a permutation and per-expert offsets, computed on the device without a host sync), the
//! expert weights contiguous as `[E, 2·I, H]` and `[E, H, I]` (which a quantised or adapted
//! layout must then provide per group, or dequantise per group), one grouped matmul per
//! projection over the variable-size groups (CUTLASS grouped GEMM, `torch._grouped_mm`), and the
//! inverse permutation weighted by the routing weights; its backward needs the same grouping for
//! the weight gradients. With expert parallelism the permutation becomes an all-to-all.
//!
//! **LoRA on the router and the experts** (PEFT 0.22's `target_parameters`, which is how PEFT
//! adapts transformers 5's MoE modules: the router `mlp.gate` is a `…TopKRouter` holding
//! `weight` `[E, H]` and the experts `mlp.experts` hold the fused 3-D parameters, none an
//! `nn.Linear`; see [`lf_api::architecture::ExpertLoraTargets`] for the names `lora_target` takes).
//! PEFT's `ParamWrapper` of a parameter of `E` experts (`E = 1` for the router) holds one
//! `lora_A` `[E·r, in]` and one `lora_B` `[out, r·E]`: expert `e`'s factors are `A_e` = rows
//! `e·r..(e+1)·r` of `lora_A` (`reshape(E, r, in)`) and `B_e` = columns `e, e+E, e+2E, …` of
//! `lora_B` (`reshape(out, r, E)`); `in`/`out` are the expert's (`gate_up_proj`: `H` → `2·I`,
//! gate rows first; `down_proj`: `I` → `H`). Initialisation as any LoRA (`A ~ U(±1/√in)`,
//! `B = 0`), scaling α/r (α/√r with rsLoRA) at the adapter's rank (named by its two halves,
//! `gate_up_proj` gets rank `2·r` and alpha `2·α` from PEFT's conversion: the same α/r). PEFT's
//! forward adds `s·B_e·A_e` to each expert's weight (one `baddbmm` over the stack) and runs the
//! experts on that; we compute the same product unfused, `x·W_eᵀ + s·(x·A_eᵀ)·B_eᵀ` with the
//! adapter's half in its own dtype, as a LoRA'd linear does: in fp32 the two differ by rounding
//! alone (`tests/peft.rs`), and no second copy of every expert's weight is built per forward
//! (PEFT's merged stack is held for backward), which also leaves quantised experts (QLoRA)
//! quantised. `gate_up_proj`'s product splits into the per-expert gate and up linears we hold
//! (`B_e`'s first `I` rows are the gate's). PEFT refuses dropout, DoRA and AdaLoRA on such
//! adapters; so do we ([`lf_api::TrainingConfig::expert_lora_targets_for`]). Export merges
//! `s·B_e·A_e` into each expert's linears, as PEFT's `merge_and_unload`.
//!
//! **Load-balancing loss** (Switch Transformer, eq. 4–6, as transformers'
//! `load_balancing_loss_func`): over every sparse layer's router logits, `f_e` = the share of
//! top-k assignments that went to expert `e` and `P_e` = the mean router probability of `e`,
//! both over the real tokens (the attention mask's ones) of every layer together;
//! `aux = E · Σ_e f_e · P_e`. transformers adds `router_aux_loss_coef · aux` to the loss only
//! when `output_router_logits` is set. `f_e` has no gradient, so the gradient reaches each
//! layer's router through `P_e` alone: `aux` is a sum of per-layer terms
//! `E · Σ_e f_e · p_e⁽ⁱ⁾ / rows` with `f_e` known after the forward pass
//! ([`RouterBalance::layer_term`]), which is what a backward that recomputes layers needs.
//!
//! **Which tokens count.** A mask is read as 0/1: every non-zero entry is one real token, weighed
//! once. That is transformers' result for a right-padded batch (LLaMA-Factory's 0/1 mask) and for
//! `neat_packing` as LLaMA-Factory runs it with flash attention (the padding dropped, no mask: every
//! real token once). It is not what transformers 5.25's `load_balancing_loss_func` does with the
//! masks LLaMA-Factory builds for packed rows elsewhere, which we take as quirks and do not copy:
//! - `neat_packing`'s 2-D mask of segment indices (1, 2, 3, … per example, 0 on padding), when it
//!   reaches the function (LLaMA-Factory before its flash-attention path dropped the mask): the
//!   function multiplies by the mask, so a token of a row's k-th example weighs k;
//! - `neat_packing` with eager or SDPA attention: LLaMA-Factory's collator turns the mask into a
//!   4-D `[B, 1, S, S]` block-diagonal one, and the function, which flattens the mask to one
//!   weight per token, fails on it (a shape error): such a run has no load-balancing loss at all;
//! - `packing` (not neat): LLaMA-Factory marks the padding it appends to each row 1 ("more
//!   efficient flash_attn"), so the padding's routing counts; lf-data's rows mark it 0.
//!
//! `tests/moe.rs` measures each against transformers on the same rows.

use lf_api::architecture::ModelArchitecture;
use tch::{Device, Kind, Tensor};

use crate::lora_settings::LoraSettings;
use crate::ModelError;

use crate::linear::{adapters_off, Linear};
use crate::names::{self, ExpertLinear, MoeNaming, TensorPath};

/// `(in_features, out_features)` of an expert's linear `which`.
pub fn expert_shape(arch: &ModelArchitecture, which: ExpertLinear) -> (u64, u64) {
    let (h, i) = (arch.hidden_size, arch.expert_intermediate_size());
    match which {
        ExpertLinear::Gate | ExpertLinear::Up => (h, i),
        ExpertLinear::Down => (i, h),
    }
}

/// The Hugging Face name and shape of every weight of layer `i`'s sparse MLP (router first).
pub fn weight_layout(
    arch: &ModelArchitecture,
    naming: MoeNaming,
    i: usize,
) -> Vec<(String, Vec<i64>)> {
    let (h, e) = (arch.hidden_size as i64, arch.num_experts() as usize);
    let mut out = vec![(naming.router(i).weight(), vec![e as i64, h])];
    for x in 0..e {
        for which in ExpertLinear::ALL {
            let (fan_in, fan_out) = expert_shape(arch, which);
            let name = naming.expert(i, x, which).weight();
            out.push((name, vec![fan_out as i64, fan_in as i64]));
        }
    }
    out
}

/// One expert: a SwiGLU MLP.
pub struct Expert {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Expert {
    /// The linear `which`.
    pub fn linear(&self, which: ExpertLinear) -> &Linear {
        match which {
            ExpertLinear::Gate => &self.gate_proj,
            ExpertLinear::Up => &self.up_proj,
            ExpertLinear::Down => &self.down_proj,
        }
    }

    /// Expert `e`'s SwiGLU of `x`, with the layer's expert adapters (see the module docs).
    fn forward(&self, e: i64, x: &Tensor, adapters: &MoeAdapters, train: bool) -> Tensor {
        let gate = self.gate_proj.forward(x, train);
        let up = self.up_proj.forward(x, train);
        let on = !adapters_off();
        let (gate, up) = match adapters.gate_up.as_ref().filter(|_| on) {
            Some(ad) => {
                let d = ad.delta(x, e);
                let i = gate.size()[1];
                (gate + d.narrow(1, 0, i), up + d.narrow(1, i, i))
            }
            None => (gate, up),
        };
        let h = gate.silu() * up;
        let y = self.down_proj.forward(&h, train);
        match adapters.down.as_ref().filter(|_| on) {
            Some(ad) => y + ad.delta(&h, e),
            None => y,
        }
    }
}

/// PEFT's LoRA on a parameter (`ParamWrapper`) of `experts` stacked matrices (1 for the router):
/// see the module docs for the layout.
pub struct ParamAdapter {
    /// `lora_A.weight`, `[E·r, in]`: expert `e`'s `A_e` is rows `e·r..(e+1)·r`.
    pub a: Tensor,
    /// `lora_B.weight`, `[out, r·E]`: expert `e`'s `B_e` is columns `e, e+E, e+2E, …`.
    pub b: Tensor,
    /// `E`.
    pub experts: i64,
    /// α/r (α/√r with rsLoRA) at this adapter's rank.
    pub scaling: f64,
}

impl ParamAdapter {
    /// Expert `e`'s `(A_e [r, in], B_e [out, r])`, views of the adapter's tensors.
    pub fn factors(&self, e: i64) -> (Tensor, Tensor) {
        let r = self.a.size()[0] / self.experts;
        let out = self.b.size()[0];
        (
            self.a.narrow(0, e * r, r),
            self.b.view([out, r, self.experts]).select(2, e),
        )
    }

    /// `s·(x·A_eᵀ)·B_eᵀ` (`x`: `[n, in]`), computed in the adapter's dtype and returned in `x`'s.
    pub fn delta(&self, x: &Tensor, e: i64) -> Tensor {
        let (a, b) = self.factors(e);
        let y = x
            .to_kind(self.a.kind())
            .linear::<Tensor>(&a, None)
            .linear::<Tensor>(&b, None)
            * self.scaling;
        y.to_kind(x.kind())
    }

    /// `s·B_e·A_e` in fp32, `[out, in]`: what PEFT's `get_delta_weight` adds to expert `e`.
    pub fn delta_weight(&self, e: i64) -> Tensor {
        let (a, b) = self.factors(e);
        b.to_kind(Kind::Float).matmul(&a.to_kind(Kind::Float)) * self.scaling
    }

    /// `lora_A` and `lora_B` under PEFT's names for the wrapper at `path`.
    pub fn named_tensors(&self, path: &TensorPath) -> Vec<(String, Tensor)> {
        vec![
            (path.lora_a(), self.a.shallow_clone()),
            (path.lora_b(), self.b.shallow_clone()),
        ]
    }
}

/// A sparse layer's LoRA on its router and expert parameters.
#[derive(Default)]
pub struct MoeAdapters {
    /// On the router's `gate.weight` (`E = 1`: `lora_A` `[r, H]`, `lora_B` `[experts, r]`).
    pub router: Option<ParamAdapter>,
    /// On the experts' `gate_up_proj` (`[E, 2·I, H]`).
    pub gate_up: Option<ParamAdapter>,
    /// On the experts' `down_proj` (`[E, H, I]`).
    pub down: Option<ParamAdapter>,
}

impl MoeAdapters {
    /// The adapters `s.experts` asks for on a sparse layer of `arch`, of dtype `kind` on `device`:
    /// initialised as PEFT does (`A ~ U(±1/√in)` drawn on the CPU from libtorch's generator,
    /// `B = 0`) and trainable when `train`, zero and frozen otherwise (to be filled from an
    /// adapter file). Refuses what PEFT's `ParamWrapper` refuses: dropout and DoRA.
    pub(crate) fn new(
        arch: &ModelArchitecture,
        s: &LoraSettings,
        kind: Kind,
        device: Device,
        train: bool,
    ) -> Result<MoeAdapters, ModelError> {
        let t = s.experts;
        if t.is_empty() {
            return Ok(MoeAdapters::default());
        }
        let refuse = |what: &str| {
            Err(ModelError::Invalid(format!(
                "LoRA on a mixture of experts' router or experts ({}) does not work with {what}, \
                 as PEFT's ParamWrapper refuses it",
                t.target_parameters().join(", ")
            )))
        };
        if s.dropout > 0.0 {
            return refuse("lora_dropout > 0");
        }
        if s.use_dora {
            return refuse("DoRA");
        }
        let (h, i, e) = (
            arch.hidden_size as i64,
            arch.expert_intermediate_size() as i64,
            arch.num_experts() as i64,
        );
        let make = |experts: i64, factor: u32, fan_in: i64, fan_out: i64| {
            // PEFT's rank_pattern/alpha_pattern of a fused pair: rank and alpha both × factor.
            let r = (s.r * factor) as i64;
            let alpha = s.alpha * factor as f64;
            let scaling = if s.use_rslora {
                alpha / (r as f64).sqrt()
            } else {
                alpha / r as f64
            };
            let a = Tensor::empty([experts * r, fan_in], (Kind::Float, Device::Cpu));
            let a = if train {
                let bound = 1.0 / (fan_in as f64).sqrt();
                a.uniform(-bound, bound)
            } else {
                a.zero()
            };
            let b = Tensor::zeros([fan_out, r * experts], (Kind::Float, Device::Cpu));
            let prep = |t: Tensor| {
                t.to_device(device)
                    .to_kind(kind)
                    .detach()
                    .set_requires_grad(train)
            };
            ParamAdapter {
                a: prep(a),
                b: prep(b),
                experts,
                scaling,
            }
        };
        Ok(MoeAdapters {
            router: t.router.then(|| make(1, 1, h, e)),
            gate_up: t.gate_up.map(|f| make(e, f, h, 2 * i)),
            down: t.down.then(|| make(e, 1, i, h)),
        })
    }

    /// Every adapter tensor of layer `i` under PEFT's names.
    pub fn named_tensors(&self, i: usize) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        if let Some(ad) = &self.router {
            out.extend(ad.named_tensors(&names::peft_moe_router(i)));
        }
        let both = self.gate_up.is_some() && self.down.is_some();
        if let Some(ad) = &self.gate_up {
            out.extend(ad.named_tensors(&names::peft_moe_experts(i, both)));
        }
        if let Some(ad) = &self.down {
            out.extend(ad.named_tensors(&names::peft_moe_experts(i, false)));
        }
        out
    }
}

/// A sparse MLP: a router and its experts.
pub struct SparseMoe {
    /// `gate`: `[experts, hidden]`, no bias.
    pub router: Linear,
    pub experts: Vec<Expert>,
    /// Experts per token.
    pub top_k: i64,
    /// Renormalise the chosen probabilities to sum to 1.
    pub norm_topk_prob: bool,
    /// Qwen3-MoE casts the routing weights to the logits' dtype; Mixtral keeps them fp32.
    pub weights_in_logit_dtype: bool,
    pub naming: MoeNaming,
    /// LoRA on the router and the experts.
    pub adapters: MoeAdapters,
}

/// The router's decision for `T` tokens.
pub struct Routing {
    /// `[T, E]`, in the activation dtype (what transformers outputs as `router_logits`).
    pub logits: Tensor,
    /// `[T, k]`: the chosen experts, most probable first.
    pub experts: Tensor,
    /// `[T, k]`: their weights.
    pub weights: Tensor,
}

impl SparseMoe {
    /// Routes the tokens of `x` (`[T, H]`).
    pub fn route(&self, x: &Tensor, train: bool) -> Routing {
        let logits = self.router.forward(x, train);
        let logits = match self.adapters.router.as_ref().filter(|_| !adapters_off()) {
            Some(ad) => logits + ad.delta(x, 0),
            None => logits,
        };
        let probs = logits.softmax(-1, Kind::Float);
        let (top, experts) = probs.topk(self.top_k, -1, true, true);
        let top = if self.norm_topk_prob {
            &top / top.sum_dim_intlist(-1, true, Kind::Float)
        } else {
            top
        };
        let weights = if self.weights_in_logit_dtype {
            top.to_kind(logits.kind())
        } else {
            top
        };
        Routing {
            logits,
            experts,
            weights,
        }
    }

    /// The block's output (`[B, S, H]`) and its router logits (`[B·S, E]`).
    pub fn forward(&self, x: &Tensor, train: bool) -> (Tensor, Tensor) {
        let shape = x.size();
        let flat = x.reshape([-1, shape[shape.len() - 1]]);
        let routing = self.route(&flat, train);
        let mut out = flat.zeros_like();
        for (e, expert) in self.experts.iter().enumerate() {
            let hits = routing.experts.eq(e as i64).nonzero();
            if hits.size()[0] == 0 {
                continue;
            }
            let tokens = hits.select(1, 0);
            let slots = hits.select(1, 1);
            let y = expert.forward(
                e as i64,
                &flat.index_select(0, &tokens),
                &self.adapters,
                train,
            );
            let w = routing
                .weights
                .index_select(0, &tokens)
                .gather(1, &slots.unsqueeze(1), false);
            out = out.index_add(0, &tokens, &(y * w).to_kind(out.kind()));
        }
        (out.reshape(shape.as_slice()), routing.logits)
    }

    /// Every tensor of the block in decoder layer `i`, sharing storage: the router, then each
    /// expert's gate, up and down linears (with their quantised storage), under the
    /// checkpoint's names, then the router's and experts' adapters under PEFT's.
    pub fn named_tensors(&self, i: usize) -> Vec<(String, Tensor)> {
        let mut out = self.router.named_tensors(&self.naming.router(i));
        for (e, expert) in self.experts.iter().enumerate() {
            for which in ExpertLinear::ALL {
                let path = self.naming.expert(i, e, which);
                out.extend(expert.linear(which).named_tensors(&path));
            }
        }
        out.extend(self.adapters.named_tensors(i));
        out
    }

    /// The weight named `name` (the router's or an expert linear's, Hugging Face name) with the
    /// adapters merged in, as PEFT's `merge_and_unload` adds `s·B_e·A_e` to the parameter, in
    /// `kind`; `None` when the block of layer `i` has no such weight.
    pub fn merged_weight(&self, i: usize, name: &str, kind: Kind) -> Option<Tensor> {
        let (path, lin) = self
            .linears(i)
            .into_iter()
            .find(|(path, _)| path.weight() == name)?;
        let delta = if path == self.naming.router(i) {
            self.adapters.router.as_ref().map(|ad| ad.delta_weight(0))
        } else {
            let (e, which) = (0..self.experts.len())
                .flat_map(|e| ExpertLinear::ALL.map(|w| (e, w)))
                .find(|&(e, w)| self.naming.expert(i, e, w) == path)?;
            let rows = |d: Tensor, half: i64| {
                let n = d.size()[0] / 2;
                d.narrow(0, half * n, n)
            };
            match which {
                ExpertLinear::Gate => self
                    .adapters
                    .gate_up
                    .as_ref()
                    .map(|ad| rows(ad.delta_weight(e as i64), 0)),
                ExpertLinear::Up => self
                    .adapters
                    .gate_up
                    .as_ref()
                    .map(|ad| rows(ad.delta_weight(e as i64), 1)),
                ExpertLinear::Down => self
                    .adapters
                    .down
                    .as_ref()
                    .map(|ad| ad.delta_weight(e as i64)),
            }
        };
        Some(match delta {
            None => lin.merged_weight(kind),
            Some(d) => tch::no_grad(|| (lin.weight.dense(Kind::Float) + d).to_kind(kind)),
        })
    }

    /// Every linear of the block with its checkpoint path (router first).
    pub fn linears(&self, i: usize) -> Vec<(TensorPath, &Linear)> {
        let mut out = vec![(self.naming.router(i), &self.router)];
        for (e, expert) in self.experts.iter().enumerate() {
            for which in ExpertLinear::ALL {
                out.push((self.naming.expert(i, e, which), expert.linear(which)));
            }
        }
        out
    }
}

/// The sums behind the load-balancing loss, accumulated layer by layer over the real tokens.
pub struct RouterBalance {
    num_experts: i64,
    top_k: i64,
    /// Real tokens' top-k assignments per expert, summed over layers (no gradient).
    assignments: Tensor,
    /// Real tokens' router probabilities per expert, summed over layers.
    probabilities: Tensor,
    /// Real tokens, summed over layers.
    rows: Tensor,
}

impl RouterBalance {
    pub fn new(num_experts: i64, top_k: i64, device: tch::Device) -> Self {
        let zeros = || Tensor::zeros([num_experts], (Kind::Float, device));
        RouterBalance {
            num_experts,
            top_k,
            assignments: zeros(),
            probabilities: zeros(),
            rows: Tensor::zeros([], (Kind::Float, device)),
        }
    }

    /// `(probabilities [T, E] fp32, mask [T] fp32)` of one layer's router logits.
    fn probs_and_mask(logits: &Tensor, mask: Option<&Tensor>) -> (Tensor, Tensor) {
        let probs = logits.softmax(-1, logits.kind()).to_kind(Kind::Float);
        let mask = match mask {
            Some(m) => m.reshape([-1]).ne(0).to_kind(Kind::Float),
            None => Tensor::ones([logits.size()[0]], (Kind::Float, logits.device())),
        };
        (probs, mask)
    }

    /// Adds one sparse layer's router logits (`[T, E]`); `mask` (`[B, S]` or `[T]`, non-zero for
    /// real tokens, each counted once) leaves padding out, as transformers' 0/1 attention mask
    /// does.
    pub fn add_layer(&mut self, logits: &Tensor, mask: Option<&Tensor>) {
        let (probs, mask) = Self::probs_and_mask(logits, mask);
        let (_, chosen) = probs.topk(self.top_k, -1, true, true);
        let counts = Tensor::zeros([self.num_experts], (Kind::Float, logits.device())).scatter_add(
            0,
            &chosen.reshape([-1]),
            &mask.repeat_interleave_self_int(self.top_k, 0, None),
        );
        self.assignments = &self.assignments + counts.detach();
        self.probabilities = &self.probabilities
            + (probs * mask.unsqueeze(-1)).sum_dim_intlist(0, false, Kind::Float);
        self.rows = &self.rows + mask.sum(Kind::Float);
    }

    /// `E · Σ_e f_e · P_e` over the layers added (fp32 scalar).
    pub fn loss(&self) -> Tensor {
        let f = &self.assignments / &self.rows;
        let p = &self.probabilities / &self.rows;
        (f * p).sum(Kind::Float) * self.num_experts as f64
    }

    /// One layer's share of [`RouterBalance::loss`] as a function of its router logits, with the
    /// assignment shares of every layer added so far held fixed: the layers' terms sum to the
    /// loss, and each term's gradient is the loss's gradient through that layer's router.
    pub fn layer_term(&self, logits: &Tensor, mask: Option<&Tensor>) -> Tensor {
        let (probs, mask) = Self::probs_and_mask(logits, mask);
        let p = (probs * mask.unsqueeze(-1)).sum_dim_intlist(0, false, Kind::Float);
        let rows = self.rows.detach();
        let f = &self.assignments / &rows;
        (f * p / rows).sum(Kind::Float) * self.num_experts as f64
    }
}

thread_local! {
    /// The attention mask of the batch [`with_training_mask`] trains on (flattened, fp32).
    static TRAINING_MASK: std::cell::RefCell<Option<Tensor>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (a training step on this thread) with `mask` (`[B·S]`, non-zero = real token, 0 =
/// padding; see the module docs) as its batch's attention mask: the load-balancing loss [`TrainingAux`] adds leaves padding
/// out of its statistics, as transformers' `load_balancing_loss_func` does when the model gets
/// the mask. The previous mask is restored when `f` returns or unwinds.
pub(crate) fn with_training_mask<T>(mask: Tensor, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Tensor>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            TRAINING_MASK.with(|m| *m.borrow_mut() = previous);
        }
    }
    let _restore = Restore(TRAINING_MASK.with(|m| m.borrow_mut().replace(mask)));
    f()
}

/// `router_aux_loss_coef ×` the load-balancing loss of one training micro-batch: the forward pass
/// [`TrainingAux::observe`]s every sparse layer's router logits, then the loss joins the backward
/// pass whole ([`TrainingAux::add_total`], when autograd kept the routers' graph) or layer by layer
/// as each is recomputed ([`TrainingAux::add_layer`]). Over the real tokens of the batch's
/// attention mask when it trains inside [`with_training_mask`], else over every position; a batch
/// without a real token (a rank's label-free filler) adds nothing (transformers would divide by
/// zero).
pub(crate) struct TrainingAux {
    balance: RouterBalance,
    weight: f64,
    /// The batch's attention mask, `[B·S]` fp32.
    mask: Option<Tensor>,
}

impl TrainingAux {
    /// The term of a model of `arch`, when it adds it to its training loss
    /// (`output_router_logits`) and the batch has a real token; `None` otherwise.
    pub(crate) fn new(arch: &ModelArchitecture, device: tch::Device) -> Option<TrainingAux> {
        let weight = arch.router_aux_loss_weight()?;
        let mask = TRAINING_MASK.with(|m| {
            m.borrow()
                .as_ref()
                .map(|m| m.reshape([-1]).ne(0).to_kind(Kind::Float).to_device(device))
        });
        if mask
            .as_ref()
            .is_some_and(|m| m.sum(Kind::Float).double_value(&[]) == 0.0)
        {
            return None;
        }
        let balance = RouterBalance::new(
            arch.num_experts() as i64,
            arch.experts_per_token() as i64,
            device,
        );
        Some(TrainingAux {
            balance,
            weight,
            mask,
        })
    }

    /// Counts a layer's router logits (`None`: a dense layer).
    pub(crate) fn observe(aux: Option<&mut TrainingAux>, logits: Option<Tensor>) {
        if let (Some(aux), Some(logits)) = (aux, logits) {
            aux.balance.add_layer(&logits, aux.mask.as_ref());
        }
    }

    /// `loss` plus the whole weighted load-balancing loss.
    pub(crate) fn add_total(aux: Option<&TrainingAux>, loss: Tensor) -> Tensor {
        match aux {
            Some(aux) => loss + aux.balance.loss() * aux.weight,
            None => loss,
        }
    }

    /// `loss` plus the weighted share of one recomputed layer with router logits `logits`.
    pub(crate) fn add_layer(
        aux: Option<&TrainingAux>,
        loss: Tensor,
        logits: Option<&Tensor>,
    ) -> Tensor {
        match (aux, logits) {
            (Some(aux), Some(logits)) => {
                loss + aux.balance.layer_term(logits, aux.mask.as_ref()) * aux.weight
            }
            _ => loss,
        }
    }
}
