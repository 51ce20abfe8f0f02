//! An in-process server and a way to run the `coffer` binary against it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use coffer_net::SystemClock;
use coffer_server::{Config, Server};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

pub struct Running {
    pub addr: SocketAddr,
    pub ca: PathBuf,
    pub data: PathBuf,
    _shutdown: tokio_util::sync::DropGuard,
    _dir: tempfile::TempDir,
}

pub async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data: dir.path().join("data"),
        bcrypt_cost: 4,
        ..Config::default()
    };
    let server = Arc::new(Server::new(config, Arc::new(SystemClock)).unwrap());
    let ca = server.ca_path().unwrap().to_owned();
    let shutdown = CancellationToken::new();
    let (addr, _) = server.spawn_local(shutdown.clone()).await.unwrap();
    Running {
        addr,
        ca,
        data: dir.path().join("data"),
        _shutdown: shutdown.drop_guard(),
        _dir: dir,
    }
}

/// A server and the homes of the devices that use it.
pub struct Env {
    pub server: Running,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub async fn start() -> Env {
        Env {
            server: start().await,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("home-{name}"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `coffer` with the device `home`, `stdin` as its input.
    pub async fn run(&self, home: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_coffer"));
        command
            .args(args)
            .arg("--home")
            .arg(self.home(home))
            .env("COFFER_SERVER", self.server.addr.to_string())
            .env("COFFER_CA", &self.server.ca)
            .env_remove("COFFER_PASSWORD")
            .env_remove("COFFER_HOME")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).await.unwrap();
        }
        drop(input);
        child.wait_with_output().await.unwrap()
    }

    /// Runs `coffer` and expects success; its stdout.
    pub async fn ok(&self, home: &str, args: &[&str]) -> String {
        let out = self.run(home, args, None).await;
        assert!(
            out.status.success(),
            "coffer {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `coffer --json` and parses its output.
    pub async fn json(&self, home: &str, args: &[&str]) -> Value {
        let mut with = vec!["--json"];
        with.extend_from_slice(args);
        serde_json::from_str(&self.ok(home, &with).await).unwrap()
    }

    /// Runs `coffer` and expects failure: the one-line error.
    pub async fn fails(&self, home: &str, args: &[&str]) -> String {
        let out = self.run(home, args, None).await;
        assert!(!out.status.success(), "coffer {args:?} succeeded");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let lines: Vec<_> = stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(lines.len(), 1, "one error line: {stderr}");
        lines[0].to_owned()
    }

    /// Writes `bytes` to the file `name` beside the homes and puts it at
    /// `target` from device `home`; the `--json` answer.
    pub async fn put(&self, home: &str, name: &str, bytes: &[u8], target: &str) -> Value {
        let local = self.path(name);
        std::fs::write(&local, bytes).unwrap();
        self.json(home, &["put", local.to_str().unwrap(), target])
            .await
    }

    /// Registers `user` on device `home` (password "pw-USER").
    pub async fn register(&self, home: &str, user: &str) {
        self.sign_in("register", home, user).await;
    }

    /// Logs `user` in on another device `home`, which it registers.
    pub async fn login(&self, home: &str, user: &str) {
        self.sign_in("login", home, user).await;
    }

    /// `register` or `login` as `user` on device `home`, named after the
    /// home, with a MAC address derived from its name.
    async fn sign_in(&self, verb: &str, home: &str, user: &str) {
        let mac = format!(
            "02:00:00:00:00:{:02x}",
            home.bytes().map(u32::from).sum::<u32>() % 256
        );
        let out = self
            .run(
                home,
                &[
                    verb,
                    user,
                    "--device",
                    home,
                    "--mac",
                    &mac,
                    "--password-stdin",
                ],
                Some(&format!("pw-{user}\n")),
            )
            .await;
        assert!(
            out.status.success(),
            "{verb} {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Bytes of a given length that differ by seed, with a marker inside.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(coffer_crypto::sha256(bytes))
}

/// Every file below `dir`.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
