//! Even partitioning of a flat buffer across ranks, the layout ZeRO stages 1–3 build on.
//!
//! A flat buffer of `numel` elements is padded to `world_size × shard_len` so that
//! [`ProcessGroup::reduce_scatter_sum`](crate::ProcessGroup::reduce_scatter_sum) and
//! [`ProcessGroup::all_gather`](crate::ProcessGroup::all_gather) see equal shards. Rank `r` owns
//! the padded range `r*shard_len..(r+1)*shard_len`, of which [`ShardLayout::owned`] is the part
//! inside the real data (possibly empty for the last ranks of a tiny buffer).
//!
//! The tensor arithmetic on that layout lives here too, once for ZeRO stages 1–2 (the optimiser's
//! shards) and stage 3 (the parameters' shards): a rank's shard of a tensor
//! ([`ShardLayout::owned_copy`], [`ShardLayout::copy_owned_into`]), its slot in a rank's flat
//! all-gather buffer ([`ShardLayout::padded_shard`]), a flat tensor laid out as rank-major rows for
//! a reduce-scatter ([`ShardLayout::write_rank_rows`]) and back ([`ShardLayout::from_rank_rows`]).

use std::ops::Range;

use tch::{TchError, Tensor};

use crate::error::DistError;

/// How a flat buffer of `numel` elements is split over `world_size` ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLayout {
    pub numel: usize,
    pub world_size: usize,
    /// Elements per rank, `ceil(numel / world_size)`.
    pub shard_len: usize,
}

impl ShardLayout {
    pub fn new(numel: usize, world_size: usize) -> Result<Self, DistError> {
        if world_size == 0 {
            return Err(DistError::invalid("shard layout", "world_size is 0"));
        }
        Ok(ShardLayout {
            numel,
            world_size,
            shard_len: numel.div_ceil(world_size),
        })
    }

    /// `world_size × shard_len`: the length of the padded flat buffer.
    pub fn padded_len(&self) -> usize {
        self.shard_len * self.world_size
    }

    /// Padding elements at the end of the flat buffer.
    pub fn padding(&self) -> usize {
        self.padded_len() - self.numel
    }

    /// `rank`'s range in the padded buffer.
    pub fn padded_range(&self, rank: usize) -> Range<usize> {
        rank * self.shard_len..(rank + 1) * self.shard_len
    }

    /// The part of `rank`'s shard that holds real elements (indices into the unpadded buffer).
    pub fn owned(&self, rank: usize) -> Range<usize> {
        let r = self.padded_range(rank);
        r.start.min(self.numel)..r.end.min(self.numel)
    }

    /// `rank`'s real elements of the flattened `full`, as a view detached from autograd.
    fn owned_view(&self, full: &Tensor, rank: usize) -> Tensor {
        let owned = self.owned(rank);
        full.detach()
            .reshape([-1])
            .narrow(0, owned.start as i64, owned.len() as i64)
    }

    /// A new tensor holding `rank`'s elements of the flattened `full` (`numel` elements): the
    /// rank's shard of it, detached from autograd.
    pub fn owned_copy(&self, full: &Tensor, rank: usize) -> Tensor {
        let _guard = tch::no_grad_guard();
        self.owned_view(full, rank).copy()
    }

    /// Copies `rank`'s elements of the flattened `full` into `shard` (1-D, `owned(rank).len()`
    /// elements), in place.
    pub fn copy_owned_into(
        &self,
        shard: &Tensor,
        full: &Tensor,
        rank: usize,
    ) -> Result<(), TchError> {
        let _guard = tch::no_grad_guard();
        shard
            .shallow_clone()
            .f_copy_(&self.owned_view(full, rank))
            .map(drop)
    }

    /// `shard` (a rank's 1-D shard, possibly shorter than [`shard_len`](Self::shard_len) or empty)
    /// padded with zeros to `shard_len`: its slot in that rank's flat buffer of an all-gather.
    pub fn padded_shard(&self, shard: &Tensor) -> Tensor {
        let pad = self.shard_len.saturating_sub(shard.numel());
        if pad == 0 {
            shard.shallow_clone()
        } else {
            Tensor::cat(
                &[
                    shard.shallow_clone(),
                    Tensor::zeros([pad as i64], (shard.kind(), shard.device())),
                ],
                0,
            )
        }
    }

