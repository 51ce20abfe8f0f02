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
//!
//! Eligible means up, not draining, and not already tried for this client.

/// How a backend is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// In turn.
    #[default]
    RoundRobin,
    /// Fewest active connections, ties in turn.
    LeastConnections,
}

/// Whether a backend takes new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
#[derive(Debug, Clone, Default)]
pub struct Selector {
    strategy: Strategy,
    next: usize,
}

impl Selector {
    /// A selector for `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Selector { strategy, next: 0 }
    }

    /// The strategy.
    pub fn strategy(&self) -> Strategy {
        self.strategy
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
            lc: bool,
            picks in 1usize..20,
        ) {
            let strategy = if lc { Pick::LeastConnections } else { Pick::RoundRobin };
            let mut s = Selector::new(strategy);
            let any_eligible = backends.iter().any(|b| b.eligible());
            for _ in 0..picks {
                match s.pick(&backends) {
                    Some(i) => prop_assert!(backends[i].eligible(), "picked {:?}", backends[i]),
                    None => prop_assert!(!any_eligible),
                }
            }
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
