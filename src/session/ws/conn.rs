//! The socket of a WebSocket session: plain TCP, or TLS when the broker serves it
//! (`server.tls_cert_file`). Split into a read and a write half for the session's reader
//! and writer; the plain halves are tokio's owned halves, as before TLS existed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_tls::accept::rustls_0_23::TlsStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// An upgraded connection.
pub enum Socket {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

/// What the upgrade hook hands over: a connection that can say its peer and become a
/// [`Socket`].
pub trait Upgraded: AsyncRead + AsyncWrite + Unpin + 'static {
    /// The client's address.
    fn peer(&self) -> io::Result<SocketAddr>;
    /// The connection as a session's socket.
    fn into_socket(self) -> Socket;
}

impl Upgraded for TcpStream {
    fn peer(&self) -> io::Result<SocketAddr> {
        self.peer_addr()
    }
    fn into_socket(self) -> Socket {
        Socket::Plain(self)
    }
}

impl Upgraded for TlsStream<TcpStream> {
    fn peer(&self) -> io::Result<SocketAddr> {
        self.get_ref().0.peer_addr()
    }
    fn into_socket(self) -> Socket {
        Socket::Tls(Box::new(self))
    }
}

/// The read half.
pub enum SocketReader {
    /// Plain TCP.
    Plain(OwnedReadHalf),
    /// TLS.
    Tls(ReadHalf<Box<TlsStream<TcpStream>>>),
}

/// The write half.
pub enum SocketWriter {
    /// Plain TCP.
    Plain(OwnedWriteHalf),
    /// TLS.
    Tls(WriteHalf<Box<TlsStream<TcpStream>>>),
}

impl Socket {
    /// Sets TCP_NODELAY: frames are small and latency matters more than packet count.
    pub fn set_nodelay(&self) {
        let tcp = match self {
            Socket::Plain(s) => s,
            Socket::Tls(s) => s.get_ref().0,
        };
        let _ = tcp.set_nodelay(true);
    }

    /// The two halves.
    pub fn split(self) -> (SocketReader, SocketWriter) {
        match self {
            Socket::Plain(s) => {
                let (r, w) = s.into_split();
                (SocketReader::Plain(r), SocketWriter::Plain(w))
            }
            Socket::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (SocketReader::Tls(r), SocketWriter::Tls(w))
            }
        }
    }
}

impl AsyncRead for SocketReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SocketReader::Plain(r) => Pin::new(r).poll_read(cx, buf),
            SocketReader::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SocketWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SocketWriter::Plain(w) => Pin::new(w).poll_write(cx, buf),
            SocketWriter::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SocketWriter::Plain(w) => Pin::new(w).poll_flush(cx),
            SocketWriter::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SocketWriter::Plain(w) => Pin::new(w).poll_shutdown(cx),
            SocketWriter::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}
