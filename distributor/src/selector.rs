//! [`WeightedSelector`]: the routing algorithm. It decides which analyzer gets the next packet
//! so that, over time, every analyzer receives a share of *log messages* (not packets)
//! proportional to its weight.
//!
//! # Rule
//!
//! Let `p_i` be analyzer `i`'s normalised weight (`Σ p_i = 1`), `s_i` the messages assigned to it
//! since the epoch began and `T = Σ s_i`. For a packet of `n` messages the selector picks
//!
//! ```text
//! j = argmax_i ( p_i·(T + n) − s_i )        (ties: the lowest index)
//! ```
//!
//! and then `s_j += n`, `T += n`. This is smooth weighted round robin generalised to weighted
//! items: it sends the packet to the analyzer that would be furthest below its target *after*
//! the packet is counted. It is deterministic, O(k) per packet for k analyzers, and allocates
//! nothing.
//!
//! # Bound
//!
//! Write `e_i = s_i − p_i·T` for analyzer `i`'s excess (positive: it got more than its share).
//! Let `n_max` be the largest packet of the epoch. Then at every moment
//!
//! ```text
//! −(k−1)·n_max  <  e_i  <  n_max
//! ```
//!
//! *Proof.* Initially every `e_i = 0`. Consider one packet of `n ≤ n_max` messages and put
//! `v_i = p_i·(T+n) − s_i`. Then `Σ v_i = (T+n) − T = n > 0`, so the chosen maximum satisfies
//! `v_j ≥ n/k > 0`. The chosen analyzer's new excess is `e_j' = s_j + n − p_j·(T+n) = n − v_j
//! ≤ n − n/k < n ≤ n_max`. Every other analyzer's excess falls: `e_i' = e_i − p_i·n ≤ e_i`. So by
//! induction `e_i < n_max` for all `i` at all times. Finally `Σ e_i = Σ s_i − T = 0`, hence
//! `e_i = −Σ_{m≠i} e_m > −(k−1)·n_max`. ∎
//!
//! So the cumulative error of any analyzer is a small multiple of the largest packet and does not
//! grow with the number of packets; as a share of `T` it vanishes like `1/T` (random choice would
//! grow like `√T`). The property test in this module checks the bound with extreme weight ratios.
//!
//! # Epochs
//!
//! Changing the analyzers or their weights starts a new *epoch*: `s_i` and `T` restart at 0, so
//! shares follow the new weights from then on and nobody is "owed" a burst (a newcomer does not
//! receive everything until it catches up with the all-time counts).
//!
//! # At-least-once hooks
//!
//! [`choose`](WeightedSelector::choose) and [`assign`](WeightedSelector::assign) are separate so a
//! caller can pick first and count only once a delivery is accepted, `exclude` skips analyzers
//! that just failed a delivery, and [`revoke`](WeightedSelector::revoke) takes back an assignment
//! that was never acknowledged (so shares count only delivered messages). Exclusion and
//! revocation step outside the proof above; the excess stays bounded by the packets excluded or
//! revoked, and the rule steers back towards the targets afterwards.

/// Deterministic weighted choice among `k` analyzers by message count; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct WeightedSelector {
    /// Normalised weights `p_i`, summing to 1.
    shares: Vec<f64>,
    /// Messages assigned to each analyzer in this epoch (`s_i`).
    assigned: Vec<u64>,
    /// Messages assigned in this epoch (`T`).
    total: u64,
}

impl WeightedSelector {
    /// A selector with no analyzers: [`choose`](Self::choose) returns `None` until
    /// [`set_weights`](Self::set_weights) is called with at least one weight.
    pub fn new() -> Self {
        WeightedSelector::default()
    }

