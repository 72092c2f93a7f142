//! What the fuzz targets check, shared with the normal test suite.
//!
//! The fuzz targets (`fuzz_targets/`) call these checks with libFuzzer's inputs; the test
//! `crates/nearcache/tests/fuzz_corpus.rs` includes this same file and runs every input of the
//! committed corpus, and every crash ever found, through them, so a crash becomes a
//! regression test that runs on the stable toolchain in `cargo test`.
//!
//! - [`check_wire_decode`]: the decoder never panics, and what it accepts is within the
//!   limits, re-encodes, and decodes back to the same message; under a signing key it
//!   accepts only what that key signed (no forgery gets through).
//! - [`ApplyHarness`]: arbitrary bytes delivered as a backplane message to a running
//!   [`Cache`]: it never panics or hangs, a payload that does not decode is counted as
//!   rejected, each payload is accounted for exactly once (message, heartbeat or duplicate),
//!   nothing received is published again, no message ever adds an entry to the cache
//!   (messages carry invalidations, never values), and no payload can make a real peer's
//!   next message invisible: a *witness* peer, whose origin the seed corpus uses (so the
//!   fuzzer forges its name, sequence numbers, heartbeats and goodbyes), sends its next
//!   message after every payload, and that message must be applied.

use std::time::Duration;

use bytes::Bytes;
use nearcache::{Cache, CacheEvent, CacheOptions, InMemoryBackplane, Key, region};
use nearcache_backplane::wire::{self, InstanceId, Message, Op, SigningKeys, WireLimits};
use tokio::sync::broadcast;

region!(FuzzRegion = "fuzz");

/// How long one payload may take to be processed before it counts as a hang.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(10);

/// The origin of the seed messages, and of the harness's witness peer.
const WITNESS: InstanceId = InstanceId::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

/// The key the signed-decode check holds (the fuzzer does not know it).
const FUZZ_KEY: &[u8] = b"the fuzz harness's signing key";

/// Decodes `data` and checks what the decoder promises.
///
/// # Panics
///
/// When a promise is broken: that is the finding.
pub fn check_wire_decode(data: &[u8]) {
    match wire::decode(data) {
        Err(error) => {
            // Errors are shown to operators; formatting one must not fail either.
            let shown = error.to_string();
            assert!(!shown.is_empty(), "a decode error says what went wrong");
        }
        Ok(message) => {
            let limits = WireLimits::DEFAULT;
            assert!(data.len() <= limits.max_payload_bytes());
            assert!(
                message.ops.len() <= limits.max_ops(),
                "{} ops",
                message.ops.len()
            );
            assert!(message.key_count() <= limits.max_keys());
            let again = match wire::encode(&message) {
                Ok(bytes) => bytes,
                Err(error) => panic!("a message that decodes must encode: {error}"),
            };
            assert_eq!(message.encoded_len(), again.len(), "encoded_len is exact");
            match wire::decode(&again) {
                Ok(back) => assert_eq!(back, message, "encode/decode round trip"),
                Err(error) => panic!("a re-encoded message must decode: {error}"),
            }
        }
    }
    check_signed_decode(data);
}

/// Under a signing key, the decoder accepts only what that key signed: an accepted payload
/// is exactly the signed encoding of what it decoded to.
fn check_signed_decode(data: &[u8]) {
    let keys = match SigningKeys::new(FUZZ_KEY.to_vec(), None) {
        Ok(keys) => keys,
        Err(error) => panic!("the fuzz key is long enough: {error}"),
    };
    let limits = WireLimits::DEFAULT;
    if let Ok(message) = wire::decode_authenticated(data, &limits, Some(&keys)) {
        match wire::encode_signed(&message, &limits, &keys) {
            Ok(signed) => assert_eq!(
                &signed[..],
                data,
                "an accepted payload is our own signature of its message"
            ),
            Err(error) => panic!("an accepted message must sign: {error}"),
        }
    }
}

/// A cache on an in-process bus, to which payloads are delivered as if a peer sent them.
#[derive(Debug)]
pub struct ApplyHarness {
    runtime: tokio::runtime::Runtime,
    bus: InMemoryBackplane,
    cache: Cache,
    events: broadcast::Receiver<CacheEvent>,
    /// The witness peer's last sequence number.
    witness_seq: u64,
}

/// The accounting counters of one cache, read before and after a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
///
/// `own` (our own payloads echoed back) is read but not charged to a payload: the cache
/// answers a new peer with a heartbeat, whose echo arrives whenever it arrives. A payload
/// cannot be our own: it would have to guess this cache's random instance id.
struct Counts {
    received: u64,
    heartbeats: u64,
    own: u64,
    duplicates: u64,
    rejected: u64,
}

