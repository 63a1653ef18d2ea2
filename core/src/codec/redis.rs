//! Redis as values: the commands the node sends ([`Call`]), the replies it
//! reads back ([`Reply`]), the keys each room's data lives under, and the
//! Lua scripts that run next to the data.
//!
//! No Redis client here: a runtime turns a [`Call`] into one command on
//! the wire, however its client library spells that, and turns each answer
//! into a [`Reply`]. Everything Redis-specific that is a decision (which
//! keys, which script, what a reply means) is made here and in the hub.
//!
//! **Keys** share the room's hash tag (`{room}`), so every key of a room
//! lands in one Redis Cluster slot and one script may touch them all.
//! Pub/Sub channels are not keys and keep the tutorial server's names.

use bytes::Bytes;

/// One Redis command: its arguments, the command name first.
#[derive(Clone, PartialEq, Eq)]
pub struct Call(pub Vec<Bytes>);

impl Call {
    /// `PUBLISH channel payload`.
    pub fn publish(channel: &str, payload: Bytes) -> Call {
        Call(vec![
            Bytes::from_static(b"PUBLISH"),
            Bytes::copy_from_slice(channel.as_bytes()),
            payload,
        ])
    }

    /// `EVALSHA sha numkeys keys… args…` for one of [`SCRIPTS`].
    pub fn script(script: &Script, keys: &[&str], args: Vec<Bytes>) -> Call {
        let mut v = Vec::with_capacity(3 + keys.len() + args.len());
        v.push(Bytes::from_static(b"EVALSHA"));
        v.push(Bytes::from(script.sha1()));
        v.push(Bytes::from(keys.len().to_string()));
        v.extend(keys.iter().map(|k| Bytes::copy_from_slice(k.as_bytes())));
        v.extend(args);
        Call(v)
    }

    /// A command from its parts.
    pub fn cmd(parts: &[&[u8]]) -> Call {
        Call(parts.iter().map(|p| Bytes::copy_from_slice(p)).collect())
    }

    /// The command's name (`PUBLISH`, `EVALSHA`, …).
    pub fn name(&self) -> &[u8] {
        self.0.first().map_or(&[][..], |b| &b[..])
    }

    /// The channel of a `PUBLISH`.
    pub fn published_channel(&self) -> Option<&[u8]> {
        (self.name() == b"PUBLISH").then(|| self.0.get(1).map(|b| &b[..]))?
    }
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Payloads may be large: the name and the argument count only.
        write!(
            f,
            "Call({} +{})",
            String::from_utf8_lossy(self.name()),
            self.0.len().saturating_sub(1)
        )
    }
}

/// A Redis reply, as the node reads it. RESP3's extra types map onto
/// these (a map to an array of pairs, a double or big number to its text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Int(i64),
    /// A bulk or simple string, binary-safe.
    Data(Bytes),
    Array(Vec<Reply>),
    /// An error reply (`ERR …`, `NOSCRIPT …`).
    Error(String),
}

