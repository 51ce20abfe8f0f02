//! The admin endpoint: a deliberately small HTTP/1.1 server (one request per
//! connection, no body read) for operators and scrapers.
//!
//! - `GET /metrics` — Prometheus text format;
//! - `GET /backends` — JSON array, one object per backend;
//! - `POST /backends/{addr}/drain`, `POST /backends/{addr}/undrain` — the
//!   backend's object after the change, 404 for an unknown address.
//!
//! It is plain HTTP without authentication, so it listens on loopback by
//! default. A request line and headers are bounded to [`MAX_REQUEST`] bytes
//! and must arrive within [`READ_TIMEOUT`].

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use coffer_net::{Listener, Net};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::backend::BackendStats;
use crate::balancer::Balancer;
use crate::select::State;

/// Longest request head accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Longest wait for a whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the admin endpoint on `listener` until `shutdown`.
pub async fn serve<N: Net>(
    balancer: Arc<Balancer>,
    mut listener: N::Listener,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.next_connection() => accepted,
        };
        let balancer = balancer.clone();
        tokio::spawn(async move {
            if let Err(e) = exchange(&balancer, stream).await {
                debug!(%peer, error = %e, "admin request failed");
            }
        });
    }
}

async fn exchange<S>(balancer: &Balancer, mut stream: S) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Reply::text(408, "request timeout\n"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => Reply::text(431, "request head too large\n"),
        Ok(Ok(Some(head))) => match parse_request_line(&head) {
            Some((method, path)) => route(balancer, method, path),
            None => Reply::text(400, "bad request\n"),
        },
    };
    stream.write_all(&response.encode()).await?;
    stream.shutdown().await
}

/// Reads up to the blank line ending the head; `None` if it exceeds [`MAX_REQUEST`].
async fn read_head<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Option<String>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&head, b"\r\n\r\n").or_else(|| find(&head, b"\n\n")) {
            head.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&head).into_owned()));
        }
        if head.len() > MAX_REQUEST {
            return Ok(None);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `METHOD PATH HTTP/1.x` → (method, path without its query).
fn parse_request_line(head: &str) -> Option<(&str, &str)> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    Some((method, target.split('?').next().unwrap_or(target)))
}

/// Decodes the `%XX` escapes an address may carry in a path (`[`, `]`, `:`).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn route(balancer: &Balancer, method: &str, path: &str) -> Reply {
    match (method, path) {
        ("GET", "/metrics") => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics(balancer),
        },
        ("GET", "/backends") => Reply::json(200, &balancer.stats()),
        (_, "/metrics" | "/backends") => Reply::text(405, "method not allowed\n"),
        (method, path) => {
            let Some(rest) = path.strip_prefix("/backends/") else {
                return Reply::text(404, "not found\n");
            };
            let (addr, action) = match rest.rsplit_once('/') {
                Some((addr, "drain")) => (addr, true),
                Some((addr, "undrain")) => (addr, false),
                _ => return Reply::text(404, "not found\n"),
            };
            if method != "POST" {
                return Reply::text(405, "method not allowed\n");
            }
            let Some(addr) = percent_decode(addr).and_then(|a| a.parse::<SocketAddr>().ok()) else {
                return Reply::text(400, "not a backend address\n");
            };
            match balancer.drain(addr, action) {
                Some(stats) => Reply::json(200, &stats),
                None => Reply::text(404, "no such backend\n"),
            }
        }
    }
}

/// The Prometheus exposition of every counter the balancer keeps.
pub fn metrics(balancer: &Balancer) -> String {
    let stats = balancer.stats();
    let mut out = String::with_capacity(4096);
    let mut family =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(&BackendStats) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for s in &stats {
                let _ = writeln!(out, "{name}{{backend=\"{}\"}} {}", s.addr, value(s));
            }
        };
    family(
        "coffer_balancer_backend_up",
        "gauge",
        "1 when the backend takes new connections, 0 when down or draining.",
        &|s| u8::from(s.state == State::Up).to_string(),
    );
    family(
        "coffer_balancer_backend_draining",
        "gauge",
        "1 while the backend is drained by the admin or removed by a reload.",
        &|s| u8::from(s.state == State::Draining).to_string(),
    );
    family(
        "coffer_balancer_backend_active_connections",
        "gauge",
        "Connections in progress to the backend.",
        &|s| s.active.to_string(),
    );
    family(
        "coffer_balancer_backend_connections_total",
        "counter",
        "Connections proxied to the backend.",
        &|s| s.total.to_string(),
    );
    family(
        "coffer_balancer_backend_connect_failures_total",
        "counter",
        "Connects to the backend that failed or timed out.",
        &|s| s.failures.to_string(),
    );
    family(
        "coffer_balancer_backend_received_bytes_total",
        "counter",
        "Bytes from clients forwarded to the backend.",
        &|s| s.bytes_in.to_string(),
    );
    family(
        "coffer_balancer_backend_sent_bytes_total",
        "counter",
        "Bytes from the backend forwarded to clients.",
        &|s| s.bytes_out.to_string(),
    );
    family(
        "coffer_balancer_backend_health_check_failures_total",
        "counter",
        "Health checks the backend failed.",
        &|s| s.checks_failed.to_string(),
    );
    family(
        "coffer_balancer_backend_health_check_seconds",
        "gauge",
        "Duration of the backend's last health check.",
        &|s| format!("{:.6}", s.check_micros as f64 / 1e6),
    );
    let c = &balancer.counters;
    for (name, kind, help, value) in [
        (
            "coffer_balancer_client_connections",
            "gauge",
            "Client connections being served.",
            c.active.load(Ordering::Relaxed) as u64,
        ),
        (
            "coffer_balancer_client_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            c.accepted.load(Ordering::Relaxed),
        ),
        (
            "coffer_balancer_client_connections_rejected_total",
            "counter",
            "Client connections closed on arrival at max_connections.",
            c.rejected.load(Ordering::Relaxed),
        ),
        (
            "coffer_balancer_client_connections_timed_out_total",
            "counter",
            "Client connections closed for sending nothing in time or going idle.",
            c.timed_out.load(Ordering::Relaxed),
        ),
        (
            "coffer_balancer_client_connections_unserved_total",
            "counter",
            "Client connections closed because no backend could be reached.",
            c.unserved.load(Ordering::Relaxed),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    out
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_owned(),
        }
    }

    fn json<T: Serialize>(status: u16, value: &T) -> Reply {
        let mut body = serde_json::to_string_pretty(value).expect("views serialize");
        body.push('\n');
        Reply {
            status,
            content_type: "application/json",
            body,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse_strictly() {
        assert_eq!(
            parse_request_line("GET /metrics HTTP/1.1\r\nHost: x"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            parse_request_line("GET /backends?x=1 HTTP/1.0"),
            Some(("GET", "/backends"))
        );
        for bad in [
            "",
            "GET",
            "GET /metrics",
            "GET metrics HTTP/1.1",
            "GET / HTTP/2",
            "GET  / HTTP/1.1",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn addresses_in_paths_may_be_escaped() {
        assert_eq!(
            percent_decode("%5B%3A%3A1%5D%3A80").as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(
            percent_decode("127.0.0.1:80").as_deref(),
            Some("127.0.0.1:80")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }
}
