//! How many decoder layers to recompute under `gradient_checkpointing: auto`: the fewest whose
//! predicted peak fits. A pure search over a fit test, shared by the planner (GPU memory with its
//! headroom) and `lf-trainer` (`memory_budget_mib`).
//!
//! The first `r` layers are recomputed and the other `L − r` keep their saved tensors. The peak
//! falls as `r` grows from 0 to `L − 1` (each recomputed layer keeps only its input instead of
//! its saved tensors). `r = L` is not below `r = L − 1` in every phase: with one layer kept, that
//! layer's saved tensors stand in for the one-layer working set a recomputation needs, so the
//! backward phase is equal, and only the loss phase (which runs while the kept layer's tensors
//! are alive) is lower with `r = L`. So the search is a bisection over `0 … L − 1` and a last
//! try of `L`.

/// The fewest recomputed layers (of `layers`) for which `fits(r)` holds, assuming `fits` is
/// monotone on `0 … layers − 1` (see the module doc); `None` when no count fits.
pub fn fewest_recomputed(layers: u64, fits: impl Fn(u64) -> bool) -> Option<u64> {
    if layers == 0 {
        return fits(0).then_some(0);
    }
    let last_partial = layers - 1;
    if !fits(last_partial) {
        return fits(layers).then_some(layers);
    }
    // Invariant: fits(hi); lo is the smallest count not yet excluded.
    let (mut lo, mut hi) = (0, last_partial);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Peak of a toy model: `r` checkpoints of 1, `L − r` kept layers of 4, and a working set of
    /// 4 only when no layer is kept; the loss phase adds 1 to the persistent part.
    fn peak(layers: u64, r: u64) -> u64 {
        let kept = layers - r;
        let persistent = r + 4 * kept;
        let working = if kept == 0 { 4 } else { 0 };
        (persistent + working).max(persistent + 1)
    }

    #[test]
    fn the_fewest_that_fit_at_every_boundary() {
        let layers = 32;
        // Every budget from "nothing fits" to "everything kept" gives the smallest fitting count.
        for budget in 0..=(4 * layers + 2) {
            let fits = |r: u64| peak(layers, r) <= budget;
            let expected = (0..=layers).find(|&r| fits(r));
            assert_eq!(fewest_recomputed(layers, fits), expected, "budget {budget}");
        }
    }

    #[test]
    fn recomputing_everything_is_the_last_resort() {
        // Only r = L fits (a loss phase that is lower with every layer recomputed).
        assert_eq!(fewest_recomputed(8, |r| r == 8), Some(8));
        assert_eq!(fewest_recomputed(8, |_| false), None);
        assert_eq!(fewest_recomputed(8, |_| true), Some(0));
        assert_eq!(fewest_recomputed(0, |_| true), Some(0));
    }
}
