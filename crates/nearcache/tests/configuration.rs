//! Configuration files: docs/configuration.md matches the code (its tables are the defaults and
//! name every field; every TOML and JSON block it shows parses), and files written in the
//! former shape — the Redis settings in `[backplane]` — still load to the same settings.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nearcache::{
    BackplaneOptions, CacheOptions, LossPolicy, OnHardTimeout, RedisConfig, Secret, StoreOptions,
};

const DOC: &str = include_str!("../../../docs/configuration.md");

/// The rows of every `| `name` | default | … |` table in `doc`, with the `## ` heading they
/// are under: `(heading, name, default cell)`.
fn table_rows(doc: &str) -> Vec<(String, String, String)> {
    let mut heading = String::new();
    let mut rows = Vec::new();
    for line in doc.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            heading = title.to_owned();
        } else if let Some(row) = line.strip_prefix("| `") {
            let cells: Vec<&str> = row.split(" | ").collect();
            let name = cells[0].trim_end_matches('`').to_owned();
            let default = cells[1].trim().trim_matches('`').to_owned();
            rows.push((heading.clone(), name, default));
        }
    }
    rows
}

/// The code blocks of `doc` in `language`, with the `## ` heading they are under.
fn blocks(doc: &str, language: &str) -> Vec<(String, String)> {
    let fence = format!("```{language}");
    let mut heading = String::new();
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match &mut current {
            Some(block) if line == "```" => {
                found.push((heading.clone(), std::mem::take(block)));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None if line == fence => current = Some(String::new()),
            None => {
                if let Some(title) = line.strip_prefix("## ") {
                    heading = title.to_owned();
                }
            }
        }
    }
    found
}

/// The defaults, with the Redis section present (the tables list its defaults too) as a file
/// reads it: without a URL (a file has no default Redis).
fn defaults_with_redis() -> CacheOptions {
    CacheOptions {
        backplane: BackplaneOptions {
            redis: Some(RedisConfig {
                url: "".into(),
                ..RedisConfig::default()
            }),
            ..BackplaneOptions::default()
        },
        ..CacheOptions::default()
    }
}

