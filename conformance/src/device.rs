//! A user's device as the suite drives it: the real `coffer` binary with a
//! home directory of its own, run once per command the way a user or a
//! script would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::process::bin_dir;

/// Longest a single command may take before the suite calls it hung.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(120);

/// How a command failed: its `error: <code>: <what>` line, split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CommandError {
    /// The error code (`forbidden`, `unauthorized`, …), or `crashed` /
    /// `hung` when the binary gave no such line.
    pub code: String,
    /// The rest of the line.
    pub message: String,
}

/// One device of one user.
#[derive(Debug, Clone)]
pub struct Device {
    /// The account's name.
    pub user: String,
    /// The device's name.
    pub name: String,
    password: String,
    home: PathBuf,
    server: SocketAddr,
    ca: PathBuf,
}

impl Device {
    /// A device of `user` named `name` with its home under `root`, talking to
    /// `server` and trusting `ca`. Nothing runs until a command does.
    pub fn new(root: &Path, user: &str, name: &str, server: SocketAddr, ca: &Path) -> Device {
        Device {
            user: user.into(),
            name: name.into(),
            password: format!("{user}'s passphrase, long enough"),
            home: root.join(format!("{user}-{name}")),
            server,
            ca: ca.to_owned(),
        }
    }

    /// The same device (the same home, so the same session and keys)
    /// talking to `server` instead: one node of the cluster directly, say.
    pub fn at(&self, server: SocketAddr) -> Device {
        Device {
            server,
            ..self.clone()
        }
    }

    /// The address it talks to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The same device typing another password.
    pub fn with_password(mut self, password: &str) -> Device {
        self.password = password.into();
        self
    }

    /// Runs `coffer --json ARGS` and returns its parsed stdout, or the error
    /// line it printed.
    pub async fn json(&self, args: &[&str]) -> Result<serde_json::Value, CommandError> {
        let out = self.run(args).await?;
        if out.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&out).map_err(|e| CommandError {
            code: "bad-output".into(),
            message: format!("{e}: {out}"),
        })
    }

    /// Runs `coffer --json ARGS`: stdout on success, the error line otherwise.
    pub async fn run(&self, args: &[&str]) -> Result<String, CommandError> {
        let child = self.command(args)?.spawn().map_err(|e| CommandError {
            code: "spawn".into(),
            message: e.to_string(),
        })?;
        let out = match tokio::time::timeout(COMMAND_DEADLINE, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return Err(CommandError {
                    code: "spawn".into(),
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(CommandError {
                    code: "hung".into(),
                    message: format!("coffer {} took over {COMMAND_DEADLINE:?}", args.join(" ")),
                });
            }
        };
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(parse_error(&stderr).unwrap_or_else(|| CommandError {
            code: "crashed".into(),
            message: format!("{}: {}", out.status, stderr.trim()),
        }))
    }

    /// The command line for `coffer --json ARGS` on this device (killed when
    /// dropped): always the binary just built, never one found elsewhere.
    pub fn command(&self, args: &[&str]) -> Result<tokio::process::Command, CommandError> {
        let bin = bin_dir().map_err(|e| CommandError {
            code: "spawn".into(),
            message: e.to_string(),
        })?;
        let mut cmd = tokio::process::Command::new(bin.join("coffer"));
        cmd.arg("--json")
            .args(args)
            .env("COFFER_HOME", &self.home)
            .env("COFFER_SERVER", self.server.to_string())
            .env("COFFER_CA", &self.ca)
            .env("COFFER_PASSWORD", &self.password)
            .env_remove("COFFER_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(cmd)
    }

    /// `folder create LABEL [--path DIR]`: the new folder's id.
    pub async fn create_folder(
        &self,
        label: &str,
        path: Option<&Path>,
    ) -> Result<String, CommandError> {
        let path = path.map(|p| p.display().to_string());
        let mut args = vec!["folder", "create", label];
        if let Some(p) = &path {
            args.extend(["--path", p]);
        }
        let out = self.json(&args).await?;
        out["folder_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| CommandError {
                code: "bad-output".into(),
                message: format!("folder create answered {out} without a folder_id"),
            })
    }

    /// `register` (first device of a user) — or `login` for the others.
    pub async fn enrol(&self, first: bool) -> Result<(), CommandError> {
        let verb = if first { "register" } else { "login" };
        self.run(&[
            verb,
            &self.user,
            "--device",
            &self.name,
            "--mac",
            &self.mac(),
        ])
        .await
        .map(drop)
    }

    fn mac(&self) -> String {
        let h = self
            .name
            .bytes()
            .chain(self.user.bytes())
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        let b = h.to_be_bytes();
        format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3])
    }

    /// Replaces the session token the device holds (to present a forged or
    /// expired one, as an attacker with the home directory would).
    pub fn set_token(&self, token: &str) -> Result<(), String> {
        let home = coffer_client::Home::open(&self.home).map_err(|e| e.to_string())?;
        home.set_token(&coffer_proto::types::Token(token.to_owned()))
            .map_err(|e| e.to_string())
    }

    /// The session token the device holds.
    pub fn token(&self) -> Result<String, String> {
        let home = coffer_client::Home::open(&self.home).map_err(|e| e.to_string())?;
        let (account, _) = home
            .account()
            .map_err(|e| e.to_string())?
            .ok_or("not logged in")?;
        Ok(account.token.expose().to_owned())
    }
}

/// Splits `error: <code>: <what>`.
fn parse_error(stderr: &str) -> Option<CommandError> {
    let line = stderr.lines().rev().find(|l| l.starts_with("error: "))?;
    let rest = line.strip_prefix("error: ")?;
    let (code, message) = rest.split_once(": ").unwrap_or((rest, ""));
    Some(CommandError {
        code: code.to_owned(),
        message: message.to_owned(),
    })
}

/// A session token for `user`'s session `sid` expiring at `exp_ms` (Unix
/// milliseconds), signed with `secret` — what an operator holding the
/// cluster secret can mint (ARCHITECTURE.md, accounts and sessions).
pub fn mint_token(secret: &[u8], sid: &str, user: &str, exp_ms: u64) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use hmac::{KeyInit as _, Mac as _};
    let claims = serde_json::json!({ "sid": sid, "usr": user, "exp": exp_ms });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = <hmac::Hmac<sha2::Sha256>>::new_from_slice(secret).expect("any key length");
    mac.update(b"coffer-token-v1.");
    mac.update(claims.as_bytes());
    let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("v1.{claims}.{tag}")
}

/// The claims of a token (its middle part), unverified.
pub fn token_claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let middle = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(middle)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_split_into_code_and_message() {
        let e = parse_error("progress\nerror: forbidden: bob is a viewer of \"team\"\n").unwrap();
        assert_eq!(e.code, "forbidden");
        assert_eq!(e.message, "bob is a viewer of \"team\"");
        assert!(parse_error("panicked at …").is_none());
    }

    #[test]
    fn minted_tokens_carry_their_claims() {
        let t = mint_token(&[7; 32], "s1", "alice", 42);
        let claims = token_claims(&t).unwrap();
        assert_eq!(claims["usr"], "alice");
        assert_eq!(claims["exp"], 42);
        assert_ne!(t, mint_token(&[8; 32], "s1", "alice", 42), "the key signs");
    }
}
