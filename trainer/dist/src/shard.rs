//! Even partitioning of a flat buffer across ranks, the layout ZeRO stages 1–3 build on.
//!
//! A flat buffer of `numel` elements is padded to `world_size × shard_len` so that
//! [`ProcessGroup::reduce_scatter_sum`](crate::ProcessGroup::reduce_scatter_sum) and
//! [`ProcessGroup::all_gather`](crate::ProcessGroup::all_gather) see equal shards. Rank `r` owns
//! the padded range `r*shard_len..(r+1)*shard_len`, of which [`ShardLayout::owned`] is the part
//! inside the real data (possibly empty for the last ranks of a tiny buffer).

use std::ops::Range;

use tch::Tensor;

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
}