fn sorted_keys(value: &serde_json::Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

#[test]
fn the_tables_are_the_defaults_and_name_every_field() {
    let rows = table_rows(DOC);
    // The four option tables, read as one TOML document, are the defaults.
    let (mut top, mut backplane, mut redis) = (
        String::new(),
        String::from("[backplane]\n"),
        String::from("[backplane.redis]\n"),
    );
    let mut names: [Vec<String>; 3] = Default::default();
    for (heading, name, default) in &rows {
        let section = match heading.as_str() {
            "Cache" => 0,
            h if h.starts_with("Store ") => 0,
            h if h.starts_with("Backplane ") => 1,
            h if h.starts_with("Redis ") => 2,
            _ => continue,
        };
        names[section].push(name.clone());
        let toml = match section {
            0 => &mut top,
            1 => &mut backplane,
            _ => &mut redis,
        };
        if default != "none" {
            toml.push_str(&format!("{name} = {default}\n"));
        }
    }
    let document = format!("{top}{backplane}{redis}");
    let from_tables: CacheOptions = toml::from_str(&document)
        .unwrap_or_else(|e| panic!("the tables' defaults do not parse: {e}\n{document}"));
    assert_eq!(
        from_tables,
        defaults_with_redis(),
        "a default in the tables is wrong"
    );

    // Every serialized field has a row, and every row a field.
    let json = serde_json::to_value(defaults_with_redis()).unwrap();
    let mut top_fields = sorted_keys(&json);
    top_fields.retain(|f| f != "backplane");
    let [mut top_names, mut backplane_names, mut redis_names] = names;
    top_names.sort();
    assert_eq!(top_names, top_fields, "the Cache and Store tables");
    backplane_names.sort();
    assert_eq!(
        backplane_names,
        sorted_keys(&json["backplane"]),
        "the Backplane table"
    );
    redis_names.sort();
    assert_eq!(
        redis_names,
        sorted_keys(&json["backplane"]["redis"]),
        "the Redis table"
    );
}

#[test]
fn every_block_parses_and_the_full_example_is_the_same_in_toml_and_json() {
    let tomls = blocks(DOC, "toml");
    assert!(tomls.len() >= 5, "{tomls:?}");
    let mut full_toml = None;
    for (heading, block) in &tomls {
        let options: CacheOptions =
            toml::from_str(block).unwrap_or_else(|e| panic!("{heading}: {e}\n{block}"));
        if heading.starts_with("Defaults in full") {
            assert_eq!(options, defaults_with_redis());
        }
        if heading.starts_with("A full example") {
            full_toml = Some(options);
        }
    }
    let jsons = blocks(DOC, "json");
    let [(_, json)] = &jsons[..] else {
        panic!("one JSON block: {jsons:?}");
    };
    let full_json: CacheOptions = serde_json::from_str(json).unwrap();
    let full = full_toml.expect("the full example in TOML");
    assert_eq!(full, full_json);

    // Every option in it differs from its default, so each one was read.
    let written = serde_json::to_value(&full).unwrap();
    let defaults = serde_json::to_value(defaults_with_redis()).unwrap();
    for (section, path) in [
        ("top level", vec![]),
        ("backplane", vec!["backplane"]),
        ("redis", vec!["backplane", "redis"]),
    ] {
        let at = |value: &serde_json::Value| {
            path.iter()
                .fold(value.clone(), |value, key| value[*key].clone())
        };
        let (written, defaults) = (at(&written), at(&defaults));
        for (key, value) in written.as_object().unwrap() {
            if key == "backplane" || key == "redis" || key == "enabled" {
                continue; // sections; `enabled = false` would make the example a pass-through
            }
            assert_ne!(
                Some(value),
                defaults.get(key),
                "{section}.{key} is at its default"
            );
        }
    }
    let redis = full.backplane.redis.as_ref().unwrap();
    assert_eq!(redis.channel_name(), "team-x:catalog");
    assert_eq!(full.store.shards, Some(16));
    assert_eq!(
        full.backplane.signing_key.as_ref().map(|k| k.expose()),
        Some("a long random secret shared by the fleet")
    );
}

/// A configuration file as docs/configuration.md's "Defaults in full" showed it before the
/// Redis settings had their own section, every commented-out option set.
const FORMER_SHAPE: &str = r#"
enabled = true
time_to_idle = "15m"
time_to_live = "1h"
max_capacity = 10000
max_weight = 1000000
cache_none = true
purge_interval = "1m"
fail_safe_max_duration = "1h"
fail_safe_throttle = "30s"
hard_timeout = "2s"
eager_refresh_threshold = 0.8

[backplane]
redis_url = "redis://cache-user:secret@redis.internal:6379/0"
channel = "nearcache:default:invalidations"
app = "default"
heartbeat_interval = "5s"
heartbeat_echo_intervals = 3
signing_key = "a long random secret shared by the fleet"
previous_signing_key = "the secret being rotated out"
publish_timeout = "1s"
outbox_capacity = 100000
max_batch = 4096
max_staleness = "30s"
on_loss = "clear"
replay = true
replay_timeout = "5s"
replay_log_len = 100000
reconnect_initial_delay = "100ms"
reconnect_max_delay = "5s"
connect_timeout = "5s"
ping_interval = "1s"
sharded = false
subscriber_queue = 1024
tls_ca_file = "/etc/ssl/redis/ca.pem"
"#;

/// The former docs' "service behind a load balancer" example, the old expiry name included
/// (as its environment-variable form used), and every Redis value away from its default.
const FORMER_EXAMPLE: &str = r#"
sliding_expiration = "15m"
max_capacity = 50000
name = "catalog"
log_keys = true

[backplane]
redis_url = "rediss://catalog-cache:secret@redis.internal:6380"
app = "catalog-api"          # channel nearcache:catalog-api:invalidations
max_staleness = "30s"
tls_ca_file = "/etc/ssl/redis/ca.pem"
connect_timeout = "2s"
ping_interval = "300ms"
sharded = true
subscriber_queue = 99
replay_log_len = 7
"#;

/// The store settings of the catalog service in [`FORMER_EXAMPLE`] (and in its
/// environment-variable form): idle for 15 minutes, 50,000 entries, keys logged.
fn catalog_store() -> StoreOptions {
    StoreOptions {
        time_to_idle: Some(Duration::from_secs(15 * 60)),
        max_capacity: 50_000,
        log_keys: true,
        ..StoreOptions::default()
    }
}

/// The catalog service's Redis, as [`FORMER_EXAMPLE`] gives it.
const CATALOG_REDIS_URL: &str = "rediss://catalog-cache:secret@redis.internal:6380";

#[test]
fn a_file_in_the_former_shape_loads_every_setting() {
    let options: CacheOptions = toml::from_str(FORMER_SHAPE).unwrap();
    assert_eq!(
        options,
        CacheOptions {
            name: None,
            store: StoreOptions {
                enabled: true,
                time_to_idle: Some(Duration::from_secs(15 * 60)),
                time_to_live: Some(Duration::from_secs(3600)),
                max_capacity: 10_000,
                max_weight: Some(1_000_000),
                cache_none: true,
                purge_interval: Duration::from_secs(60),
                shards: None,
                log_keys: false,
                fail_safe_max_duration: Some(Duration::from_secs(3600)),
                fail_safe_throttle: Duration::from_secs(30),
                hard_timeout: Some(Duration::from_secs(2)),
                soft_timeout: None,
                hard_timeout_action: OnHardTimeout::Cancel,
                eager_refresh_threshold: Some(0.8),
            },
            backplane: BackplaneOptions {
                heartbeat_interval: Duration::from_secs(5),
                publish_timeout: Duration::from_secs(1),
                heartbeat_echo_intervals: 3,
                signing_key: Some(Secret::new("a long random secret shared by the fleet")),
                previous_signing_key: Some(Secret::new("the secret being rotated out")),
                outbox_capacity: 100_000,
                max_batch: 4096,
                max_staleness: Some(Duration::from_secs(30)),
                on_loss: LossPolicy::Clear,
                replay: true,
                replay_timeout: Duration::from_secs(5),
                reconnect_initial_delay: Duration::from_millis(100),
                reconnect_max_delay: Duration::from_secs(5),
                redis: Some(RedisConfig {
                    url: "redis://cache-user:secret@redis.internal:6379/0".into(),
                    app: "default".into(),
                    channel: Some("nearcache:default:invalidations".into()),
                    connect_timeout: Duration::from_secs(5),
                    ping_interval: Duration::from_secs(1),
                    sharded: false,
                    subscriber_queue: 1024,
                    tls_ca_file: Some("/etc/ssl/redis/ca.pem".into()),
                    replay_log_len: 100_000,
                    ..RedisConfig::default()
                }),
            },
        }
    );

    let example: CacheOptions = toml::from_str(FORMER_EXAMPLE).unwrap();
    assert_eq!(
        example,
        CacheOptions {
            name: Some("catalog".into()),
            store: catalog_store(),
            backplane: BackplaneOptions {
                max_staleness: Some(Duration::from_secs(30)),
                redis: Some(RedisConfig {
                    url: CATALOG_REDIS_URL.into(),
                    app: "catalog-api".into(),
                    tls_ca_file: Some("/etc/ssl/redis/ca.pem".into()),
                    connect_timeout: Duration::from_secs(2),
                    ping_interval: Duration::from_millis(300),
                    sharded: true,
                    subscriber_queue: 99,
                    replay_log_len: 7,
                    ..RedisConfig::default()
                }),
                ..BackplaneOptions::default()
            },
        }
    );
    let redis = example.backplane.redis.unwrap();
    assert_eq!(redis.channel_name(), "nearcache:catalog-api:invalidations");

    // JSON in the former shape too.
    let json: CacheOptions = serde_json::from_str(
        r#"{ "backplane": { "redis_url": "redis://h:1", "app": "shop", "max_staleness": "30s" } }"#,
    )
    .unwrap();
    assert_eq!(
        json.backplane
            .redis
            .map(|r| (r.url.as_str().to_owned(), r.channel_name())),
        Some((
            "redis://h:1".to_owned(),
            "nearcache:shop:invalidations".to_owned()
        ))
    );
    assert_eq!(json.backplane.max_staleness, Some(Duration::from_secs(30)));
}

/// A writer the test's log events go to.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn each_former_key_is_named_once_in_a_warning_with_its_new_place() {
    // tracing caches each callsite's interest process-wide; while one dispatcher is
    // registered it is asked of the thread that reaches the callsite, so a sibling test
    // loading a former-shape file without a subscriber could cache "never" for these
    // warnings and this test would see none (tokio-rs/tracing#3611). With a second registered
    // dispatcher every interest is the union of all of them.
    let _anchor = tracing::Dispatch::new(tracing_subscriber::registry());
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        toml::from_str::<CacheOptions>(
            "[backplane]\nredis_url = \"redis://h:1\"\nsharded = true\n",
        )
        .unwrap();
    });
    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<&str> = logged.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 2, "{logged}");
    assert!(
        warnings[0].contains("backplane.redis_url") && warnings[0].contains("backplane.redis.url"),
        "{logged}"
    );
    assert!(
        warnings[1].contains("backplane.sharded")
            && warnings[1].contains("backplane.redis.sharded"),
        "{logged}"
    );
    // A file in the current shape warns of nothing.
    let quiet = Captured::default();
    let writer = quiet.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        toml::from_str::<CacheOptions>("[backplane.redis]\nurl = \"redis://h:1\"\n").unwrap();
    });
    assert!(quiet.0.lock().unwrap().is_empty());
}

