//! Who a connection is: login secrets, session tokens, and login rate limits.
//!
//! - A login secret (already a SHA-256, computed by the client) is stored as
//!   bcrypt of its hex form. An unknown user is checked against a dummy hash
//!   of the same cost, so "no such user" and "wrong password" take the same time.
//! - A session token is `v1.<claims>.<tag>`: base64url JSON claims (session,
//!   user, expiry) and an HMAC-SHA256 tag under the cluster secret, so any node
//!   can check one; the sessions table decides whether it was revoked.
//! - Failed logins are counted per user and per client address in fixed
//!   windows; past the limit, logins answer `rate_limited` without touching
//!   bcrypt.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coffer_proto::ErrorCode;
use coffer_proto::types::{LoginSecret, Token};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::error::{Error, Result, unauthorized};

/// Longest token accepted; anything longer is not one of ours.
const MAX_TOKEN_LEN: usize = 1024;

/// The key that signs session tokens.
pub(crate) struct TokenKey(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

/// Why the token key could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The file holds too little secret.
    #[error("{path}: a cluster secret needs at least 32 bytes, this one has {len}")]
    TooShort {
        /// The file.
        path: std::path::PathBuf,
        /// Its length.
        len: usize,
    },
}

impl TokenKey {
    /// Reads the shared cluster secret (at least 32 bytes).
    pub(crate) fn load(path: &Path) -> Result<TokenKey, SecretError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| SecretError::Io {
            path: path.to_owned(),
            source,
        })?);
        if bytes.len() < 32 {
            return Err(SecretError::TooShort {
                path: path.to_owned(),
                len: bytes.len(),
            });
        }
        Ok(TokenKey(bytes))
    }

    /// Reads `path`, or creates it (mode 0600) with 32 bytes from `fresh`.
    pub(crate) fn load_or_create(path: &Path, fresh: [u8; 32]) -> Result<TokenKey, SecretError> {
        if path.exists() {
            return Self::load(path);
        }
        let io = |source| SecretError::Io {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io)?;
        file.write_all(&fresh).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(TokenKey(Zeroizing::new(fresh.to_vec())))
    }

    /// TLS session tickets under keys derived from this secret, so that any
    /// server of the cluster resumes a session another one began.
    pub(crate) fn session_tickets(
        &self,
        clock: coffer_net::SharedClock,
    ) -> coffer_net::tickets::SharedTickets {
        coffer_net::tickets::SharedTickets::new(&self.0, clock)
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }
}

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    /// The session.
    pub(crate) sid: String,
    /// Its user.
    pub(crate) usr: String,
    /// Expiry, Unix milliseconds.
    pub(crate) exp: u64,
}

fn signed_part(claims_b64: &str) -> Vec<u8> {
    [b"coffer-token-v1.".as_slice(), claims_b64.as_bytes()].concat()
}

/// Issues a token for `claims`.
pub(crate) fn issue(key: &TokenKey, claims: &Claims) -> Token {
    let claims_b64 = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let mut mac = key.mac();
    mac.update(&signed_part(&claims_b64));
    let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    Token(format!("v1.{claims_b64}.{tag}"))
}

/// Checks a token's signature and expiry. Every failure reads the same to the
/// client: `unauthorized`.
pub(crate) fn verify(key: &TokenKey, token: &Token, now_ms: u64) -> Result<Claims> {
    let invalid = || unauthorized("invalid session token");
    let text = token.expose();
    if text.len() > MAX_TOKEN_LEN {
        return Err(invalid());
    }
    let mut parts = text.split('.');
    let (Some("v1"), Some(claims_b64), Some(tag_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid());
    };
    let tag = URL_SAFE_NO_PAD.decode(tag_b64).map_err(|_| invalid())?;
    let mut mac = key.mac();
    mac.update(&signed_part(claims_b64));
    mac.verify_slice(&tag).map_err(|_| invalid())?;
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(claims_b64)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(invalid)?;
    if claims.exp <= now_ms {
        return Err(unauthorized("the session has expired; log in again"));
    }
    Ok(claims)
}