    /// Replaces the analyzers' weights (index `i` is the caller's analyzer `i`) and starts a new
    /// epoch. Weights are relative; each must be finite and > 0 (the control-message validation
    /// guarantees it), otherwise this panics, because a zero or NaN weight would break the bound.
    pub fn set_weights(&mut self, weights: &[f64]) {
        assert!(
            weights.iter().all(|w| w.is_finite() && *w > 0.0),
            "weights must be finite and > 0: {weights:?}"
        );
        let sum: f64 = weights.iter().sum();
        self.shares.clear();
        self.shares.extend(weights.iter().map(|w| w / sum));
        self.assigned.clear();
        self.assigned.resize(weights.len(), 0);
        self.total = 0;
    }

    /// Starts a new epoch with the same weights.
    pub fn reset_epoch(&mut self) {
        self.assigned.iter_mut().for_each(|s| *s = 0);
        self.total = 0;
    }

    /// Number of analyzers.
    pub fn len(&self) -> usize {
        self.shares.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shares.is_empty()
    }

    /// Target share of analyzer `i` (its weight over the sum of weights).
    pub fn target_share(&self, i: usize) -> f64 {
        self.shares[i]
    }

    /// Messages assigned to analyzer `i` in this epoch.
    pub fn assigned(&self, i: usize) -> u64 {
        self.assigned[i]
    }