    /// Writes the flattened `full` (`numel` elements) into `rows`, a `[world_size, shard_len]`
    /// view (typically this tensor's columns of a wider rank-major buffer), so that row `r` holds
    /// rank `r`'s range: the input layout of a reduce-scatter. Converts to `rows`' dtype; leaves the
    /// padding after the last element as it was (zero it first).
    pub fn write_rank_rows(&self, full: &Tensor, rows: &Tensor) -> Result<(), TchError> {
        let _guard = tch::no_grad_guard();
        let flat = full.reshape([-1]);
        let (per_rank, numel) = (self.shard_len as i64, self.numel as i64);
        let full_rows = numel / per_rank.max(1);
        if full_rows > 0 {
            rows.narrow(0, 0, full_rows)
                .f_copy_(
                    &flat
                        .narrow(0, 0, full_rows * per_rank)
                        .view([full_rows, per_rank]),
                )
                .map(drop)?;
        }
        let rest = numel - full_rows * per_rank;
        if rest > 0 {
            rows.select(0, full_rows)
                .narrow(0, 0, rest)
                .f_copy_(&flat.narrow(0, full_rows * per_rank, rest))
                .map(drop)?;
        }
        Ok(())
    }

    /// The flat tensor (`numel` elements) held by `rows`, a `[world_size, shard_len]` view in which
    /// row `r` is rank `r`'s range (this tensor's columns of an all-gather's output): the inverse of
    /// [`write_rank_rows`](Self::write_rank_rows).
    pub fn from_rank_rows(&self, rows: &Tensor) -> Tensor {
        rows.reshape([-1]).narrow(0, 0, self.numel as i64)
    }

    /// Returns `flat` (1-D, `numel` elements) padded with zeros to [`padded_len`](Self::padded_len).
    pub fn pad(&self, flat: &Tensor) -> Result<Tensor, DistError> {
        let n = flat.numel();
        if flat.dim() != 1 || n != self.numel {
            return Err(DistError::invalid(
                "shard layout",
                format!(
                    "expected a flat tensor of {} elements, got shape {:?}",
                    self.numel,
                    flat.size()
                ),
            ));
        }
        if self.padding() == 0 {
            return Ok(flat.shallow_clone());
        }
        let zeros = Tensor::zeros([self.padding() as i64], (flat.kind(), flat.device()));
        Ok(Tensor::cat(&[flat, &zeros], 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uneven_split_pads_the_tail() {
        let l = ShardLayout::new(10, 3).unwrap();
        assert_eq!((l.shard_len, l.padded_len(), l.padding()), (4, 12, 2));
        assert_eq!(l.owned(0), 0..4);
        assert_eq!(l.owned(2), 8..10);
        assert_eq!(l.padded_range(2), 8..12);
        let tiny = ShardLayout::new(1, 3).unwrap();
        assert_eq!(tiny.owned(2), 1..1);
        let t = Tensor::arange(10, (tch::Kind::Float, tch::Device::Cpu));
        let p = l.pad(&t).unwrap();
        assert_eq!(p.size(), [12]);
        assert_eq!(p.double_value(&[11]), 0.0);
        assert!(l.pad(&t.view([2, 5])).is_err());
        assert!(ShardLayout::new(3, 0).is_err());
    }

    #[test]
    fn shards_rank_rows_and_gathered_rows_round_trip() {
        let opts = (tch::Kind::Float, tch::Device::Cpu);
        let full = Tensor::arange(10, opts).view([2, 5]);
        let l = ShardLayout::new(10, 3).unwrap();
        let shards: Vec<Tensor> = (0..3).map(|r| l.owned_copy(&full, r)).collect();
        let values = |t: &Tensor| Vec::<f32>::try_from(&t.reshape([-1])).unwrap();
        assert_eq!(values(&shards[2]), vec![8.0, 9.0]);
        // A copy, not a view: changing the source leaves the shard alone.
        let _ = full.shallow_clone().fill_(-1.0);
        assert_eq!(values(&shards[0]), vec![0.0, 1.0, 2.0, 3.0]);
        let refreshed = Tensor::zeros([4], opts);
        l.copy_owned_into(&refreshed, &Tensor::arange(10, opts), 1)
            .unwrap();
        assert_eq!(values(&refreshed), vec![4.0, 5.0, 6.0, 7.0]);
        assert_eq!(
            values(&l.padded_shard(&shards[2])),
            vec![8.0, 9.0, 0.0, 0.0]
        );
        assert_eq!(l.padded_shard(&shards[0]).numel(), 4);
        // Rank-major rows inside a wider buffer (columns 1..5 of 6), then back.
        let buffer = Tensor::zeros([3, 6], opts);
        let src = Tensor::arange(10, opts) + 1.0;
        l.write_rank_rows(&src, &buffer.narrow(1, 1, 4)).unwrap();
        assert_eq!(
            values(&buffer.select(0, 2)),
            vec![0.0, 9.0, 10.0, 0.0, 0.0, 0.0],
            "row 2 holds elements 8..10 and zero padding"
        );
        assert_eq!(
            values(&l.from_rank_rows(&buffer.narrow(1, 1, 4))),
            values(&src)
        );
        let tiny = ShardLayout::new(1, 3).unwrap();
        assert_eq!(tiny.owned_copy(&Tensor::ones([1], opts), 2).numel(), 0);
        assert_eq!(
            values(&tiny.padded_shard(&Tensor::zeros([0], opts))),
            vec![0.0]
        );
    }
}