impl Reply {
    /// An integer, also from a string holding one (Redis sends both).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            Reply::Data(d) => std::str::from_utf8(d).ok()?.parse().ok(),
            _ => None,
        }
    }

    pub fn as_data(&self) -> Option<&[u8]> {
        match self {
            Reply::Data(d) => Some(d),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_data()?).ok()
    }

    pub fn as_array(&self) -> Option<&[Reply]> {
        match self {
            Reply::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Whether the server no longer has a script (its cache was flushed or
    /// the server restarted): the link must reload them.
    pub fn is_noscript(&self) -> bool {
        matches!(self, Reply::Error(e) if e.starts_with("NOSCRIPT"))
    }
}

/// A Lua script the node runs by its SHA-1 (`EVALSHA`). A runtime loads
/// every one of [`SCRIPTS`] (`SCRIPT LOAD`) on each new link, before the
/// link carries anything else.
#[derive(Debug)]
pub struct Script {
    pub name: &'static str,
    pub source: &'static str,
}

impl Script {
    /// The script's SHA-1, in lowercase hex, as Redis names it.
    pub fn sha1(&self) -> String {
        use sha1::Digest;
        let digest = sha1::Sha1::digest(self.source.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A publish into a room that keeps history, in one atomic step: the next
/// offset of the room's stream, the entry appended (capped), the payload
/// published with its offset and epoch, and (for an idempotent publish)
/// the result kept for a retry.
///
/// KEYS: stream, meta, result (the idempotency key's; any key of the
/// room's tag when not idempotent).
/// ARGV: payload without its closing `}`, history size, history ttl (s),
/// channel, meta ttl (s, 0: none), epoch for a new stream, result ttl (s;
/// 0: not idempotent).
/// Returns `{offset, epoch, from_cache}`.
pub const PUBLISH_SCRIPT: Script = Script {
    name: "publish",
    source: r#"
local stream, meta, result = KEYS[1], KEYS[2], KEYS[3]
if ARGV[7] ~= '0' then
  local r = redis.call('hmget', result, 'o', 'e')
  if r[1] then return {tonumber(r[1]), r[2], 1} end
end
local epoch = redis.call('hget', meta, 'e')
if not epoch then
  epoch = ARGV[6]
  redis.call('hset', meta, 'e', epoch)
end
local top = redis.call('hincrby', meta, 's', 1)
if tonumber(ARGV[5]) > 0 then redis.call('expire', meta, ARGV[5]) end
if top == 1 then redis.call('del', stream) end
local payload = ARGV[1] .. ',"offset":' .. top .. ',"epoch":"' .. epoch .. '"}'
redis.call('xadd', stream, 'MAXLEN', ARGV[2], top, 'd', payload)
redis.call('expire', stream, ARGV[3])
redis.call('publish', ARGV[4], payload)
if ARGV[7] ~= '0' then
  redis.call('hset', result, 'o', top, 'e', epoch)
  redis.call('expire', result, ARGV[7])
end
return {top, epoch, 0}
"#,
};

/// A read of a room's history: the stream's top offset and epoch (made
/// now if the room has none, so that a subscriber's epoch is the one the
/// next publish uses), and up to `limit` entries.
///
/// KEYS: stream, meta. ARGV: since offset (entries after it; 0: from the
/// start), limit (0: none, only the top), reverse (`1`: newest first,
/// before `since` when it is not 0), epoch for a new stream, meta ttl (s).
/// Returns `{top, epoch, entries}`, entries as `XRANGE` gives them.
pub const HISTORY_SCRIPT: Script = Script {
    name: "history",
    source: r#"
local stream, meta = KEYS[1], KEYS[2]
local m = redis.call('hmget', meta, 's', 'e')
local top, epoch = tonumber(m[1]) or 0, m[2]
if not epoch then
  epoch = ARGV[4]
  redis.call('hset', meta, 'e', epoch)
end
if tonumber(ARGV[5]) > 0 then redis.call('expire', meta, ARGV[5]) end
local limit = tonumber(ARGV[2])
local since = tonumber(ARGV[1])
local entries = {}
if limit > 0 then
  if ARGV[3] == '1' then
    local from = '+'
    if since > 0 then from = '(' .. since end
    entries = redis.call('xrevrange', stream, from, '-', 'COUNT', limit)
  else
    entries = redis.call('xrange', stream, '(' .. since, '+', 'COUNT', limit)
  end
end
return {top, epoch, entries}
"#,
};

/// A room's history removed (the stream; the meta stays, so offsets go on
/// from where they were and a subscriber's position is still judged).
pub fn history_remove(keys: &HistoryKeys) -> Call {
    Call::cmd(&[b"DEL", keys.stream.as_bytes()])
}

/// The Lua that prunes an expiring hash by its sorted set of expiries:
/// every entry whose expiry is past is removed from both (one call per
/// entry, so that no count of them overflows Lua's stack). Needs `data`,
/// `exp` and `now` in scope.
macro_rules! prune_by_expiry {
    () => {
        r#"
local gone = redis.call('zrangebyscore', exp, '-inf', now)
for i = 1, #gone do redis.call('hdel', data, gone[i]) end
if #gone > 0 then redis.call('zremrangebyscore', exp, '-inf', now) end
"#
    };
}

/// Adds (or refreshes) entries of an expiring hash, in one step (a room's
/// presence, and the fleet's node announcements, [`FleetKeys`]).
///
/// Where the server has per-field expiry (Redis 7.4 and later; the script
/// asks the server it runs on, `redis.REDIS_VERSION_NUM`), each client's
/// info is a field of the hash with the ttl on the field (`HEXPIRE`), and
/// the server drops expired fields itself. Elsewhere the expiries (the
/// server's clock plus the ttl) are a sorted set beside the hash, and
/// entries already expired are pruned here. A hash written the second way
/// and then served by a server with per-field expiry (an upgrade) is
/// carried over on its first add: the sorted set's expiries move onto the
/// fields and the set is deleted. Both keys live as long as the ttl.
///
/// KEYS: hash, sorted set. ARGV: ttl (s), then client, info pairs.
/// Returns the number of clients present (fleet-wide, after pruning; with
/// per-field expiry it may still count fields past their ttl that the
/// server has not reclaimed yet).
pub const PRESENCE_ADD_SCRIPT: Script = Script {
    name: "presence_add",
    source: concat!(
        r#"
local data, exp = KEYS[1], KEYS[2]
local now = tonumber(redis.call('time')[1])
local ttl = tonumber(ARGV[1])
if (redis.REDIS_VERSION_NUM or 0) >= 459776 then
  if redis.call('exists', exp) == 1 then
    local old = redis.call('zrange', exp, 0, -1, 'WITHSCORES')
    for i = 1, #old, 2 do
      local left = tonumber(old[i + 1]) - now
      if left > 0 then
        redis.call('hexpire', data, left, 'FIELDS', 1, old[i])
      else
        redis.call('hdel', data, old[i])
      end
    end
    redis.call('del', exp)
  end
  for i = 2, #ARGV, 2 do
    redis.call('hset', data, ARGV[i], ARGV[i + 1])
    redis.call('hexpire', data, ttl, 'FIELDS', 1, ARGV[i])
  end
  redis.call('expire', data, ttl)
  return redis.call('hlen', data)
end
"#,
        prune_by_expiry!(),
        r#"
for i = 2, #ARGV, 2 do
  redis.call('hset', data, ARGV[i], ARGV[i + 1])
  redis.call('zadd', exp, now + ttl, ARGV[i])
end
redis.call('expire', data, ttl)
redis.call('expire', exp, ttl)
return redis.call('hlen', data)
"#
    ),
};

/// Removes clients from a room's presence (from the hash, and from the
/// sorted set of expiries where there is one). KEYS: hash, sorted set.
/// ARGV: the clients. Returns the number left.
pub const PRESENCE_REMOVE_SCRIPT: Script = Script {
    name: "presence_remove",
    source: r#"
local data, exp = KEYS[1], KEYS[2]
for i = 1, #ARGV do
  redis.call('hdel', data, ARGV[i])
  redis.call('zrem', exp, ARGV[i])
end
return redis.call('hlen', data)
"#,
};

/// An expiring hash read (a room's presence, the fleet's announcements):
/// expired entries (a crashed node's) pruned where expiries are a sorted
/// set (with per-field expiry the server hides them itself), then every
/// entry. KEYS: hash, sorted set. Returns `HGETALL`'s flat client, info
/// list.
pub const PRESENCE_GET_SCRIPT: Script = Script {
    name: "presence_get",
    source: concat!(
        r#"
local data, exp = KEYS[1], KEYS[2]
local now = tonumber(redis.call('time')[1])
"#,
        prune_by_expiry!(),
        r#"
return redis.call('hgetall', data)
"#
    ),
};

/// An idempotent publish into a room without history: published only if
/// the idempotency key's result key is new (it is then kept for the ttl).
///
/// KEYS: result. ARGV: channel, payload, result ttl (s).
/// Returns 1 when published, 0 for a retry.
pub const PUBLISH_ONCE_SCRIPT: Script = Script {
    name: "publish_once",
    source: r#"
if redis.call('set', KEYS[1], '1', 'NX', 'EX', ARGV[3]) then
  redis.call('publish', ARGV[1], ARGV[2])
  return 1
end
return 0
"#,
};

/// Every script a link loads.
pub const SCRIPTS: [&Script; 6] = [
    &PUBLISH_SCRIPT,
    &HISTORY_SCRIPT,
    &PUBLISH_ONCE_SCRIPT,
    &PRESENCE_ADD_SCRIPT,
    &PRESENCE_REMOVE_SCRIPT,
    &PRESENCE_GET_SCRIPT,
];

/// The keys of the fleet's node announcements (one hash tag, one slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetKeys {
    pub data: String,
    pub expiry: String,
}

impl FleetKeys {
    pub fn new(prefix: &str) -> FleetKeys {
        FleetKeys {
            data: format!("{prefix}__roomcast.nodes.{{fleet}}"),
            expiry: format!("{prefix}__roomcast.nodes_exp.{{fleet}}"),
        }
    }
}

/// The keys of a room's presence (the room's hash tag, like its history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceKeys {
    pub data: String,
    pub expiry: String,
}

impl PresenceKeys {
    pub fn new(prefix: &str, room: &str) -> PresenceKeys {
        PresenceKeys {
            data: format!("{prefix}__roomcast.presence.{{{room}}}"),
            expiry: format!("{prefix}__roomcast.presence_exp.{{{room}}}"),
        }
    }
}

/// The keys of a room's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryKeys {
    pub stream: String,
    pub meta: String,
}

impl HistoryKeys {
    pub fn new(prefix: &str, room: &str) -> HistoryKeys {
        HistoryKeys {
            stream: format!("{prefix}__roomcast.history.{{{room}}}"),
            meta: format!("{prefix}__roomcast.meta.{{{room}}}"),
        }
    }

    /// The key of an idempotent publish's result.
    pub fn result(prefix: &str, room: &str, key: &str) -> String {
        format!("{prefix}__roomcast.result.{{{room}}}.{key}")
    }
}

/// An entry of `XRANGE` (`[id, [field, value, …]]`) as an offset and the
/// payload of its `d` field. `None`: not an entry this node wrote.
pub fn stream_entry(entry: &Reply) -> Option<(u64, &[u8])> {
    let parts = entry.as_array()?;
    let id = parts.first()?.as_str()?;
    let offset = id.split_once('-').map_or(id, |(o, _)| o).parse().ok()?;
    let fields = parts.get(1)?.as_array()?;
    let mut it = fields.chunks_exact(2);
    let d = it.find(|kv| kv[0].as_data() == Some(b"d"))?;
    Some((offset, d[1].as_data()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_named_by_their_sha1() {
        let s = Script {
            name: "t",
            source: "return 1",
        };
        // `redis-cli SCRIPT LOAD "return 1"`
        assert_eq!(s.sha1(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        let c = Call::script(&s, &["k"], vec![Bytes::from_static(b"a")]);
        assert_eq!(c.0.len(), 5);
        assert_eq!(&c.0[2][..], b"1");
    }

    #[test]
    fn keys_share_the_room_hash_tag() {
        let k = HistoryKeys::new("p:", "chat:1");
        assert_eq!(k.stream, "p:__roomcast.history.{chat:1}");
        assert_eq!(k.meta, "p:__roomcast.meta.{chat:1}");
        assert_eq!(
            HistoryKeys::result("p:", "chat:1", "k"),
            "p:__roomcast.result.{chat:1}.k"
        );
    }

    #[test]
    fn entries_parse_and_odd_ones_are_refused() {
        let e = Reply::Array(vec![
            Reply::Data(Bytes::from_static(b"7-0")),
            Reply::Array(vec![
                Reply::Data(Bytes::from_static(b"d")),
                Reply::Data(Bytes::from_static(b"{}")),
            ]),
        ]);
        assert_eq!(stream_entry(&e), Some((7, &b"{}"[..])));
        assert_eq!(stream_entry(&Reply::Int(1)), None);
        let no_d = Reply::Array(vec![
            Reply::Data(Bytes::from_static(b"7-0")),
            Reply::Array(vec![]),
        ]);
        assert_eq!(stream_entry(&no_d), None);
    }
}
