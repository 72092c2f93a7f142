//! The replay log in Redis: a Redis Stream next to the channel, appended and published by one
//! server-side script, so a payload is in both or in neither.
//!
//! Two keys per channel, both carrying the channel's hash slot (so on a cluster they live on
//! the shard that owns the channel, and the script may touch both):
//!
//! - `{channel}:log` — the stream. Entry ids are `<epoch>-<index>`; each entry holds the
//!   payload as published (field `p`). Bounded with `XADD … MAXLEN ~ n`.
//! - `{channel}:log:head` — a hash: `epoch` (the server time in microseconds when the log was
//!   first written) and `n` (the last index handed out).
//!
//! The publish script numbers the payload (`HINCRBY n`), appends it and publishes it framed
//! with its position ([`wire::logged`](nearcache_backplane::wire::logged)). Indexes are dense,
//! so a receiver sees a skip at once. A Redis restarted without persistence loses both keys:
//! the next write starts a new epoch, and a reader holding a position of the old one is told
//! [`Uncovered::Recreated`] even once the new log has grown past its index.
//!
//! Each script runs by its SHA1 (`EVALSHA`), so a publish sends the payload, not the
//! script's text. A server that does not know the script — the first call, or after a restart
//! or `SCRIPT FLUSH` emptied its script cache — answers `NOSCRIPT`, and the call is made once
//! more in full (`EVAL`, which also caches it for the next ones): a [`ScriptCall`].

use std::sync::LazyLock;

use nearcache_backplane::{BackplaneError, LogEntry, LogPosition, LogRead, Uncovered};
use redis::{Cmd, Script, Value};

use crate::slot::slot_of;

/// A script that starts by reading the log's epoch from the head hash `$head` (a `KEYS`
/// entry) into `epoch` — setting it to the server's time in microseconds when the log was
/// never written — and goes on with `$rest`, where `head` names that hash.
macro_rules! with_epoch {
    ($head:literal, $rest:literal) => {
        concat!(
            "\nlocal head = ",
            $head,
            r"
local epoch = redis.call('HGET', head, 'epoch')
if not epoch then
  local t = redis.call('TIME')
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', head, 'epoch', epoch)
end",
            $rest
        )
    };
}

/// Numbers, appends and publishes one payload.
/// KEYS: stream, head. ARGV: payload, maxlen, channel, publish command.
const PUBLISH: &str = with_epoch!(
    "KEYS[2]",
    r"
local n = redis.call('HINCRBY', head, 'n', 1)
local id = epoch .. '-' .. n
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], id, 'p', ARGV[1])
return redis.call(ARGV[4], ARGV[3], 'NCL1' .. id .. '\n' .. ARGV[1])
"
);

/// The head: epoch and last index (creating the epoch if the log was never written).
/// KEYS: head.
const HEAD: &str = with_epoch!(
    "KEYS[1]",
    r"
return {epoch, tonumber(redis.call('HGET', head, 'n') or '0')}
"
);

/// The head and up to ARGV[3] entries after index ARGV[2] of epoch ARGV[1], read at once.
/// KEYS: stream, head. Returns {epoch, n, entries} ({'', 0, {}} when the log is gone).
const READ: &str = r"
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if not epoch then return {'', 0, {}} end
local n = tonumber(redis.call('HGET', KEYS[2], 'n') or '0')
if epoch ~= ARGV[1] then return {epoch, n, {}} end
return {epoch, n, redis.call('XRANGE', KEYS[1], '(' .. epoch .. '-' .. ARGV[2], '+', 'COUNT', ARGV[3])}
";

/// Entries read per round trip.
const PAGE: usize = 1000;

static PUBLISH_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(PUBLISH));
static HEAD_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(HEAD));
static READ_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(READ));

/// One call of a script: by its SHA1, and in full for a server that answers `NOSCRIPT`.
#[derive(Debug, Clone)]
pub(crate) struct ScriptCall {
    /// `EVALSHA sha1 numkeys keys… args…`.
    pub(crate) by_hash: Cmd,
    /// `EVAL script numkeys keys… args…`: runs it and caches it on the server.
    pub(crate) in_full: Cmd,
}

impl ScriptCall {
    /// A call of `script` (whose text is `code`) with `keys` and `args`.
    fn new(script: &Script, code: &str, keys: &[&[u8]], args: &[&[u8]]) -> Self {
        let build = |command: &str, first: &[u8]| {
            let mut cmd = redis::cmd(command);
            cmd.arg(first).arg(keys.len());
            for key in keys {
                cmd.arg(*key);
            }
            for arg in args {
                cmd.arg(*arg);
            }
            cmd
        };
        ScriptCall {
            by_hash: build("EVALSHA", script.get_hash().as_bytes()),
            in_full: build("EVAL", code.as_bytes()),
        }
    }
}