#[test]
fn a_file_giving_both_spellings_is_refused_naming_the_key() {
    let both =
        "[backplane]\nredis_url = \"redis://old:1\"\n[backplane.redis]\nurl = \"redis://new:1\"\n";
    let err = toml::from_str::<CacheOptions>(both)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("backplane.redis_url") && err.contains("backplane.redis.url"),
        "{err}"
    );
    // Also when the former key is another one than the URL.
    let both = "[backplane]\napp = \"shop\"\n[backplane.redis]\nurl = \"redis://new:1\"\n";
    let err = toml::from_str::<CacheOptions>(both)
        .unwrap_err()
        .to_string();
    assert!(err.contains("backplane.app"), "{err}");
    // And the expiry names, as before.
    let both = "time_to_live = \"1m\"\nabsolute_expiration = \"2m\"\n";
    assert!(toml::from_str::<CacheOptions>(both).is_err());
}

/// `shards` reaches the store from the builder and from a file: with a weight budget of 100,
/// an entry weighing 50 fits one shard's share when there is one shard, and not when the
/// budget is split over 64 (the shard count is what decides it).
#[test]
fn shards_are_reachable_through_the_builder_and_the_file() {
    let weighted = |shards: Option<usize>| CacheOptions {
        store: StoreOptions {
            max_weight: Some(100),
            shards,
            ..StoreOptions::default()
        },
        ..CacheOptions::default()
    };
    let stored = |cache: &nearcache::Cache| {
        let key = nearcache::Key::from_text("heavy");
        cache.set_with(&key, 1_u8, |entry| {
            entry.weight(50);
        });
        cache.get::<u8>(&key).unwrap().is_some()
    };
    let one = nearcache::Cache::builder()
        .options(weighted(None))
        .shards(1)
        .build()
        .unwrap();
    assert!(stored(&one), "one shard holds the whole budget");
    let many = nearcache::Cache::builder()
        .options(weighted(None))
        .shards(64)
        .build()
        .unwrap();
    assert!(!stored(&many), "64 shards hold 1/64 of it each");

    let from_file: CacheOptions = toml::from_str("max_weight = 100\nshards = 64").unwrap();
    assert_eq!(from_file, weighted(Some(64)));
    let many = nearcache::Cache::new(from_file).unwrap();
    assert!(!stored(&many), "the file's shards reach the store");

    let zero = nearcache::Cache::builder().shards(0).build().unwrap_err();
    assert!(
        matches!(
            zero,
            nearcache::BuildError::InvalidOptions(nearcache::OptionsError::ZeroShards)
        ),
        "{zero:?}"
    );
}

