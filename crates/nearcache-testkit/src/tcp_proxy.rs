//! [`TcpProxy`]: a loopback TCP relay that can make its current connections go silent, or
//! cut its clients off from the server while everyone else still reaches it.
//!
//! Killing a server or a client closes sockets, which every client notices. A network
//! partition does not: the connection stays open and nothing comes back. This proxy plays
//! that: [`TcpProxy::freeze_existing`] stops relaying on every connection open at that moment
//! while keeping their sockets open; connections made afterwards work normally, so a client
//! that gives up on a silent connection and reconnects gets through.
//!
//! [`TcpProxy::cut`] plays the server going down *for the clients behind this proxy only*:
//! their connections close and new ones are closed as soon as they are accepted, until
//! [`TcpProxy::restore`]. A test decides exactly when those clients get the server back —
//! for instance only after the other clients have reconnected to a restarted server.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A relay from a free port of 127.0.0.1 to `127.0.0.1:upstream`. Stops when dropped.
pub struct TcpProxy {
    port: u16,
    epoch: watch::Sender<u64>,
    control: Arc<Control>,
    accept: JoinHandle<()>,
}

/// What `cut` and `restore` change, shared with the accept loop.
#[derive(Debug)]
struct Control {
    /// Bumped by `cut`: every relay open at that moment closes.
    cuts: watch::Sender<u64>,
    /// While set, accepted connections are closed at once.
    refusing: AtomicBool,
}

impl TcpProxy {
    /// Starts relaying from a free loopback port to `127.0.0.1:upstream_port`.
    ///
    /// # Errors
    ///
    /// When no loopback port can be bound.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing runs until it returns.
    pub async fn start(upstream_port: u16) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let (epoch, _) = watch::channel(0u64);
        let control = Arc::new(Control {
            cuts: watch::Sender::new(0),
            refusing: AtomicBool::new(false),
        });
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream_port,
            epoch.clone(),
            control.clone(),
        ));
        Ok(Self {
            port,
            epoch,
            control,
            accept,
        })
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every connection open now stops relaying in both directions, its sockets left open
    /// (until the proxy is dropped); later connections are relayed as usual.
    pub fn freeze_existing(&self) {
        self.epoch.send_modify(|epoch| *epoch += 1);
    }

    /// Closes every connection open now (both sides see it closed, as when the server dies)
    /// and closes new ones as soon as they are accepted, until [`restore`](Self::restore).
    pub fn cut(&self) {
        // Refuse first, then close: a connection accepted in between is caught by either.
        self.control.refusing.store(true, Ordering::SeqCst);
        self.control.cuts.send_modify(|cuts| *cuts += 1);
    }

    /// Relays new connections again after [`cut`](Self::cut).
    pub fn restore(&self) {
        self.control.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every relay and closes
        // (also the frozen) sockets.
        self.accept.abort();
    }
}

impl fmt::Debug for TcpProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpProxy")
            .field("port", &self.port)
            .field("epoch", &*self.epoch.borrow())
            .field("cut", &self.control.refusing.load(Ordering::Relaxed))
            .finish()
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream_port: u16,
    epoch: watch::Sender<u64>,
    control: Arc<Control>,
) {
    let mut relays = tokio::task::JoinSet::new();
    // Frozen sockets are parked here so they stay open until the proxy goes.
    let parked: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let mut cut = control.cuts.subscribe();
        cut.mark_unchanged();
        if control.refusing.load(Ordering::SeqCst) {
            continue; // cut off: the client sees its connection closed
        }
        let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
            continue; // upstream down: the client sees its connection closed
        };
        let mut frozen = epoch.subscribe();
        frozen.mark_unchanged();
        let parked = parked.clone();
        relays.spawn(async move {
            let (mut client, mut upstream) = (client, upstream);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                _ = cut.changed() => {} // dropping both sockets closes them
                _ = frozen.changed() => {
                    if let Ok(mut parked) = parked.lock() {
                        parked.extend([client, upstream]);
                    }
                }
            }
        });
        // Reap finished relays so the set does not grow with closed connections.
        while relays.try_join_next().is_some() {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> (u16, JoinHandle<()>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = socket.read(&mut buf).await {
                        if socket.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, task)
    }

    async fn round_trip(socket: &mut TcpStream) -> Option<Vec<u8>> {
        socket.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_millis(300), socket.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf.to_vec())
    }

    #[tokio::test]
    async fn freezes_old_connections_and_relays_new_ones() {
        let (upstream, _server) = echo_server().await;
        let proxy = TcpProxy::start(upstream).await.unwrap();
        let mut old = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        assert_eq!(round_trip(&mut old).await.as_deref(), Some(&b"ping"[..]));
        proxy.freeze_existing();
        assert_eq!(
            round_trip(&mut old).await,
            None,
            "a frozen connection is silent"
        );
        let mut new = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        assert_eq!(round_trip(&mut new).await.as_deref(), Some(&b"ping"[..]));
    }

    /// Reads until the peer closes the connection; `false` if it stays open past 5 s.
    async fn closes(socket: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn cut_closes_and_refuses_until_restored() {
        let (upstream, _server) = echo_server().await;
        let proxy = TcpProxy::start(upstream).await.unwrap();
        let connect = || TcpStream::connect(("127.0.0.1", proxy.port()));
        let mut old = connect().await.unwrap();
        assert_eq!(round_trip(&mut old).await.as_deref(), Some(&b"ping"[..]));

        proxy.cut();
        assert!(closes(&mut old).await, "an open connection is closed");
        let mut refused = connect().await.unwrap();
        assert!(closes(&mut refused).await, "a new one is closed at once");

        proxy.restore();
        let mut new = connect().await.unwrap();
        assert_eq!(round_trip(&mut new).await.as_deref(), Some(&b"ping"[..]));
    }
}