/// bcrypt of a login secret, with a caller-chosen salt (from the server's
/// seeded generator, so simulated runs stay reproducible).
pub(crate) fn hash_login(secret: &LoginSecret, cost: u32, salt: [u8; 16]) -> Result<String> {
    let hex = Zeroizing::new(secret.0.to_hex());
    bcrypt::hash_with_salt(hex.as_bytes(), cost, salt)
        .map(|parts| parts.to_string())
        .map_err(|e| Error::Io(std::io::Error::other(format!("bcrypt: {e}"))))
}

/// A bcrypt hash that no secret matches, at `cost`: random salt and random
/// hash bytes in bcrypt's format. Checking a secret against it runs bcrypt in
/// full, exactly as long as checking a wrong password, which is what an
/// unknown user's login is checked against. Made without running bcrypt, so a
/// start does not spend one (a quarter of a second at cost 12).
pub(crate) fn unmatchable_hash(cost: u32, salt: [u8; 16], hash: [u8; 23]) -> String {
    format!(
        "$2b${cost:02}${}{}",
        BCRYPT64.encode(salt),
        BCRYPT64.encode(hash)
    )
}

/// bcrypt's base64: its own alphabet, no padding.
const BCRYPT64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::BCRYPT,
    base64::engine::general_purpose::NO_PAD,
);

/// Whether `secret` matches `hash`. A malformed hash never matches.
pub(crate) fn check_login(secret: &LoginSecret, hash: &str) -> bool {
    let hex = Zeroizing::new(secret.0.to_hex());
    bcrypt::verify(hex.as_bytes(), hash).unwrap_or(false)
}

/// Limits on failed logins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoginLimits {
    /// Failed attempts per user per window.
    pub(crate) per_user: u32,
    /// Failed attempts per client address per window.
    pub(crate) per_address: u32,
    /// The window.
    pub(crate) window: Duration,
}

/// Counts failed logins in fixed windows.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limits: LoginLimits,
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

/// Entries kept before stale windows are swept.
const SWEEP_ABOVE: usize = 100_000;

