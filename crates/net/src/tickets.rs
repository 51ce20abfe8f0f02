//! TLS session tickets that every server of a cluster can open.
//!
//! Behind the balancer, a client's next connection usually lands on another
//! server than the one that issued its ticket. With each server's own ticket
//! key (or its own session cache) the ticket is refused there and the
//! handshake runs in full: a certificate signature on the server, a chain and
//! a signature to verify on the client. Keys derived from the cluster secret
//! let any server resume any server's session, and a restarted server resume
//! those it issued before.
//!
//! Resumption in TLS 1.3 here is always `psk_dhe_ke` (rustls offers and
//! accepts nothing else), so a resumed session still runs a fresh key
//! exchange: a ticket key that leaks later does not open recorded traffic.
//! Keys rotate every [`PERIOD`]: a ticket is accepted in the period it was
//! made and the next one, and refused after that.
//!
//! A ticket is `period (u64, big-endian) ‖ nonce (12) ‖ AES-256-GCM(state)`,
//! the period also bound as associated data. The key of a period is
//! HKDF-SHA256 of the secret, salted with [`LABEL`], with the period as info.

use std::fmt;
use std::time::Duration;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Prk, Salt};
use ring::rand::{SecureRandom, SystemRandom};

use crate::clock::SharedClock;

/// How long one ticket key is used to make tickets.
pub const PERIOD: Duration = Duration::from_secs(6 * 60 * 60);

/// Domain separation: the cluster secret also signs session tokens.
const LABEL: &[u8] = b"coffer tls session tickets v1";

const PERIOD_LEN: usize = 8;
const TAG_LEN: usize = 16;

/// The largest state a ticket carries (rustls's session state is a few
/// hundred bytes, more with a client certificate chain).
const MAX_TICKET: usize = 16 * 1024;

/// Makes and opens session tickets under keys derived from a shared secret.
pub struct SharedTickets {
    prk: Prk,
    clock: SharedClock,
    rng: SystemRandom,
}

impl fmt::Debug for SharedTickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedTickets").finish_non_exhaustive()
    }
}

impl SharedTickets {
    /// Tickets under keys derived from `secret`; the period is read from
    /// `clock` (simulated time in a simulation).
    pub fn new(secret: &[u8], clock: SharedClock) -> SharedTickets {
        SharedTickets {
            prk: Salt::new(HKDF_SHA256, LABEL).extract(secret),
            clock,
            rng: SystemRandom::new(),
        }
    }

    fn period(&self) -> u64 {
        self.clock.now().as_secs() / PERIOD.as_secs()
    }

    fn key(&self, period: u64) -> LessSafeKey {
        let info = period.to_be_bytes();
        let info = [info.as_slice()];
        let okm = self
            .prk
            .expand(&info, &AES_256_GCM)
            .expect("an AES-256 key is within HKDF's output limit");
        LessSafeKey::new(UnboundKey::from(okm))
    }
}

impl rustls::server::ProducesTickets for SharedTickets {
    fn enabled(&self) -> bool {
        true
    }

    /// What the client is told; a ticket made late in its period lives
    /// somewhat longer, until the end of the next one.
    fn lifetime(&self) -> u32 {
        u32::try_from(PERIOD.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        if plain.len() > MAX_TICKET {
            return None;
        }
        let period = self.period();
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let aad = period.to_be_bytes();
        let mut out = Vec::with_capacity(PERIOD_LEN + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&aad);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key(period)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[PERIOD_LEN + NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() > MAX_TICKET + PERIOD_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (aad, rest) = ticket.split_first_chunk::<PERIOD_LEN>()?;
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        let period = u64::from_be_bytes(*aad);
        let now = self.period();
        if period != now && period.checked_add(1) != Some(now) {
            return None;
        }
        let mut body = sealed.to_vec();
        let plain = self
            .key(period)
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(*aad),
                &mut body,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::server::ProducesTickets;

    use super::*;
    use crate::clock::ManualClock;

    fn tickets(secret: &[u8], clock: &Arc<ManualClock>) -> SharedTickets {
        SharedTickets::new(secret, clock.clone())
    }

    #[test]
    fn another_server_with_the_secret_opens_a_ticket_and_no_one_else_does() {
        let clock = Arc::new(ManualClock::default());
        let a = tickets(&[1; 32], &clock);
        let b = tickets(&[1; 32], &clock);
        let stranger = tickets(&[2; 32], &clock);
        let ticket = a.encrypt(b"session state").unwrap();
        assert_eq!(b.decrypt(&ticket).as_deref(), Some(&b"session state"[..]));
        assert_eq!(stranger.decrypt(&ticket), None);
        // Two tickets of the same state differ (random nonces).
        assert_ne!(a.encrypt(b"session state").unwrap(), ticket);
    }

    #[test]
    fn an_altered_ticket_is_refused() {
        let clock = Arc::new(ManualClock::default());
        let a = tickets(&[1; 32], &clock);
        let ticket = a.encrypt(b"session state").unwrap();
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 0x40;
            assert_eq!(a.decrypt(&bad), None, "byte {i}");
        }
        assert_eq!(a.decrypt(&ticket[..ticket.len() - 1]), None);
        assert_eq!(a.decrypt(&ticket[..PERIOD_LEN + NONCE_LEN - 1]), None);
        assert_eq!(a.decrypt(&[]), None);
    }

    #[test]
    fn a_ticket_lives_through_the_next_period_and_not_beyond() {
        let clock = Arc::new(ManualClock::default());
        let a = tickets(&[1; 32], &clock);
        let period = PERIOD.as_secs();
        clock.set_ms((10 * period + period - 1) * 1000);
        let ticket = a.encrypt(b"state").unwrap();
        clock.set_ms(11 * period * 1000);
        assert!(a.decrypt(&ticket).is_some(), "in the next period");
        assert!(a.encrypt(b"state").unwrap()[..PERIOD_LEN] != ticket[..PERIOD_LEN]);
        clock.set_ms(12 * period * 1000);
        assert_eq!(a.decrypt(&ticket), None, "two periods on");
        clock.set_ms(9 * period * 1000);
        assert_eq!(a.decrypt(&ticket), None, "from the future");
    }
}