/// A Redis section that names no URL — the former shape without `redis_url`, or a
/// `[backplane.redis]` section without `url` — loads (its other keys are kept, for a URL set
/// in code), but `connect()` refuses it with `NoRedisUrl` instead of connecting to a Redis on
/// localhost, which in production would be some other Redis or none.
#[tokio::test]
async fn a_redis_section_without_a_url_is_refused_at_connect_not_sent_to_localhost() {
    for text in [
        "[backplane]\napp = \"shop\"\nsharded = true\n",
        "[backplane.redis]\napp = \"shop\"\nsharded = true\n",
    ] {
        let options: CacheOptions = toml::from_str(text).unwrap();
        let err = nearcache::Cache::builder()
            .options(options.clone())
            .connect()
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(
            matches!(err, nearcache::BuildError::NoRedisUrl),
            "{text}: {err:?}"
        );
        assert!(err.to_string().contains("backplane.redis.url"), "{err}");
        let mut redis = options.backplane.redis.unwrap();
        assert!(
            (redis.sharded, redis.app.as_str()) == (true, "shop"),
            "{text}"
        );
        redis.url = "redis://h:1".into();
        assert_eq!(redis.channel_name(), "nearcache:shop:invalidations");
    }
}

/// Options written out (a "show me my configuration" endpoint, a log line as JSON) show no
/// secret: the signing keys as `***`, the URL with its password as `***`. Read back, such a
/// copy fails loudly (a 3-byte signing key is refused) rather than working with a wrong key.
#[test]
fn written_out_options_show_no_secret() {
    let options: CacheOptions = toml::from_str(
        "[backplane]\nsigning_key = \"fleet-secret-0123456789\"\n\
         previous_signing_key = \"older-secret-0123456789\"\n\
         [backplane.redis]\nurl = \"rediss://app:hunter2@redis.internal:6380/0\"\n",
    )
    .unwrap();
    let written = [
        toml::to_string(&options).unwrap(),
        serde_json::to_string(&options).unwrap(),
    ];
    for text in &written {
        for secret in ["hunter2", "fleet-secret", "older-secret"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(
            text.contains("rediss://app:***@redis.internal:6380/0"),
            "{text}"
        );
    }
    let read_back: CacheOptions = toml::from_str(&written[0]).unwrap();
    let err = nearcache::Cache::builder()
        .options(read_back)
        .build()
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            err,
            nearcache::BuildError::InvalidBackplaneOption {
                option: "signing_key" | "previous_signing_key",
                ..
            }
        ),
        "{err:?}"
    );
}