/// The log's keys and length for one channel.
#[derive(Debug, Clone)]
pub(crate) struct LogKeys {
    stream: String,
    head: String,
    max_len: usize,
}

impl LogKeys {
    /// The log of `channel`, or `None` when `max_len` is 0 or no key can share the
    /// channel's hash slot (a channel with braces but no valid hash tag).
    pub(crate) fn for_channel(channel: &str, max_len: usize) -> Option<Self> {
        if max_len == 0 {
            return None;
        }
        let tagged = slot_of(channel.as_bytes()) == slot_of(format!("{channel}:log").as_bytes());
        let base = if tagged && channel.contains('{') {
            channel.to_owned()
        } else {
            format!("{{{channel}}}")
        };
        let keys = LogKeys {
            stream: format!("{base}:log"),
            head: format!("{base}:log:head"),
            max_len,
        };
        let slot = slot_of(channel.as_bytes());
        if slot_of(keys.stream.as_bytes()) != slot || slot_of(keys.head.as_bytes()) != slot {
            tracing::warn!(
                channel,
                "the replay log cannot share this channel's hash slot (braces without a valid \
                 hash tag in its name): replay is off, every loss clears"
            );
            return None;
        }
        Some(keys)
    }

    /// The stream's key.
    pub(crate) fn stream(&self) -> &str {
        &self.stream
    }

    /// The publish script's call.
    pub(crate) fn publish_cmd(&self, command: &str, channel: &[u8], payload: &[u8]) -> ScriptCall {
        ScriptCall::new(
            &PUBLISH_SCRIPT,
            PUBLISH,
            &[self.stream.as_bytes(), self.head.as_bytes()],
            &[
                payload,
                self.max_len.to_string().as_bytes(),
                channel,
                command.as_bytes(),
            ],
        )
    }

    pub(crate) fn head_cmd(&self) -> ScriptCall {
        ScriptCall::new(&HEAD_SCRIPT, HEAD, &[self.head.as_bytes()], &[])
    }

    pub(crate) fn read_cmd(&self, after: &LogPosition) -> ScriptCall {
        ScriptCall::new(
            &READ_SCRIPT,
            READ,
            &[self.stream.as_bytes(), self.head.as_bytes()],
            &[
                after.epoch().to_string().as_bytes(),
                after.index().to_string().as_bytes(),
                PAGE.to_string().as_bytes(),
            ],
        )
    }
}

