//! Picking an upstream: least-request with the power of two choices. Two upstreams are drawn
//! at random, each with a chance in proportion to its weight, and the one with fewer requests
//! in flight per unit of weight gets the request. Idle, the spread follows the weights; under
//! load a slow upstream, whose requests pile up, is passed over without any upstream's load
//! being compared with every other's (Mitzenmacher; Envoy's and Finagle's default).
//!
//! Written by hand rather than with `tower::balance::p2c`: that balancer has no weights, no
//! way to leave out the upstreams a request already tried (a retry must go elsewhere), and
//! no notion of ejected or unhealthy endpoints short of removing them from discovery.

/// A set of upstreams by index (an origin has at most 64).
pub type Set = u64;

/// Picks from `candidates` (indexes into `weights` / `load`); None if it is empty. `load(i)`
/// is upstream i's requests in flight; `draw(n)` a random number below n.
pub fn pick(
    candidates: Set,
    weight: impl Fn(usize) -> u32,
    load: impl Fn(usize) -> usize,
    mut draw: impl FnMut(u64) -> u64,
) -> Option<usize> {
    let first = weighted(candidates, &weight, &mut draw)?;
    let rest = candidates & !(1 << first);
    let Some(second) = weighted(rest, &weight, &mut draw) else {
        return Some(first);
    };
    // load/weight compared without division: a·wb against b·wa.
    let (a, b) = (load(first) as u64, load(second) as u64);
    let (wa, wb) = (u64::from(weight(first)), u64::from(weight(second)));
    Some(if b * wa < a * wb { second } else { first })
}

/// One member of `set`, drawn with a chance in proportion to its weight.
fn weighted(
    set: Set,
    weight: &impl Fn(usize) -> u32,
    draw: &mut impl FnMut(u64) -> u64,
) -> Option<usize> {
    if set == 0 {
        return None;
    }
    let total: u64 = members(set).map(|i| u64::from(weight(i))).sum();
    let mut r = draw(total);
    for i in members(set) {
        let w = u64::from(weight(i));
        if r < w {
            return Some(i);
        }
        r -= w;
    }
    unreachable!("r < total")
}

/// The indexes in `set`, lowest first.
pub fn members(mut set: Set) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (set != 0).then(|| {
            let i = set.trailing_zeros() as usize;
            set &= set - 1;
            i
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> impl FnMut(u64) -> u64 {
        let mut r = fastrand::Rng::with_seed(7);
        move |n| r.u64(..n)
    }

    #[test]
    fn idle_upstreams_get_shares_in_proportion_to_their_weights() {
        let weights = [1u32, 3, 1];
        let mut got = [0usize; 3];
        let mut draw = rng();
        for _ in 0..50_000 {
            let i = pick(0b111, |i| weights[i], |_| 0, &mut draw).unwrap();
            got[i] += 1;
        }
        // 10k / 30k / 10k expected.
        assert!((9_000..11_000).contains(&got[0]), "{got:?}");
        assert!((28_500..31_500).contains(&got[1]), "{got:?}");
        assert!((9_000..11_000).contains(&got[2]), "{got:?}");
    }

    #[test]
    fn the_less_loaded_of_the_two_drawn_wins() {
        let load = [10usize, 0, 10];
        let mut got = [0usize; 3];
        let mut draw = rng();
        for _ in 0..3_000 {
            got[pick(0b111, |_| 1, |i| load[i], &mut draw).unwrap()] += 1;
        }
        // Upstream 1 loses only when it is not drawn at all: (2/3)(1/2) of the time.
        assert!(got[1] > 1_800, "{got:?}");
    }

    #[test]
    fn only_candidates_are_picked() {
        let mut draw = rng();
        assert_eq!(pick(0, |_| 1, |_| 0, &mut draw), None);
        for _ in 0..100 {
            assert_eq!(pick(0b100, |_| 1, |_| 0, &mut draw), Some(2));
            assert_ne!(pick(0b1011, |_| 1, |_| 0, &mut draw), Some(2));
        }
        assert_eq!(members(0b1010_0001).collect::<Vec<_>>(), [0, 5, 7]);
    }
}