/// A `backplane` of the wrong shape is described by the public type a reader can look up,
/// not by the private struct that reads the former keys beside the current ones.
#[test]
fn a_malformed_backplane_section_names_backplane_options() {
    for text in [r#"{ "backplane": null }"#, r#"{ "backplane": 5 }"#] {
        let err = serde_json::from_str::<CacheOptions>(text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("BackplaneOptions") && !err.contains("Section"),
            "{text}: {err}"
        );
    }
}

/// Options read from environment variables through the `config` crate, as
/// docs/configuration.md shows: `config` with `try_parsing(true)`, over a given set of
/// variables instead of the process's.
fn from_env(vars: &[(&str, &str)], try_parsing: bool) -> Result<CacheOptions, config::ConfigError> {
    let vars = vars
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    config::Config::builder()
        .add_source(
            config::Environment::with_prefix("CACHE")
                .separator("__")
                .try_parsing(try_parsing)
                .source(Some(vars)),
        )
        .build()?
        .try_deserialize()
}

/// Every level reads from the environment (numbers and booleans once `config` parses them:
/// serde hands a flattened struct's values over as the text they were), the former spellings
/// too, and a misspelt variable at any level is refused by name.
#[test]
fn environment_variables_through_the_config_crate_read_every_level() {
    let vars = [
        ("CACHE__TIME_TO_IDLE", "15m"),
        ("CACHE__MAX_CAPACITY", "50000"),
        ("CACHE__LOG_KEYS", "true"),
        ("CACHE__BACKPLANE__MAX_STALENESS", "30s"),
        ("CACHE__BACKPLANE__MAX_BATCH", "100"),
        ("CACHE__BACKPLANE__REDIS__URL", CATALOG_REDIS_URL),
        ("CACHE__BACKPLANE__REDIS__APP", "catalog-api"),
        ("CACHE__BACKPLANE__REDIS__SUBSCRIBER_QUEUE", "99"),
    ];
    let expected = CacheOptions {
        store: catalog_store(),
        backplane: BackplaneOptions {
            max_staleness: Some(Duration::from_secs(30)),
            max_batch: 100,
            redis: Some(RedisConfig {
                url: CATALOG_REDIS_URL.into(),
                app: "catalog-api".into(),
                subscriber_queue: 99,
                ..RedisConfig::default()
            }),
            ..BackplaneOptions::default()
        },
        ..CacheOptions::default()
    };
    assert_eq!(from_env(&vars, true).unwrap(), expected);
    // Without try_parsing, a number stays text and is refused.
    let err = from_env(&vars, false).unwrap_err().to_string();
    assert!(err.contains("invalid type: string"), "{err}");

    // The former spellings, as the docs' environment example used to write them.
    let former = from_env(
        &[
            ("CACHE__SLIDING_EXPIRATION", "15m"),
            ("CACHE__BACKPLANE__REDIS_URL", "redis://h:1"),
            ("CACHE__BACKPLANE__APP", "catalog-api"),
            ("CACHE__BACKPLANE__MAX_STALENESS", "30s"),
        ],
        true,
    )
    .unwrap();
    assert_eq!(
        former.store.time_to_idle,
        Some(Duration::from_secs(15 * 60))
    );
    let redis = former.backplane.redis.unwrap();
    assert_eq!(redis.url.as_str(), "redis://h:1");
    assert_eq!(redis.channel_name(), "nearcache:catalog-api:invalidations");

    for (var, misspelt) in [
        ("CACHE__MAX_CAPACTY", "max_capacty"),
        ("CACHE__TIME_TO_LVE", "time_to_lve"),
        ("CACHE__BACKPLANE__MAX_BATHC", "max_bathc"),
        ("CACHE__BACKPLANE__REDIS__URI", "uri"),
    ] {
        let err = from_env(&[(var, "1")], true).unwrap_err().to_string();
        assert!(err.contains(misspelt), "{var}: {err}");
    }
}