impl ApplyHarness {
    /// Starts a runtime, a bus and a cache on it (periodic heartbeats a day apart).
    ///
    /// # Panics
    ///
    /// When the runtime or the cache cannot be built.
    pub fn new() -> ApplyHarness {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => panic!("a tokio runtime: {error}"),
        };
        let bus = InMemoryBackplane::new();
        let mut options = CacheOptions::default();
        options.backplane.heartbeat_interval = Duration::from_secs(24 * 3600);
        let (cache, events) = runtime.block_on(async {
            let cache = match Cache::builder()
                .options(options)
                .backplane(bus.connection())
                .build()
            {
                Ok(cache) => cache,
                Err(error) => panic!("a cache: {error}"),
            };
            let events = cache.events();
            cache.ready().await;
            (cache, events)
        });
        ApplyHarness {
            runtime,
            bus,
            cache,
            events,
            witness_seq: 0,
        }
    }

    /// Invalidation messages this cache has published (it never invalidates on its own).
    fn sent(&self) -> u64 {
        self.cache
            .stats()
            .propagation
            .map_or(0, |p| p.messages_sent)
    }

    fn counts(&self) -> Counts {
        let stats = self.cache.stats();
        let Some(p) = stats.propagation else {
            panic!("the harness's cache has a backplane");
        };
        Counts {
            received: p.messages_received,
            heartbeats: p.heartbeats_received,
            own: p.own_messages_ignored,
            duplicates: p.duplicates_ignored,
            rejected: p.messages_rejected,
        }
    }

    /// Fills the cache with a few entries a message could evict (plain, in a region, under
    /// a sub-key).
    fn fill(&self) {
        let plain = Key::from_text("Fuzz:plain");
        let regional = Key::from_text("Fuzz:regional");
        let sub = Key::from_text("Fuzz:sub");
        let ok = |_: &mut nearcache::EntryOptions| Ok::<_, std::convert::Infallible>(1_u8);
        let _ = self.cache.get_or_create_sync(&plain, ok);
        let _ = self
            .cache
            .get_or_create_sync(&regional, |entry: &mut nearcache::EntryOptions| {
                entry.region::<FuzzRegion>();
                Ok::<_, std::convert::Infallible>(2_u8)
            });
        let _ = self
            .cache
            .get_or_create_sync(&sub, |entry: &mut nearcache::EntryOptions| {
                entry.region_key::<FuzzRegion>("s");
                Ok::<_, std::convert::Infallible>(3_u8)
            });
    }

    /// Delivers `data` as a peer's message, waits until the cache has processed it, and
    /// checks the invariants.
    ///
    /// # Panics
    ///
    /// When an invariant is broken or the payload is not processed within 10 s.
    pub fn apply(&mut self, data: &[u8]) {
        self.fill();
        let len_before = self.cache.len();
        let before = self.counts();
        let decoded = wire::decode(data).ok();

        // A sentinel from a fresh random origin (which no payload can claim) follows the
        // payload on the same ordered queue: once it is applied, the payload was processed.
        let sentinel = InstanceId::random();
        let marker = encoded_remove(sentinel, 1, "Fuzz:sentinel");
        // The witness's real next message, after whatever the payload claimed in its name.
        self.witness_seq += 1;
        let witness_seq = self.witness_seq;
        let witness = encoded_remove(WITNESS, witness_seq, "Fuzz:witness");
        self.bus.inject(Bytes::copy_from_slice(data));
        self.bus.inject(witness);
        self.bus.inject(marker);
        let events = &mut self.events;
        let (saw_rejected, witness_applied) = self.runtime.block_on(async {
            let wait = async {
                let (mut saw_rejected, mut witness_applied) = (false, false);
                loop {
                    match events.recv().await {
                        Ok(CacheEvent::Applied { origin, .. }) if origin == sentinel => {
                            return (saw_rejected, witness_applied);
                        }
                        // Applied after the payload: the payload's own event comes first.
                        Ok(CacheEvent::Applied { origin, seq, .. })
                            if origin == WITNESS && seq == witness_seq =>
                        {
                            witness_applied = true;
                        }
                        Ok(CacheEvent::Rejected) => saw_rejected = true,
                        Ok(_) => {}
                        Err(error) => panic!("cache events: {error}"),
                    }
                }
            };
            match tokio::time::timeout(PROCESS_TIMEOUT, wait).await {
                Ok(outcome) => outcome,
                Err(_) => panic!("the payload was not processed within {PROCESS_TIMEOUT:?}"),
            }
        });
        assert!(
            witness_applied,
            "the witness's next message (seq {witness_seq}) was not applied after {:?}",
            decoded
        );

        let after = self.counts();
        // After a payload that does not decode, the witness and the sentinel are received.
        let sentinel_counts = Counts {
            received: before.received + 2,
            ..before
        };
        match &decoded {
            None => {
                assert!(saw_rejected, "an undecodable payload raises Rejected");
                assert_eq!(
                    after,
                    Counts {
                        rejected: before.rejected + 1,
                        own: after.own,
                        ..sentinel_counts
                    },
                    "an undecodable payload is counted once, as rejected"
                );
            }
            Some(message) => {
                // Payload, witness and sentinel: three, each counted once.
                let moved = [
                    after.received - before.received,
                    after.heartbeats - before.heartbeats,
                    after.duplicates - before.duplicates,
                ];
                assert_eq!(
                    moved.iter().sum::<u64>(),
                    3,
                    "a decodable payload is counted once: {moved:?} for {message:?}"
                );
            }
        }
        assert_eq!(
            self.sent(),
            0,
            "nothing received is published again (only heartbeats answer a new peer)"
        );
        assert!(
            self.cache.len() <= len_before,
            "a message added entries: {} -> {}",
            len_before,
            self.cache.len()
        );
    }
}

