//! The accept loop: a listening socket whose connections come with a [`Permit`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::limiter::{Limiter, Permit};

/// How long to wait after an accept error that is not about one connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long to wait after running out of file descriptors, once a slow connection was closed
/// to free one.
const SHED_BACKOFF: Duration = Duration::from_millis(5);

/// Accepts connections within a [`Limiter`]'s limits.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    limiter: Limiter,
}

impl Acceptor {
    /// Accepts on `listener`, admitting through `limiter` (which other acceptors may share).
    pub fn new(listener: TcpListener, limiter: Limiter) -> Acceptor {
        Acceptor { listener, limiter }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// The next admitted connection. Connections over the limits are closed at once (and
    /// slower ones make room, see [`Limiter::admit`]); when the process runs out of file
    /// descriptors, the oldest connection without a request head is closed so that the
    /// next client can be accepted. Cancel-safe.
    pub async fn accept(&self) -> (TcpStream, SocketAddr, Permit) {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => match self.limiter.admit(peer) {
                    Ok(permit) => return (stream, peer, permit),
                    Err(refused) => {
                        tracing::debug!(%peer, %refused, "connection refused");
                        drop(stream);
                    }
                },
                Err(error) if is_per_connection(&error) => {}
                Err(error) if is_out_of_descriptors(&error) => {
                    let shed = self.limiter.shed_one();
                    self.limiter.warn_accept_error(&error, shed);
                    tokio::time::sleep(if shed { SHED_BACKOFF } else { ACCEPT_BACKOFF }).await;
                }
                Err(error) => {
                    self.limiter.warn_accept_error(&error, false);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

/// Errors about one connection that went away before it was accepted.
fn is_per_connection(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    )
}

/// EMFILE, ENFILE: no file descriptor for the new connection.
fn is_out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(code) if code == nix::libc::EMFILE || code == nix::libc::ENFILE
    )
}