    /// Messages assigned in this epoch.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Picks the analyzer for a packet of `n` messages, skipping the indices in `exclude`.
    /// Does not count the packet: call [`assign`](Self::assign) with the result.
    /// `None` when no analyzer is left.
    #[inline]
    pub fn choose(&self, n: u64, exclude: &[usize]) -> Option<usize> {
        let horizon = (self.total + n) as f64;
        let mut best: Option<(usize, f64)> = None;
        for (i, (&p, &s)) in self.shares.iter().zip(&self.assigned).enumerate() {
            if exclude.contains(&i) {
                continue;
            }
            let deficit = p * horizon - s as f64;
            if best.is_none_or(|(_, b)| deficit > b) {
                best = Some((i, deficit));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Counts `n` messages as delivered to analyzer `i`.
    #[inline]
    pub fn assign(&mut self, i: usize, n: u64) {
        self.assigned[i] += n;
        self.total += n;
    }

    /// Takes back `n` messages assigned to analyzer `i` (a delivery that failed). Saturates at
    /// zero, so revoking across an epoch change cannot underflow.
    pub fn revoke(&mut self, i: usize, n: u64) {
        let n = n.min(self.assigned[i]);
        self.assigned[i] -= n;
        self.total -= n;
    }

    /// [`choose`](Self::choose) then [`assign`](Self::assign), for at-most-once routing.
    #[inline]
    pub fn pick(&mut self, n: u64) -> Option<usize> {
        let i = self.choose(n, &[])?;
        self.assign(i, n);
        Some(i)
    }

    /// Excess of analyzer `i` in messages: `s_i − p_i·T` (see the module docs).
    pub fn excess(&self, i: usize) -> f64 {
        self.assigned[i] as f64 - self.shares[i] * self.total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_selector_chooses_nothing() {
        let mut s = WeightedSelector::new();
        assert_eq!(s.pick(1), None);
        s.set_weights(&[1.0]);
        assert_eq!(s.pick(5), Some(0));
        assert_eq!(s.choose(1, &[0]), None);
    }

    #[test]
    fn equal_weights_single_messages_round_robin() {
        let mut s = WeightedSelector::new();
        s.set_weights(&[1.0, 1.0, 1.0]);
        let picks: Vec<_> = (0..6).map(|_| s.pick(1).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn balances_messages_not_packets() {
        // Analyzer 0 gets one packet of 100; analyzer 1 must then get 100 single messages.
        let mut s = WeightedSelector::new();
        s.set_weights(&[1.0, 1.0]);
        assert_eq!(s.pick(100), Some(0));
        for _ in 0..99 {
            assert_eq!(s.pick(1), Some(1));
        }
        assert_eq!(s.assigned(0), 100);
        assert_eq!(s.assigned(1), 99);
    }

    #[test]
    fn weights_half_thirty_twenty_are_exact_over_a_cycle() {
        let mut s = WeightedSelector::new();
        s.set_weights(&[0.5, 0.3, 0.2]);
        for _ in 0..1000 {
            s.pick(1);
        }
        assert_eq!(
            (s.assigned(0), s.assigned(1), s.assigned(2)),
            (500, 300, 200)
        );
    }

    #[test]
    fn new_epoch_owes_nothing_to_a_newcomer() {
        let mut s = WeightedSelector::new();
        s.set_weights(&[1.0]);
        for _ in 0..1000 {
            s.pick(1);
        }
        s.set_weights(&[1.0, 1.0]);
        let picks: Vec<_> = (0..4).map(|_| s.pick(1).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 0, 1]);
    }

    #[test]
    fn exclude_and_revoke() {
        let mut s = WeightedSelector::new();
        s.set_weights(&[1.0, 1.0]);
        assert_eq!(s.choose(10, &[]), Some(0));
        assert_eq!(s.choose(10, &[0]), Some(1));
        s.assign(0, 10);
        s.revoke(0, 10);
        assert_eq!((s.assigned(0), s.total()), (0, 0));
        s.revoke(1, 5); // never assigned: saturates
        assert_eq!(s.total(), 0);
    }

    #[test]
    #[should_panic(expected = "finite and > 0")]
    fn zero_weight_is_refused() {
        WeightedSelector::new().set_weights(&[1.0, 0.0]);
    }

    fn weight() -> impl Strategy<Value = f64> {
        prop_oneof![
            Just(0.001),
            Just(1000.0),
            Just(1.0),
            0.001f64..1000.0,
            (-3.0f64..3.0).prop_map(|e| 10f64.powf(e)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The bound of the module docs, for random weights (ratios up to 10⁶) and packets of
        /// 1–1000 messages, checked after every packet.
        #[test]
        fn excess_stays_within_the_bound(
            weights in prop::collection::vec(weight(), 1..8),
            packets in prop::collection::vec(1u64..=1000, 1..2000),
        ) {
            let mut s = WeightedSelector::new();
            s.set_weights(&weights);
            let k = weights.len() as f64;
            let mut n_max = 0u64;
            for &n in &packets {
                n_max = n_max.max(n);
                s.pick(n).unwrap();
                // Float rounding of p_i·T: allow a relative 1e-9 of T.
                let slack = 1e-9 * s.total() as f64 + 1e-9;
                for i in 0..s.len() {
                    let e = s.excess(i);
                    prop_assert!(e < n_max as f64 + slack, "excess {e} of {i} ≥ n_max {n_max}");
                    prop_assert!(
                        e > -(k - 1.0) * n_max as f64 - slack,
                        "excess {e} of {i} ≤ −(k−1)·n_max, k={k}, n_max={n_max}"
                    );
                }
            }
            prop_assert_eq!(s.total(), packets.iter().sum::<u64>());
        }

        /// Same bound across an epoch change: it restarts from zero with the new weights.
        #[test]
        fn bound_holds_after_an_epoch_change(
            before in prop::collection::vec(weight(), 1..5),
            after in prop::collection::vec(weight(), 1..5),
            packets in prop::collection::vec(1u64..=1000, 1..500),
        ) {
            let mut s = WeightedSelector::new();
            s.set_weights(&before);
            for &n in &packets { s.pick(n); }
            s.set_weights(&after);
            let k = after.len() as f64;
            let mut n_max = 0u64;
            for &n in &packets {
                n_max = n_max.max(n);
                s.pick(n);
                let slack = 1e-9 * s.total() as f64 + 1e-9;
                for i in 0..s.len() {
                    let e = s.excess(i);
                    prop_assert!(e < n_max as f64 + slack);
                    prop_assert!(e > -(k - 1.0) * n_max as f64 - slack);
                }
            }
        }
    }
}
