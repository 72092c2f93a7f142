//! [`Invalidation`]: what an invalidating call returns, and how far it got.
//!
//! Each invalidation (`set`, `remove`, region expiries, `clear`) is one plain method that
//! acts at once — the local store is updated and the message is queued for the peers before
//! the call returns — and hands back an [`Invalidation`]. Awaiting it waits for the publish;
//! dropping it does not wait. One call thus serves async code (which awaits) and blocking code
//! (which drops), and `_sync` keeps a single meaning in this crate: "blocks the thread".
//! An `async fn` was rejected because its body runs only when polled: a caller that forgot
//! the `.await` would invalidate nothing.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::propagation::Propagation;
use crate::propagation::outbox::Ticket;

/// How far an invalidation got by the time awaiting its [`Invalidation`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagated {
    /// The backplane accepted the message carrying it.
    Published,
    /// The backplane did not accept it within `publish_timeout`; it stays queued and goes
    /// out when the backplane is back. If the outbox overflows first, the backlog is dropped:
    /// this instance clears itself and peers, seeing a gap in its sequence numbers, clear
    /// themselves.
    Queued,
    /// The invalidation was local only: this cache has no backplane, or it was
    /// [shut down](crate::Cache::shutdown).
    Local,
}

/// An invalidation that has already happened here and is queued for the peers.
///
/// Returned by [`Cache::set`](crate::Cache::set), [`remove`](crate::Cache::remove),
/// [`expire_region`](crate::Cache::expire_region),
/// [`expire_region_key`](crate::Cache::expire_region_key) and
/// [`clear`](crate::Cache::clear). By the time the call returns, the local entries are
/// gone and the message is in the outbox, which the background sender publishes whether or
/// not this value is used. So there are two ways to use it:
///
/// - **await it** to wait, at most `publish_timeout`, until the backplane has accepted the
///   message: the result says how far it got ([`Propagated`]);
/// - **drop it** (write the call as a statement) to not wait: right in blocking code, and
///   in async code that does not need to know.
///
/// ```
/// use nearcache::{Cache, CacheOptions, Key, Propagated};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = Cache::new(CacheOptions::default())?;
/// let key = Key::from_text("product:42");
///
/// cache.remove(&key); // removed here, queued for the peers; no wait
/// assert_eq!(cache.remove(&key).await, Propagated::Local); // no backplane: local only
/// # Ok(())
/// # }
/// ```
///
/// It borrows the cache, so it is `Send` and can be awaited in a spawned task that owns
/// (a clone of) the cache.
pub struct Invalidation<'a> {
    /// The propagation to wait on and the outbox ticket of the message, or `None` when the
    /// invalidation stayed local.
    queued: Option<(&'a Propagation, Ticket)>,
}

impl<'a> Invalidation<'a> {
    /// An invalidation queued on `propagation` as `ticket`, or local only when either is
    /// missing.
    pub(crate) fn new(propagation: Option<&'a Propagation>, ticket: Option<Ticket>) -> Self {
        Invalidation {
            queued: propagation.zip(ticket),
        }
    }
}

impl<'a> IntoFuture for Invalidation<'a> {
    type Output = Propagated;
    type IntoFuture = WaitPublished<'a>;

    /// Waits, at most `publish_timeout`, for the message to be published.
    fn into_future(self) -> WaitPublished<'a> {
        let state = match self.queued {
            Some((propagation, ticket)) => State::Waiting(Box::pin(settle(propagation, ticket))),
            None => State::Done(Propagated::Local),
        };
        WaitPublished { state }
    }
}

impl fmt::Debug for Invalidation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invalidation")
            .field("ticket", &self.queued.map(|(_, ticket)| ticket))
            .finish()
    }
}

/// The future of an awaited [`Invalidation`]: resolves once the backplane accepted the
/// message, or `publish_timeout` passed, with how far it got.
///
/// # Cancel safety
///
/// Dropping it only stops the wait: the invalidation was applied here and queued before it
/// existed, and the queued message is still published.
pub struct WaitPublished<'a> {
    state: State<'a>,
}

/// A boxed wait keeps [`WaitPublished`] nameable without exposing the outbox's future types;
/// the box is only made when a caller awaits, never when it drops the [`Invalidation`].
enum State<'a> {
    Waiting(Pin<Box<dyn Future<Output = Propagated> + Send + 'a>>),
    Done(Propagated),
}

impl Future for WaitPublished<'_> {
    type Output = Propagated;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Propagated> {
        match &mut self.state {
            State::Waiting(wait) => wait.as_mut().poll(cx),
            State::Done(outcome) => Poll::Ready(*outcome),
        }
    }
}

impl fmt::Debug for WaitPublished<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting(_) => "waiting",
            State::Done(_) => "done",
        };
        f.debug_struct("WaitPublished")
            .field("state", &state)
            .finish()
    }
}

/// Waits, at most `publish_timeout`, for `ticket` to be published.
async fn settle(propagation: &Propagation, ticket: Ticket) -> Propagated {
    if propagation.wait_published(ticket).await {
        Propagated::Published
    } else {
        Propagated::Queued
    }
}
