//! The `Net` seam: how servers, clients and the balancer get sockets.
//!
//! Production code is generic over [`Net`]; [`TokioNet`] hands out real TCP
//! sockets, and the simulation (`coffer-sim`) hands out turmoil's simulated
//! ones, so the same server, balancer and client code runs in both.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream between two endpoints.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// A bound listening socket.
pub trait Listener: Send + 'static {
    /// The streams it accepts.
    type Stream: Stream;

    /// Waits for the next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    /// The address it is bound to (the real port when bound to port 0).
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Waits for the next connection, riding out failed accepts (out of file
    /// descriptors and the like): each is logged and followed by a 50 ms pause
    /// instead of a busy loop.
    fn next_connection(&mut self) -> impl Future<Output = (Self::Stream, SocketAddr)> + Send
    where
        Self: Sized,
    {
        async move {
            loop {
                match self.accept().await {
                    Ok(accepted) => return accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
}

/// A network: binds listeners and opens connections.
pub trait Net: Clone + Send + Sync + 'static {
    /// Streams of this network.
    type Stream: Stream;
    /// Listeners of this network.
    type Listener: Listener<Stream = Self::Stream>;

    /// Binds a listener.
    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;

    /// Opens a connection.
    fn connect(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// The operating system's TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioNet;

/// A tokio TCP listener whose accepted streams have Nagle's algorithm off.
#[derive(Debug)]
pub struct TokioListener(tokio::net::TcpListener);

impl TokioListener {
    /// Wraps an already bound listener.
    pub fn new(listener: tokio::net::TcpListener) -> Self {
        TokioListener(listener)
    }
}

impl Listener for TokioListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, peer) = self.0.accept().await?;
        // Requests and answers are small frames; waiting to coalesce them only adds latency.
        stream.set_nodelay(true)?;
        Ok((stream, peer))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Net for TokioNet {
    type Stream = tokio::net::TcpStream;
    type Listener = TokioListener;

    async fn bind(&self, addr: SocketAddr) -> io::Result<TokioListener> {
        tokio::net::TcpListener::bind(addr).await.map(TokioListener)
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}