impl RateLimiter {
    pub(crate) fn new(limits: LoginLimits) -> Self {
        RateLimiter {
            limits,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn keys(username: &str, addr: IpAddr) -> [(String, bool); 2] {
        [
            (format!("u:{username}"), true),
            (format!("a:{addr}"), false),
        ]
    }

    /// Refuses when the user or the address has used up its failures.
    pub(crate) fn check(&self, username: &str, addr: IpAddr) -> Result<()> {
        let now = Instant::now();
        let windows = self.windows.lock().expect("limiter lock");
        for (key, is_user) in Self::keys(username, addr) {
            let limit = if is_user {
                self.limits.per_user
            } else {
                self.limits.per_address
            };
            if let Some(&(start, count)) = windows.get(&key)
                && now.duration_since(start) < self.limits.window
                && count >= limit
            {
                let wait = self.limits.window - now.duration_since(start);
                let who = if is_user {
                    format!("for {username}")
                } else {
                    format!("from {addr}")
                };
                return Err(Error::refused(
                    ErrorCode::RateLimited,
                    format!(
                        "too many failed logins {who}; try again in {} s",
                        wait.as_secs() + 1
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Counts a failure against the user and the address.
    pub(crate) fn failed(&self, username: &str, addr: IpAddr) {
        let now = Instant::now();
        let mut windows = self.windows.lock().expect("limiter lock");
        if windows.len() > SWEEP_ABOVE {
            let window = self.limits.window;
            windows.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        for (key, _) in Self::keys(username, addr) {
            let slot = windows.entry(key).or_insert((now, 0));
            if now.duration_since(slot.0) >= self.limits.window {
                *slot = (now, 0);
            }
            slot.1 += 1;
        }
    }

    /// A success clears the user's failures (not the address's).
    pub(crate) fn succeeded(&self, username: &str) {
        self.windows
            .lock()
            .expect("limiter lock")
            .remove(&format!("u:{username}"));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unknown_users_hash_is_checked_in_full_and_never_matches() {
        let secret = LoginSecret(coffer_proto::types::Sha256([7; 32]));
        let real = hash_login(&secret, 4, [1; 16]).unwrap();
        let parts: bcrypt::HashParts = real.parse().unwrap();
        // The same salt and hash bytes make the same string as bcrypt's.
        let hash_bytes = {
            let tail = &real[29..];
            let mut out = [0u8; 23];
            BCRYPT64.decode_slice(tail, &mut out).unwrap();
            out
        };
        assert_eq!(
            unmatchable_hash(4, parts.get_salt_raw(), hash_bytes),
            real,
            "the format is bcrypt's own"
        );
        for cost in [4, 6] {
            let hash = unmatchable_hash(cost, [9; 16], [3; 23]);
            // Well formed: the check runs bcrypt rather than failing at parsing.
            let checked = bcrypt::verify(secret.0.to_hex(), &hash).map_err(|e| e.to_string());
            assert_eq!(checked, Ok(false));
        }
        let hash = unmatchable_hash(31, [9; 16], [3; 23]);
        assert_eq!(hash.parse::<bcrypt::HashParts>().unwrap().get_cost(), 31);
    }

    use super::*;
    use coffer_proto::types::Sha256 as Digest32;

    fn key() -> TokenKey {
        TokenKey(Zeroizing::new(vec![7; 32]))
    }

    #[test]
    fn tokens_verify_and_refuse_tampering_expiry_and_other_keys() {
        let claims = Claims {
            sid: "s1".into(),
            usr: "alice".into(),
            exp: 2_000,
        };
        let token = issue(&key(), &claims);
        assert_eq!(verify(&key(), &token, 1_000).unwrap(), claims);
        assert!(verify(&key(), &token, 2_000).is_err(), "expired at exp");
        let other = TokenKey(Zeroizing::new(vec![8; 32]));
        assert!(verify(&other, &token, 1_000).is_err());
        // Forge the claims, keep the tag.
        let forged_claims = URL_SAFE_NO_PAD.encode(br#"{"sid":"s1","usr":"admin","exp":2000}"#);
        let tag = token.expose().rsplit('.').next().unwrap();
        let forged = Token(format!("v1.{forged_claims}.{tag}"));
        assert!(verify(&key(), &forged, 1_000).is_err());
        for junk in ["", "v1", "v1..", "v2.a.b", "v1.a.b.c", &"x".repeat(5000)] {
            assert!(
                verify(&key(), &Token(junk.into()), 1_000).is_err(),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn login_hashes_check_only_their_secret() {
        let secret = LoginSecret(Digest32([1; 32]));
        let hash = hash_login(&secret, 4, [9; 16]).unwrap();
        assert!(check_login(&secret, &hash));
        assert!(!check_login(&LoginSecret(Digest32([2; 32])), &hash));
        assert!(!check_login(&secret, "not a bcrypt hash"));
    }

    #[tokio::test(start_paused = true)]
    async fn limits_engage_per_user_and_per_address_and_expire() {
        let limiter = RateLimiter::new(LoginLimits {
            per_user: 3,
            per_address: 5,
            window: Duration::from_secs(60),
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            limiter.check("alice", a).unwrap();
            limiter.failed("alice", a);
        }
        let err = limiter.check("alice", b).unwrap_err();
        assert!(matches!(
            err,
            Error::Refused {
                code: ErrorCode::RateLimited,
                ..
            }
        ));
        // Other users from the same address still get in until the address limit.
        limiter.check("bob", a).unwrap();
        limiter.failed("bob", a);
        limiter.failed("bob", a);
        assert!(limiter.check("carol", a).is_err(), "address limit");
        assert!(limiter.check("carol", b).is_ok());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(limiter.check("alice", a).is_ok(), "the window passed");
    }
}
