//! Backend selection: pure and synchronous.
//!
//! The proxy hands [`Selector::pick`] a snapshot of the backends (state and
//! active connections) and the ones already tried for this client; the
//! selector answers with an index. No clocks, no sockets, no locks — which is
//! what lets its properties be checked exhaustively.
//!
//! - **Round-robin** takes the next eligible backend after the last one picked.
//! - **Least-connections** takes an eligible backend with the fewest active
//!   connections; among equals, the first after the last one picked, so ties
//!   rotate instead of always favouring the first backend.
//! - **Power of two choices** draws two eligible backends at random and takes
//!   the less busy (ties in turn): nearly least-connections' balance without
//!   every balancer of a fleet herding onto the same least-busy backend. The
//!   draws come from a small seeded generator, so a seed replays them.
//!
//! Eligible means up, not draining, and not already tried for this client.

use serde::{Deserialize, Serialize};

/// How a backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// In turn.
    #[default]
    RoundRobin,
    /// Fewest active connections, ties in turn.
    LeastConnections,
    /// The less busy of two drawn at random.
    PowerOfTwo,
}

impl Strategy {
    /// The name used in configuration and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastConnections => "least-connections",
            Strategy::PowerOfTwo => "power-of-two",
        }
    }
}

/// Whether a backend takes new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Takes new connections.
    #[default]
    Up,
    /// Takes none (failed its checks).
    Down,
    /// Takes none, while its established connections finish.
    Draining,
}

/// What the selector needs to know of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Candidate {
    /// Its state.
    pub state: State,
    /// Its connections in progress.
    pub active: u32,
    /// Whether this client's connection already failed there.
    pub tried: bool,
}

impl Candidate {
    fn eligible(&self) -> bool {
        self.state == State::Up && !self.tried
    }
}

/// Picks backends by a strategy, remembering where the rotation stands.
#[derive(Debug, Clone)]
pub struct Selector {
    strategy: Strategy,
    next: usize,
    /// Power-of-two draws.
    draws: Draws,
}

/// A small seeded generator (xorshift64*): power-of-two draws and health-check
/// jitter, so that a seed replays both.
#[derive(Debug, Clone)]
pub(crate) struct Draws(u64);

impl Draws {
    pub(crate) fn new(seed: u64) -> Self {
        Draws(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A draw below `n` (n > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() >> 33) as usize % n
    }

    /// A draw in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Default for Selector {
    fn default() -> Self {
        Selector::new(Strategy::default())
    }
}

impl Selector {
    /// A selector for `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Selector::with_seed(strategy, 0x9e37_79b9_7f4a_7c15)
    }