impl Default for ApplyHarness {
    fn default() -> Self {
        ApplyHarness::new()
    }
}

/// The harness's own message from `origin`, numbered `seq`, removing `key`: encoded as it
/// travels.
fn encoded_remove(origin: InstanceId, seq: u64, key: &str) -> Bytes {
    let message = Message {
        origin,
        seq,
        sent_at_unix_micros: 0,
        origin_started_unix_ms: 0,
        ops: vec![Op::Remove {
            keys: vec![key.to_owned()],
        }],
    };
    match wire::encode(&message) {
        Ok(bytes) => bytes,
        Err(error) => panic!("a one-key remove encodes: {error}"),
    }
}

/// Seed inputs for the corpus: valid messages of every kind, so the fuzzer starts past the
/// header. They are committed in `fuzz/corpus/<target>/seed-<name>`; the facade's test
/// `crates/nearcache/tests/fuzz_corpus.rs` checks that the files match (and rewrites them with
/// `NEARCACHE_WRITE_SEEDS=1`).
pub fn seed_messages() -> Vec<(&'static str, Bytes)> {
    let origin = InstanceId::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    let message = |seq, ops| Message {
        origin,
        seq,
        sent_at_unix_micros: 1_700_000_000_000_000,
        origin_started_unix_ms: 1_700_000_000_000,
        ops,
    };
    let seeds = [
        (
            "heartbeat",
            Message::heartbeat(origin, 3, 1_700_000_000_000_000, 1),
        ),
        (
            "remove",
            message(
                1,
                vec![Op::Remove {
                    keys: vec![
                        "Fuzz:plain".into(),
                        "ProductService:search-(c1-red shoes-2)".into(),
                    ],
                }],
            ),
        ),
        (
            "region",
            message(
                2,
                vec![Op::ExpireRegion {
                    region: "fuzz".into(),
                }],
            ),
        ),
        (
            "region_key",
            message(
                3,
                vec![Op::ExpireRegionKey {
                    region: "fuzz".into(),
                    key: "s".into(),
                }],
            ),
        ),
        ("clear", message(4, vec![Op::Clear])),
        (
            "mixed",
            message(
                9,
                vec![
                    Op::Remove {
                        keys: vec!["a".into()],
                    },
                    Op::Clear,
                    Op::ExpireRegion { region: "r".into() },
                ],
            ),
        ),
    ];
    let mut seeds: Vec<(&'static str, Bytes)> = seeds
        .into_iter()
        .chain([
            (
                "goodbye",
                Message::goodbye(origin, 9, 1_700_000_000_000_000, 1),
            ),
            ("hello", Message::hello(origin, 0, 1_700_000_000_000_000, 1)),
            // The witness's name at the end of the number space.
            (
                "forged_max_seq",
                message(
                    u64::MAX,
                    vec![Op::Remove {
                        keys: vec!["Fuzz:plain".into()],
                    }],
                ),
            ),
        ])
        .filter_map(|(name, message)| wire::encode(&message).ok().map(|bytes| (name, bytes)))
        .collect();
    // Format version 2: signed (with a key the harness's checks do not hold).
    if let Ok(keys) = SigningKeys::new(b"a key the fuzzer does not hold".to_vec(), None)
        && let Ok(bytes) =
            wire::encode_signed(&message(5, vec![Op::Clear]), &WireLimits::DEFAULT, &keys)
    {
        seeds.push(("signed", bytes));
    }
    seeds
}