fn malformed(what: &str) -> BackplaneError {
    BackplaneError::unavailable(format!(
        "unexpected reply from the replay log script: {what}"
    ))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// The head script's reply.
pub(crate) fn parse_head(reply: &Value) -> Result<LogPosition, BackplaneError> {
    let Value::Array(items) = reply else {
        return Err(malformed("head is not an array"));
    };
    match items.as_slice() {
        [epoch, n] => {
            let epoch = text(epoch).and_then(|e| e.parse().ok());
            match (epoch, int(n)) {
                (Some(epoch), Some(n)) => Ok(LogPosition::new(epoch, n)),
                _ => Err(malformed("head fields")),
            }
        }
        _ => Err(malformed("head length")),
    }
}

/// One page read after `after`: what it means, and the last index of the log.
pub(crate) enum Page {
    /// The log cannot cover the gap.
    Uncovered(Uncovered),
    /// Entries after `after` (the first one right after it), and the log's last index.
    Entries(Vec<LogEntry>, u64),
}

/// The read script's reply for a read after `after`.
pub(crate) fn parse_page(reply: &Value, after: &LogPosition) -> Result<Page, BackplaneError> {
    let Value::Array(items) = reply else {
        return Err(malformed("read is not an array"));
    };
    let [epoch, n, entries] = items.as_slice() else {
        return Err(malformed("read length"));
    };
    let epoch = text(epoch).ok_or_else(|| malformed("epoch"))?;
    let n = int(n).ok_or_else(|| malformed("head index"))?;
    if epoch.parse::<u64>().ok() != Some(after.epoch()) || after.index() > n {
        return Ok(Page::Uncovered(Uncovered::Recreated));
    }
    let Value::Array(entries) = entries else {
        return Err(malformed("entries"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(malformed("entry"));
        };
        let [id, fields] = parts.as_slice() else {
            return Err(malformed("entry length"));
        };
        let id = text(id).ok_or_else(|| malformed("entry id"))?;
        let index = id
            .split_once('-')
            .and_then(|(_, index)| index.parse::<u64>().ok())
            .ok_or_else(|| malformed("entry id"))?;
        let payload = match fields {
            Value::Array(kv) => match kv.as_slice() {
                [_, Value::BulkString(payload)] => payload.clone(),
                _ => return Err(malformed("entry fields")),
            },
            _ => return Err(malformed("entry fields")),
        };
        out.push(LogEntry {
            position: LogPosition::new(after.epoch(), index),
            payload: payload.into(),
        });
    }
    let expected = after.index() + 1;
    let trimmed = match out.first() {
        Some(first) => first.position.index() != expected,
        None => n > after.index(),
    };
    if trimmed {
        return Ok(Page::Uncovered(Uncovered::Trimmed));
    }
    Ok(Page::Entries(out, n))
}

/// Reads every entry after `after` page by page with `read`, checking each page joins the
/// previous one.
pub(crate) async fn read_all<F, Fut>(
    after: &LogPosition,
    mut read: F,
) -> Result<LogRead, BackplaneError>
where
    F: FnMut(LogPosition) -> Fut,
    Fut: std::future::Future<Output = Result<Value, BackplaneError>>,
{
    let mut all = Vec::new();
    let mut from = *after;
    loop {
        let reply = read(from).await?;
        match parse_page(&reply, &from)? {
            Page::Uncovered(why) => return Ok(LogRead::Uncovered(why)),
            Page::Entries(entries, n) => {
                let done = entries.len() < PAGE;
                if let Some(last) = entries.last() {
                    from = last.position;
                }
                all.extend(entries);
                if done || from.index() >= n {
                    return Ok(LogRead::Covered(all));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keys_share_the_channels_slot() {
        for channel in [
            "nearcache:default:invalidations",
            "nearcache:{shop}:invalidations",
            "plain",
        ] {
            let keys = LogKeys::for_channel(channel, 10).unwrap();
            let slot = slot_of(channel.as_bytes());
            assert_eq!(slot_of(keys.stream.as_bytes()), slot, "{channel}");
            assert_eq!(slot_of(keys.head.as_bytes()), slot, "{channel}");
        }
        assert_eq!(
            LogKeys::for_channel("nearcache:default:invalidations", 10)
                .unwrap()
                .stream(),
            "{nearcache:default:invalidations}:log"
        );
        assert!(
            LogKeys::for_channel("x", 0).is_none(),
            "length 0 turns it off"
        );
    }

    fn entry(epoch: u64, index: u64) -> Value {
        Value::Array(vec![
            Value::BulkString(format!("{epoch}-{index}").into_bytes()),
            Value::Array(vec![
                Value::BulkString(b"p".to_vec()),
                Value::BulkString(vec![index as u8]),
            ]),
        ])
    }

    fn reply(epoch: &str, n: i64, entries: Vec<Value>) -> Value {
        Value::Array(vec![
            Value::BulkString(epoch.as_bytes().to_vec()),
            Value::Int(n),
            Value::Array(entries),
        ])
    }

    #[test]
    fn pages_are_covered_trimmed_or_recreated() {
        let after = LogPosition::new(7, 2);
        let Page::Entries(entries, n) =
            parse_page(&reply("7", 4, vec![entry(7, 3), entry(7, 4)]), &after).unwrap()
        else {
            panic!("covered");
        };
        assert_eq!(
            (entries.len(), n, entries[1].payload.as_ref()),
            (2, 4, &[4u8][..])
        );
        assert!(matches!(
            parse_page(&reply("7", 2, vec![]), &after).unwrap(),
            Page::Entries(e, 2) if e.is_empty()
        ));
        for (reply, why) in [
            (
                reply("7", 5, vec![entry(7, 4), entry(7, 5)]),
                Uncovered::Trimmed,
            ),
            (reply("7", 5, vec![]), Uncovered::Trimmed),
            (reply("8", 9, vec![]), Uncovered::Recreated),
            (reply("", 0, vec![]), Uncovered::Recreated),
            (reply("7", 1, vec![]), Uncovered::Recreated),
        ] {
            assert!(
                matches!(parse_page(&reply, &after).unwrap(), Page::Uncovered(w) if w == why),
                "{why:?}"
            );
        }
    }
}
