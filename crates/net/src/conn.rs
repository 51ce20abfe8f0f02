//! Framed connections: frames in and out of any byte stream, with limits and
//! deadlines.
//!
//! [`Connection`] owns a stream and its read buffer and offers
//! [`Connection::read_frame`] / [`Connection::write_frame`] (and typed
//! [`Connection::recv`] / [`Connection::send`]). [`Connection::into_split`] gives
//! a [`FrameReader`] and a [`FrameWriter`] for callers that read and write from
//! different tasks (a client pipelining requests while events arrive).
//!
//! Reading enforces, per frame:
//! - the header and body limits, from the 8-byte prefix, before buffering more;
//! - an **idle** deadline for the first byte of the next frame;
//! - a **frame** deadline from its first byte to its last, so a peer trickling
//!   one byte a second cannot hold a connection (and its buffer) forever.
//!
//! The buffer grows with what actually arrived, at most 64 KiB ahead, so a peer
//! announcing a large body and sending nothing costs little. Memory per
//! connection is bounded by [`coffer_proto::Limits::max_frame`].

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use coffer_proto::frame::{self, Check};
use coffer_proto::{DecodeError, EncodeError, Frame, Limits, Message, RawFrame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::{Instant, timeout_at};

/// Deadlines of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest wait for the first byte of a frame.
    pub idle: Duration,
    /// Longest time from the first byte of a frame to its last.
    pub frame: Duration,
    /// Longest time to write one frame.
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            idle: Duration::from_secs(300),
            frame: Duration::from_secs(60),
            write: Duration::from_secs(60),
        }
    }
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// The stream failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a valid frame or message.
    #[error("bad frame from peer: {0}")]
    Decode(#[from] DecodeError),
    /// A frame to send broke the protocol's limits or rules.
    #[error("frame not sent: {0}")]
    Encode(#[from] EncodeError),
    /// No frame started within the idle deadline.
    #[error("no frame within {0:?} (idle timeout)")]
    Idle(Duration),
    /// A frame started but did not finish within the frame deadline.
    #[error("frame not completed within {0:?}")]
    SlowFrame(Duration),
    /// Writing a frame took longer than the write deadline.
    #[error("frame not written within {0:?}")]
    SlowWrite(Duration),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes of it received)")]
    Truncated {
        /// Bytes of the unfinished frame that had arrived.
        buffered: usize,
    },
}

impl ConnError {
    /// Whether the peer simply went away or fell silent (as opposed to
    /// misbehaving) — worth a debug line, not a warning.
    pub fn is_disconnect(&self) -> bool {
        match self {
            ConnError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            ConnError::Idle(_) | ConnError::Truncated { .. } => true,
            _ => false,
        }
    }
}

/// Most bytes reserved ahead of what has arrived.
const READ_AHEAD: usize = 64 * 1024;

