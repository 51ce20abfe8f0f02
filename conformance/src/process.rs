//! Real binaries as child processes: start, wait for readiness, signal by PID.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Why a process could not be started or controlled.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// Building the binaries failed.
    #[error("building the binaries failed: {0}")]
    Build(String),
    /// The program could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The failure.
        source: std::io::Error,
    },
    /// It exited or said something else before `listening on ADDR`.
    #[error("{program} did not become ready: {reason}")]
    NotReady {
        /// The program.
        program: String,
        /// What happened instead.
        reason: String,
    },
    /// Sending a signal failed.
    #[error("signal {signal} to pid {pid}: {reason}")]
    Signal {
        /// The signal name.
        signal: &'static str,
        /// The process.
        pid: u32,
        /// What went wrong.
        reason: String,
    },
}

/// The directory holding this profile's binaries (`target/debug` when the suite
/// itself is a debug build), after making sure they are built.
pub fn bin_dir() -> Result<&'static Path, ProcessError> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        // target/<profile>/deps/<test binary>
        let dir = exe
            .ancestors()
            .nth(2)
            .ok_or("unexpected test binary location")?
            .to_owned();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        // Build the way `cargo test --workspace` does (same feature set), so
        // that under it this is a no-op and the binaries tested are the ones
        // it just built — never a stale or differently-featured copy.
        let mut build = Command::new(cargo);
        build.args(["test", "--workspace", "--no-run", "--quiet"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let out = build.output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(dir)
    })
    .as_deref()
    .map_err(|e| ProcessError::Build(e.clone()))
}

/// A running binary that announced `listening on ADDR`.
#[derive(Debug)]
pub struct Process {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: Option<PathBuf>,
    child: Child,
    addr: SocketAddr,
    /// Set once the child is reaped: its PID may then belong to someone else,
    /// so it is never signalled again.
    reaped: bool,
}

const READY_DEADLINE: Duration = Duration::from_secs(30);
/// How long a SIGSTOPped process may take to stop every thread.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

impl Process {
    /// Starts `program` with `args` and waits (up to 30 s) for its
    /// `listening on ADDR` line.
    pub fn start(program: &Path, args: Vec<String>) -> Result<Process, ProcessError> {
        Self::start_with(program, args, &[], None)
    }

    /// Like [`Process::start`], with extra environment variables and stderr
    /// (the log) appended to `log` instead of discarded.
    pub fn start_with(
        program: &Path,
        args: Vec<String>,
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Result<Process, ProcessError> {
        let name = program.display().to_string();
        let stderr = match log {
            None => Stdio::null(),
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Stdio::from)
                .map_err(|source| ProcessError::Spawn {
                    program: name.clone(),
                    source,
                })?,
        };
        let mut child = Command::new(program)
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|source| ProcessError::Spawn {
                program: name.clone(),
                source,
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        // Read the readiness line on a thread so that the wait has a deadline.
        std::thread::spawn(move || {
            let mut line = String::new();
            let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(result);
        });
        let not_ready = |reason: String| ProcessError::NotReady {
            program: name.clone(),
            reason,
        };
        let line = match rx.recv_timeout(READY_DEADLINE) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => return Err(not_ready(e.to_string())),
            Err(_) => {
                let _ = child.kill();
                return Err(not_ready(format!(
                    "no `listening on` within {READY_DEADLINE:?}"
                )));
            }
        };
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| not_ready(format!("first line was {line:?}")))?;
        Ok(Process {
            program: program.to_owned(),
            args,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            log: log.map(Path::to_owned),
            child,
            addr,
            reaped: false,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        let pid = self.pid();
        let failed = |reason: String| ProcessError::Signal {
            signal: signal.as_str(),
            pid,
            reason,
        };
        if self.reaped {
            return Err(failed("the process has already exited".into()));
        }
        let raw = i32::try_from(pid).map_err(|_| failed("pid out of range".into()))?;
        nix::sys::signal::kill(Pid::from_raw(raw), signal).map_err(|e| failed(e.to_string()))
    }

    /// SIGSTOP: the process stays, silent — a black hole. Returns once every
    /// thread of it is stopped (`kill` only queues the signal: a thread that
    /// is running may still answer for a moment), so whatever a caller does
    /// after the return meets a frozen process.
    pub fn pause(&self) -> Result<(), ProcessError> {
        self.signal(Signal::SIGSTOP)?;
        let start = std::time::Instant::now();
        while !self.all_threads_stopped() {
            if start.elapsed() > STOP_DEADLINE {
                return Err(ProcessError::Signal {
                    signal: "SIGSTOP",
                    pid: self.pid(),
                    reason: format!("threads still running after {STOP_DEADLINE:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Whether every thread in `/proc/<pid>/task` is in state `T` (stopped).
    /// The state is the first field after the parenthesised command name.
    fn all_threads_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return false;
        };
        tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
            })
        })
    }

    /// SIGCONT.
    pub fn resume(&self) -> Result<(), ProcessError> {
        self.signal(Signal::SIGCONT)
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(&mut self) -> Result<ExitStatus, ProcessError> {
        self.signal(Signal::SIGTERM)?;
        let status = self.child.wait().map_err(|e| ProcessError::Signal {
            signal: "SIGTERM",
            pid: self.pid(),
            reason: e.to_string(),
        })?;
        self.reaped = true;
        Ok(status)
    }

    /// SIGKILL, then reaps it.
    pub fn kill(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }

    /// Whether it has exited (killed, stopped, or crashed on its own).
    pub fn exited(&mut self) -> bool {
        if !self.reaped && matches!(self.child.try_wait(), Ok(Some(_))) {
            self.reaped = true;
        }
        self.reaped
    }

    /// Kills it and starts it again with the same arguments, environment and
    /// log (same data directory, same address when one was fixed).
    pub fn restart(&mut self) -> Result<(), ProcessError> {
        self.restart_with(self.args.clone())
    }

    /// Kills it and starts it again with `args` (kept for later restarts),
    /// the same environment and log.
    pub fn restart_with(&mut self, args: Vec<String>) -> Result<(), ProcessError> {
        self.kill();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let again = Process::start_with(&self.program, args, &env, self.log.as_deref())?;
        *self = again;
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Never leave a process behind, stopped or running (SIGKILL works on a
        // stopped process too).
        self.kill();
    }
}