    /// A selector whose random draws (power of two choices) follow `seed`.
    pub fn with_seed(strategy: Strategy, seed: u64) -> Self {
        Selector {
            strategy,
            next: 0,
            draws: Draws::new(seed),
        }
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Changes the strategy (a configuration reload), keeping the rotation.
    pub fn set_strategy(&mut self, strategy: Strategy) {
        self.strategy = strategy;
    }

    /// The index of the backend for the next connection, or `None` when none
    /// is eligible.
    pub fn pick(&mut self, backends: &[Candidate]) -> Option<usize> {
        let n = backends.len();
        // Visit every backend once, starting where the rotation stands.
        let order = (0..n).map(|i| (self.next + i) % n);
        let chosen = match self.strategy {
            Strategy::RoundRobin => order.into_iter().find(|&i| backends[i].eligible()),
            Strategy::LeastConnections => order
                .filter(|&i| backends[i].eligible())
                // min_by_key keeps the first of equal keys: the next in rotation.
                .min_by_key(|&i| backends[i].active),
            Strategy::PowerOfTwo => {
                let eligible: Vec<usize> = order.filter(|&i| backends[i].eligible()).collect();
                match eligible.len() {
                    0 => None,
                    1 => Some(eligible[0]),
                    m => {
                        let a = self.draws.below(m);
                        let b = (a + 1 + self.draws.below(m - 1)) % m;
                        // Equal load: the one first in rotation.
                        let (first, second) = (a.min(b), a.max(b));
                        let (x, y) = (eligible[first], eligible[second]);
                        Some(if backends[y].active < backends[x].active {
                            y
                        } else {
                            x
                        })
                    }
                }
            }
        }?;
        self.next = (chosen + 1) % n;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::{Candidate, Selector, State, Strategy as Pick};
    use proptest::prelude::*;

    fn up(n: usize) -> Vec<Candidate> {
        vec![Candidate::default(); n]
    }

    fn arb_candidate() -> impl Strategy<Value = Candidate> {
        (
            prop_oneof![Just(State::Up), Just(State::Down), Just(State::Draining)],
            0u32..5,
            proptest::bool::weighted(0.2),
        )
            .prop_map(|(state, active, tried)| Candidate {
                state,
                active,
                tried,
            })
    }

    #[test]
    fn nothing_eligible_is_none() {
        let mut s = Selector::new(Pick::RoundRobin);
        assert_eq!(s.pick(&[]), None);
        let all_down = vec![
            Candidate {
                state: State::Down,
                ..Candidate::default()
            };
            3
        ];
        assert_eq!(s.pick(&all_down), None);
    }

    #[test]
    fn least_connections_ties_rotate() {
        let mut s = Selector::new(Pick::LeastConnections);
        let picks: Vec<_> = (0..6).map(|_| s.pick(&up(3)).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    proptest! {
        /// Over k·n picks with n equal healthy backends, each gets exactly k,
        /// in strict rotation.
        #[test]
        fn round_robin_is_exact(n in 1usize..8, rounds in 1usize..20, start in 0usize..8) {
            let mut s = Selector::new(Pick::RoundRobin);
            // Wherever the rotation starts.
            for _ in 0..start { s.pick(&up(n)); }
            let mut counts = vec![0; n];
            let mut previous = None;
            for _ in 0..rounds * n {
                let i = s.pick(&up(n)).unwrap();
                if let Some(p) = previous { prop_assert_eq!(i, (p + 1) % n); }
                previous = Some(i);
                counts[i] += 1;
            }
            prop_assert!(counts.iter().all(|&c| c == rounds), "{:?}", counts);
        }

        /// Least-connections never picks a backend busier than another eligible one.
        #[test]
        fn least_connections_picks_a_least_busy(backends in proptest::collection::vec(arb_candidate(), 0..8), warm in 0usize..8) {
            let mut s = Selector::new(Pick::LeastConnections);
            for _ in 0..warm { s.pick(&backends); }
            if let Some(i) = s.pick(&backends) {
                let min = backends.iter().filter(|b| b.eligible()).map(|b| b.active).min().unwrap();
                prop_assert_eq!(backends[i].active, min);
            }
        }

        /// No strategy ever picks a backend that is down, draining or already
        /// tried, and each picks one whenever one is eligible.
        #[test]
        fn only_eligible_backends_are_picked(
            backends in proptest::collection::vec(arb_candidate(), 0..8),
            which in 0usize..3,
            seed: u64,
            picks in 1usize..20,
        ) {
            let strategy = [Pick::RoundRobin, Pick::LeastConnections, Pick::PowerOfTwo][which];
            let mut s = Selector::with_seed(strategy, seed);
            let any_eligible = backends.iter().any(|b| b.eligible());
            for _ in 0..picks {
                match s.pick(&backends) {
                    Some(i) => prop_assert!(backends[i].eligible(), "picked {:?}", backends[i]),
                    None => prop_assert!(!any_eligible),
                }
            }
        }

        /// Power of two choices never takes the busiest of the eligible when
        /// there are at least two, and with equal load spreads picks over all.
        #[test]
        fn power_of_two_avoids_the_busiest(backends in proptest::collection::vec(arb_candidate(), 0..8), seed: u64) {
            let mut s = Selector::with_seed(Pick::PowerOfTwo, seed);
            let eligible: Vec<usize> = (0..backends.len()).filter(|&i| backends[i].eligible()).collect();
            for _ in 0..20 {
                let pick = s.pick(&backends);
                if eligible.len() >= 2 {
                    let i = pick.unwrap();
                    let busiest = eligible.iter().map(|&j| backends[j].active).max().unwrap();
                    let strictly = eligible.iter().filter(|&&j| backends[j].active == busiest).count() == 1;
                    prop_assert!(!(strictly && backends[i].active == busiest), "picked the one busiest {:?}", backends[i]);
                }
            }
        }

        #[test]
        fn power_of_two_reaches_every_backend(n in 2usize..8, seed: u64) {
            let mut s = Selector::with_seed(Pick::PowerOfTwo, seed);
            let mut counts = vec![0; n];
            for _ in 0..200 * n {
                counts[s.pick(&up(n)).unwrap()] += 1;
            }
            prop_assert!(counts.iter().all(|&c| c > 0), "{:?}", counts);
        }

        /// With some backends out, round-robin still rotates evenly over the rest.
        #[test]
        fn round_robin_is_even_over_eligible(backends in proptest::collection::vec(arb_candidate(), 1..8), rounds in 1usize..10) {
            let eligible: Vec<usize> = (0..backends.len()).filter(|&i| backends[i].eligible()).collect();
            prop_assume!(!eligible.is_empty());
            let mut s = Selector::new(Pick::RoundRobin);
            let mut counts = vec![0; backends.len()];
            for _ in 0..rounds * eligible.len() {
                counts[s.pick(&backends).unwrap()] += 1;
            }
            for &i in &eligible { prop_assert_eq!(counts[i], rounds); }
        }
    }
}
