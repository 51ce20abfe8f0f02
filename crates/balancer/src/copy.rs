//! Copying bytes both ways between a client and its backend, holding no large
//! buffer while a direction is idle.
//!
//! Each direction reads first into a small buffer inside the connection's own
//! state (1 KiB); when a read fills it, the direction is busy and takes a
//! 64 KiB buffer from the heap for the reads that follow, and gives it back as
//! soon as a read finds nothing waiting. An idle proxied connection therefore
//! costs its two small buffers and its task, not the two 8 KiB (or larger)
//! buffers `tokio::io::copy_bidirectional` keeps for its whole life, and a
//! bulk transfer still moves 64 KiB per system call.
//!
//! End of stream in one direction is passed on as a half-close (`shutdown` of
//! the other side's write half); the copy ends when both directions have ended,
//! or at the first error.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The buffer inside the connection's state.
const SMALL: usize = 1024;
/// The buffer a busy direction borrows from the heap.
const LARGE: usize = 64 * 1024;

/// One direction's state.
#[derive(Debug)]
struct Half {
    small: [u8; SMALL],
    large: Option<Box<[u8]>>,
    /// Whether the bytes waiting to be written are in `large`.
    in_large: bool,
    /// Bytes `pos..len` of the current buffer wait to be written.
    pos: usize,
    len: usize,
    /// The reading side has ended.
    eof: bool,
    /// The end has been passed on (the writing side shut down).
    done: bool,
    /// Whether bytes moved since the owner last asked.
    moved: bool,
}

impl Half {
    fn new() -> Self {
        Half {
            small: [0; SMALL],
            large: None,
            in_large: false,
            pos: 0,
            len: 0,
            eof: false,
            done: false,
            moved: false,
        }
    }

    /// Moves bytes from `r` to `w` until `r` has nothing more for now (then
    /// `Pending`), or has ended and the end is passed on (then `Ready`).
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        counter: &AtomicU64,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            while self.pos < self.len {
                let buf = match (&self.large, self.in_large) {
                    (Some(large), true) => &large[self.pos..self.len],
                    _ => &self.small[self.pos..self.len],
                };
                let n = ready!(w.as_mut().poll_write(cx, buf))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.moved = true;
            }
            if self.eof {
                if !self.done {
                    ready!(w.as_mut().poll_shutdown(cx))?;
                    self.done = true;
                }
                return Poll::Ready(Ok(()));
            }
            let use_large = self.large.is_some();
            let target: &mut [u8] = match &mut self.large {
                Some(large) => large,
                None => &mut self.small,
            };
            let mut rb = ReadBuf::new(target);
            match r.as_mut().poll_read(cx, &mut rb) {
                Poll::Pending => {
                    // Nothing waiting: give the large buffer back, and make
                    // sure what was written is on its way before sleeping.
                    self.large = None;
                    ready!(w.as_mut().poll_flush(cx))?;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    self.pos = 0;
                    self.len = n;
                    self.in_large = use_large;
                    if n == 0 {
                        self.eof = true;
                        self.large = None;
                        continue;
                    }
                    self.moved = true;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    if !use_large && n == SMALL {
                        // A full small read: more is coming.
                        self.large = Some(vec![0; LARGE].into_boxed_slice());
                    }
                }
            }
        }
    }
}

/// Copies both ways between `a` and `b` until both directions end.
#[derive(Debug)]
pub struct Bidirectional<'c, A, B> {
    a: A,
    b: B,
    a_to_b: Half,
    b_to_a: Half,
    a_to_b_bytes: &'c AtomicU64,
    b_to_a_bytes: &'c AtomicU64,
}

impl<'c, A, B> Bidirectional<'c, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    /// A copy between `a` and `b`, adding the bytes moved each way to the
    /// counters as they move.
    pub fn new(a: A, b: B, a_to_b_bytes: &'c AtomicU64, b_to_a_bytes: &'c AtomicU64) -> Self {
        Bidirectional {
            a,
            b,
            a_to_b: Half::new(),
            b_to_a: Half::new(),
            a_to_b_bytes,
            b_to_a_bytes,
        }
    }

    /// Whether any byte moved since the last call.
    pub fn moved(&mut self) -> bool {
        let moved = self.a_to_b.moved || self.b_to_a.moved;
        self.a_to_b.moved = false;
        self.b_to_a.moved = false;
        moved
    }

    /// Whether a large buffer is held (for tests of the idle cost).
    pub fn holds_large_buffers(&self) -> bool {
        self.a_to_b.large.is_some() || self.b_to_a.large.is_some()
    }
}

impl<A, B> Future for Bidirectional<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let forward = this.a_to_b.poll_copy(
            cx,
            Pin::new(&mut this.a),
            Pin::new(&mut this.b),
            this.a_to_b_bytes,
        );
        if let Poll::Ready(Err(e)) = forward {
            return Poll::Ready(Err(e));
        }
        let back = this.b_to_a.poll_copy(
            cx,
            Pin::new(&mut this.b),
            Pin::new(&mut this.a),
            this.b_to_a_bytes,
        );
        match (forward, back) {
            (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bytes of every size cross both ways, the counters add up, a half-close
    /// is passed on, and an idle copy holds no large buffer.
    #[tokio::test]
    async fn copies_both_ways_and_passes_half_closes_on() {
        let (mut client, proxy_client) = tokio::io::duplex(8 * 1024);
        let (proxy_server, mut server) = tokio::io::duplex(8 * 1024);
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let request: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let answer: Vec<u8> = (0..70_000u32).map(|i| (i % 13) as u8).collect();
        let mut copy = Bidirectional::new(proxy_client, proxy_server, &up, &down);
        let ends = async {
            let send = async {
                client.write_all(&request).await.unwrap();
                client.shutdown().await.unwrap();
                let mut got = Vec::new();
                client.read_to_end(&mut got).await.unwrap();
                got
            };
            let serve = async {
                let mut got = Vec::new();
                server.read_to_end(&mut got).await.unwrap(); // ends: the half-close arrived
                server.write_all(&answer).await.unwrap();
                server.shutdown().await.unwrap();
                got
            };
            tokio::join!(send, serve)
        };
        let (result, (back, forth)) = tokio::join!(&mut copy, ends);
        result.unwrap();
        assert_eq!(forth, request);
        assert_eq!(back, answer);
        assert_eq!(up.load(Ordering::Relaxed), request.len() as u64);
        assert_eq!(down.load(Ordering::Relaxed), answer.len() as u64);
        assert!(!copy.holds_large_buffers());
    }

    #[tokio::test]
    async fn an_idle_copy_gives_its_large_buffer_back() {
        let (mut client, proxy_client) = tokio::io::duplex(256 * 1024);
        let (proxy_server, mut server) = tokio::io::duplex(256 * 1024);
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut copy = Bidirectional::new(proxy_client, proxy_server, &up, &down);
        client.write_all(&[7; 100_000]).await.unwrap();
        // Poll until the bytes are across and the copy waits for more.
        let mut got = vec![0; 100_000];
        tokio::select! {
            _ = &mut copy => panic!("the copy ended"),
            r = server.read_exact(&mut got) => { r.unwrap(); }
        }
        assert!(futures_poll_once(&mut copy).await.is_pending());
        assert!(!copy.holds_large_buffers());
        assert!(copy.moved());
        assert!(!copy.moved());
    }

    async fn futures_poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }
}
