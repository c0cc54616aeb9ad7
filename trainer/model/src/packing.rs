//! Padding-free packing (`neat_packing`): several examples share one row, each attending only to
//! itself (block-diagonal causal attention) with its own positions (position ids restarting at 0
//! per example), so a packed row computes exactly what the examples compute on their own rows.
//!
//! A row's examples are told apart by their position ids alone: an example starts where its
//! position id is 0. The keys a query may see are those of its own example at or before it. On
//! the CPU and on CUDA alike (libtorch's variable-length flash kernels are not reachable: tch 0.26
//! binds no `_flash_attention_forward` with cumulative sequence lengths) this is an additive
//! `[B, 1, S, S]` mask (0 or −∞, compute dtype, built once and shared by every layer) given to
//! scaled-dot-product attention, which takes it with its flash kernel on the CPU and its
//! memory-efficient kernel on CUDA (the CUDA flash kernel takes no mask); no `[B, H, S, S]`
//! scores are materialised either way.

use tch::{Device, Kind, Tensor};

use crate::llama::{Llama, RopeTables};

/// Which keys each query may see in rows of examples told apart by `position_ids` (`[B, S]`,
/// restarting at 0 per example): `[B, 1, S, S]` bool, causal within an example, nothing across.
pub fn segment_mask(position_ids: &Tensor) -> Tensor {
    let s = position_ids.size()[1];
    let segment = position_ids
        .eq(0)
        .to_kind(Kind::Int64)
        .cumsum(1, Kind::Int64);
    let same = segment.unsqueeze(2).eq_tensor(&segment.unsqueeze(1));
    let causal = Tensor::ones([s, s], (Kind::Bool, position_ids.device())).tril(0);
    same.logical_and(&causal).unsqueeze(1)
}

impl Llama {
    /// The cos/sin tables of rows whose positions are `position_ids` (`[B, S]`), `[B, 1, S, D]`,
    /// with the examples' [`segment_mask`].
    pub(crate) fn rope_packed(
        &self,
        position_ids: &Tensor,
        kind: Kind,
        device: Device,
    ) -> RopeTables {
        let positions = position_ids.to_device(device);
        let end = positions.max().int64_value(&[]) + 1;
        let table = |(cos, sin): (Tensor, Tensor)| (cos.unsqueeze(1), sin.unsqueeze(1));
        let segments = segment_mask(&positions);
        let bias = Tensor::zeros(segments.size(), (kind, device))
            .masked_fill(&segments.logical_not(), f64::NEG_INFINITY);
        RopeTables {
            global: table(self.rotary.cos_sin(&positions, end, kind)),
            local: self
                .local_rotary
                .as_ref()
                .map(|r| table(r.cos_sin(&positions, end, kind))),
            segments: Some(segments),
            segment_bias: Some(bias),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_is_causal_within_each_example_only() {
        // One row: an example of 3 tokens, then one of 2.
        let pos = Tensor::from_slice(&[0i64, 1, 2, 0, 1]).view([1, 5]);
        let m = segment_mask(&pos).view([5, 5]);
        let got: Vec<Vec<bool>> = (0..5)
            .map(|q| (0..5).map(|k| m.int64_value(&[q, k]) != 0).collect())
            .collect();
        let want = |q: usize, k: usize| k <= q && (q < 3) == (k < 3);
        for (q, row) in got.iter().enumerate() {
            for (k, &v) in row.iter().enumerate() {
                assert_eq!(v, want(q, k), "query {q}, key {k}");
            }
        }
    }
}