/// Reads frames from a stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    limits: Limits,
    timeouts: Timeouts,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `inner`.
    pub fn new(inner: R, limits: Limits, timeouts: Timeouts) -> Self {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(4096),
            limits,
            timeouts,
        }
    }

    /// Changes the deadlines (a server shortens the idle deadline until a
    /// session is established, for instance).
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// The next frame; `Ok(None)` when the peer closed cleanly between frames.
    pub async fn read_frame(&mut self) -> Result<Option<RawFrame>, ConnError> {
        let idle_deadline = Instant::now() + self.timeouts.idle;
        let mut frame_deadline =
            (!self.buf.is_empty()).then(|| Instant::now() + self.timeouts.frame);
        loop {
            let needed = match frame::check(&self.buf, &self.limits)? {
                Check::Complete { .. } => {
                    let frame = frame::decode_buf(&mut self.buf, &self.limits)?;
                    return Ok(Some(frame.expect("check said the frame is complete")));
                }
                Check::NeedMore { needed } => needed,
            };
            self.buf.reserve(needed.min(READ_AHEAD));
            let (deadline, err) = match frame_deadline {
                Some(at) => (at, ConnError::SlowFrame(self.timeouts.frame)),
                None => (idle_deadline, ConnError::Idle(self.timeouts.idle)),
            };
            let n = match timeout_at(deadline, self.inner.read_buf(&mut self.buf)).await {
                Err(_) => return Err(err),
                Ok(result) => result?,
            };
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnError::Truncated {
                        buffered: self.buf.len(),
                    })
                };
            }
            frame_deadline.get_or_insert_with(|| Instant::now() + self.timeouts.frame);
        }
    }

    /// The next frame, decoded as a message of family `M`.
    pub async fn recv<M: Message>(&mut self) -> Result<Option<Frame<M>>, ConnError> {
        match self.read_frame().await? {
            None => Ok(None),
            Some(raw) => Ok(Some(Frame::decode(&raw)?)),
        }
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Writes frames to a stream.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    limits: Limits,
    timeout: Duration,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer over `inner`. `limits` are the peer's: a frame it would refuse
    /// is not sent.
    pub fn new(inner: W, limits: Limits, timeout: Duration) -> Self {
        FrameWriter {
            inner,
            limits,
            timeout,
        }
    }

    /// Writes and flushes one frame.
    pub async fn write_frame(&mut self, frame: &RawFrame) -> Result<(), ConnError> {
        if frame.header.len() > self.limits.max_header as usize {
            return Err(EncodeError::HeaderTooLarge {
                len: frame.header.len(),
                max: self.limits.max_header,
            }
            .into());
        }
        if frame.body.len() > self.limits.max_body as usize {
            return Err(EncodeError::BodyTooLarge {
                len: frame.body.len(),
                max: self.limits.max_body,
            }
            .into());
        }
        let write = async {
            // Prefix and header in one write; the body (possibly megabytes) as is.
            let mut head = Vec::with_capacity(frame.prefix().len() + frame.header.len());
            head.extend_from_slice(&frame.prefix());
            head.extend_from_slice(&frame.header);
            self.inner.write_all(&head).await?;
            self.inner.write_all(&frame.body).await?;
            self.inner.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Err(_) => Err(ConnError::SlowWrite(self.timeout)),
            Ok(result) => Ok(result?),
        }
    }

    /// Encodes and writes a typed frame.
    pub async fn send<M: Message>(&mut self, frame: &Frame<M>) -> Result<(), ConnError> {
        let raw = frame.encode_with(&self.limits)?;
        self.write_frame(&raw).await
    }

    /// Shuts the write side down (sends FIN, or TLS close_notify).
    pub async fn shutdown(&mut self) -> Result<(), ConnError> {
        Ok(self.inner.shutdown().await?)
    }
}

/// A framed connection over one stream.
#[derive(Debug)]
pub struct Connection<S> {
    reader: FrameReader<S>,
    limits: Limits,
    write_timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Frames over `stream`, with the same limits both ways.
    pub fn new(stream: S, limits: Limits, timeouts: Timeouts) -> Self {
        Connection {
            reader: FrameReader::new(stream, limits, timeouts),
            limits,
            write_timeout: timeouts.write,
        }
    }

    /// See [`FrameReader::read_frame`].
    pub async fn read_frame(&mut self) -> Result<Option<RawFrame>, ConnError> {
        self.reader.read_frame().await
    }

    /// See [`FrameReader::recv`].
    pub async fn recv<M: Message>(&mut self) -> Result<Option<Frame<M>>, ConnError> {
        self.reader.recv().await
    }

    fn writer(&mut self) -> FrameWriter<&mut S> {
        FrameWriter::new(&mut self.reader.inner, self.limits, self.write_timeout)
    }

    /// See [`FrameWriter::write_frame`].
    pub async fn write_frame(&mut self, frame: &RawFrame) -> Result<(), ConnError> {
        self.writer().write_frame(frame).await
    }

    /// See [`FrameWriter::send`].
    pub async fn send<M: Message>(&mut self, frame: &Frame<M>) -> Result<(), ConnError> {
        self.writer().send(frame).await
    }

    /// See [`FrameWriter::shutdown`].
    pub async fn shutdown(&mut self) -> Result<(), ConnError> {
        self.writer().shutdown().await
    }

    /// See [`FrameReader::set_timeouts`]; also sets the write deadline.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.reader.set_timeouts(timeouts);
        self.write_timeout = timeouts.write;
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.reader.inner
    }

    /// The underlying stream, to write to it directly. Bytes written this way
    /// bypass the frame checks.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.reader.inner
    }

    /// Splits into a reader and a writer that can live in different tasks. Bytes
    /// already buffered stay with the reader.
    pub fn into_split(self) -> (FrameReader<ReadHalf<S>>, FrameWriter<WriteHalf<S>>) {
        let FrameReader {
            inner,
            buf,
            limits,
            timeouts,
        } = self.reader;
        let (read, write) = tokio::io::split(inner);
        (
            FrameReader {
                inner: read,
                buf,
                limits,
                timeouts,
            },
            FrameWriter::new(write, limits, self.write_timeout),
        )
    }
}
