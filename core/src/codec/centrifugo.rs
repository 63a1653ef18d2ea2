//! Centrifugo's bidirectional client protocol, JSON encoding (WebSocket
//! subprotocol `centrifuge-json`, the default): the commands a client sends
//! and the replies and pushes a server sends, with the field names of
//! `centrifugal/protocol`'s `client.proto` / `client.pb.go` JSON tags, so that
//! the real SDKs (`centrifuge` on npm, `centrifuge-python`, …) work against it.
//!
//! # Frames
//!
//! A WebSocket text frame holds one or more commands, one JSON object per
//! line (`\n`; a `\r` before it is white space). Blank lines and a trailing
//! newline are ignored. [`parse_frame`] returns one result per command.
//!
//! A command is `{"id":N,"<method>":{…}}` with exactly one method field
//! (`connect`, `subscribe`, `unsubscribe`, `publish`, `presence`,
//! `presence_stats`, `history`, `ping`, `send`, `rpc`, `refresh`,
//! `sub_refresh`). A command without a method and without an id (`{}`) is the
//! client's pong. `send` is fire-and-forget and carries no id.
//!
//! # Reading rules
//!
//! - Unknown fields, at the top level and inside a request, are ignored
//!   (forward compatibility). Field names match exactly (Go's decoder would
//!   also take `"ID"`; no SDK sends that).
//! - `null` reads as an absent field, as in Go, for every field except the
//!   `data` of `publish` and `send`, where it is the JSON value `null` the
//!   client chose to send.
//! - Zero values read as absent, as in Go where they are indistinguishable:
//!   an empty string gives `None`, a `0` offset or limit gives `None`.
//! - `data` (and any other `bytes` field) is raw JSON in this encoding. It is
//!   kept as the exact text the client sent ([`RawJson`], borrowed from the
//!   frame), compacted (insignificant white space removed, nothing else
//!   changed) when it has white space.
//! - Strings are borrowed from the frame unless they hold escapes.
//!
//! # Two classes of error
//!
//! - [`FrameError`] (the frame is unusable: not UTF-8, a line that is not a
//!   JSON object, too deep, too many commands, too large): the whole frame is
//!   refused, nothing in it is to be executed, and the connection must be
//!   closed with [`Disconnect::BAD_REQUEST`] (3501), see
//!   [`FrameError::disconnect`].
//! - [`CommandError`] (one well-formed JSON object that is not a valid
//!   command): the other commands of the frame are parsed and returned as
//!   usual. When [`CommandError::reply_id`] is `Some`, answer it with an error
//!   reply ([`CommandError::error_code`]: 107 bad request, or 104 method not
//!   found); when it is `None` there is no id a reply could carry (a reply
//!   with no id reads as a server ping to every SDK), so close with 3501.
//!
//! Which is which, exactly:
//!
//! | problem | class | reply id |
//! |---|---|---|
//! | frame larger than `limits.max_frame_bytes` | frame | |
//! | frame not UTF-8 | frame | |
//! | a line that is not JSON (including a key holding a lone surrogate escape such as `"\ud800"`, which no Rust string can hold) | frame | |
//! | a line that is JSON but not an object | frame | |
//! | a line nested deeper than [`MAX_DEPTH`] | frame | |
//! | more than [`MAX_COMMANDS_PER_FRAME`] commands | frame | |
//! | `id` not an integer in `0..=u32::MAX`, or `id` twice | command | none |
//! | two method fields (Centrifugo takes the first; we refuse) | command | the id |
//! | an id and no method field | command (104) | the id |
//! | a method other than `send` with no id (or id 0) | command | none |
//! | a method field that is not an object | command | the id |
//! | a known field twice in a request | command | the id |
//! | a missing required field (`channel`, `data` of publish/send, `token` of refresh/sub_refresh) | command | the id |
//! | a field of the wrong type, a number out of range | command | the id |
//! | a string with a lone surrogate escape | command | the id |
//! | an empty channel, a channel longer than `limits.max_room_bytes` | command | the id |
//!
//! Errors of a `send` never have a reply id: `send` is never answered.
//!
//! # Encoding
//!
//! Encoders write compact JSON with the fields in `client.proto` order and
//! omit empty, zero and false fields, as Go's `omitempty` (and Centrifugo's
//! easyjson encoder) does — except where the Go struct has no `omitempty`:
//! `ClientInfo.user`/`client`, `PresenceResult.presence`,
//! `PresenceStatsResult.num_clients`/`num_users` and all of `HistoryResult`
//! are always written. Raw JSON arguments (`data`, `conn_info`, …) are
//! written as given and must be valid JSON; the encoders do not check them.
//! Strings are escaped as [`seed::write_json_string`] does.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::codec::seed;
use crate::config::Limits;

/// Most commands one frame may carry; more is a [`FrameError::TooManyCommands`].
pub const MAX_COMMANDS_PER_FRAME: usize = 100;

/// Deepest nesting of objects and arrays in one command line, the command
/// object itself counting as 1 (so `data` may nest 62 levels inside a
/// `publish`). Deeper is a [`FrameError::TooDeep`]. Well below serde_json's
/// own limit, and below what any SDK's JSON parser handles.
pub const MAX_DEPTH: usize = 64;

/// The server's ping, and the client's pong: an empty object.
pub const PING: &str = "{}";

// ---------------------------------------------------------------------------
// Codes
// ---------------------------------------------------------------------------

/// An error a reply can carry (`{"error":{"code","message","temporary"}}`).
/// The constants are Centrifugo's client error codes (`errors.go`,
/// `docs/server/codes.md`); applications may build others (codes ≥ 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode {
    /// The numeric code.
    pub code: u32,
    /// Its message, for humans.
    pub message: &'static str,
    /// Whether a client may retry the same command.
    pub temporary: bool,
}

impl ErrorCode {
    /// 100: a fault of the server. Temporary.
    pub const INTERNAL: ErrorCode = ErrorCode::new(100, "internal server error", true);
    /// 101: the connection is not authorised for this.
    pub const UNAUTHORIZED: ErrorCode = ErrorCode::new(101, "unauthorized", false);
    /// 102: the channel's namespace is not configured.
    pub const UNKNOWN_CHANNEL: ErrorCode = ErrorCode::new(102, "unknown channel", false);
    /// 103: permission denied.
    pub const PERMISSION_DENIED: ErrorCode = ErrorCode::new(103, "permission denied", false);
    /// 104: the method is not known or not served.
    pub const METHOD_NOT_FOUND: ErrorCode = ErrorCode::new(104, "method not found", false);
    /// 105: one subscription per channel per connection.
    pub const ALREADY_SUBSCRIBED: ErrorCode = ErrorCode::new(105, "already subscribed", false);
    /// 106: a limit (such as channels per connection) is reached.
    pub const LIMIT_EXCEEDED: ErrorCode = ErrorCode::new(106, "limit exceeded", false);
    /// 107: a malformed command; do not retry.
    pub const BAD_REQUEST: ErrorCode = ErrorCode::new(107, "bad request", false);
    /// 108: not available here (history or presence off, …).
    pub const NOT_AVAILABLE: ErrorCode = ErrorCode::new(108, "not available", false);
    /// 109: the token expired; SDKs fetch a new one and retry.
    pub const TOKEN_EXPIRED: ErrorCode = ErrorCode::new(109, "token expired", false);
    /// 110: the connection expired without a token.
    pub const EXPIRED: ErrorCode = ErrorCode::new(110, "expired", false);
    /// 111: rate limited. Temporary.
    pub const TOO_MANY_REQUESTS: ErrorCode = ErrorCode::new(111, "too many requests", true);
    /// 112: the stream position asked for (epoch, offset) is gone.
    pub const UNRECOVERABLE_POSITION: ErrorCode =
        ErrorCode::new(112, "unrecoverable position", false);
    /// 113: concurrent pagination. Temporary.
    pub const CONCURRENT_PAGINATION: ErrorCode = ErrorCode::new(113, "concurrent pagination", true);

    /// Every code above, in numeric order.
    pub const ALL: [ErrorCode; 14] = [
        Self::INTERNAL,
        Self::UNAUTHORIZED,
        Self::UNKNOWN_CHANNEL,
        Self::PERMISSION_DENIED,
        Self::METHOD_NOT_FOUND,
        Self::ALREADY_SUBSCRIBED,
        Self::LIMIT_EXCEEDED,
        Self::BAD_REQUEST,
        Self::NOT_AVAILABLE,
        Self::TOKEN_EXPIRED,
        Self::EXPIRED,
        Self::TOO_MANY_REQUESTS,
        Self::UNRECOVERABLE_POSITION,
        Self::CONCURRENT_PAGINATION,
    ];

    /// An error code.
    pub const fn new(code: u32, message: &'static str, temporary: bool) -> ErrorCode {
        ErrorCode {
            code,
            message,
            temporary,
        }
    }

    /// The error reply to command `id`: `{"id":N,"error":{…}}`.
    pub fn encode_reply(&self, id: u32) -> String {
        encode_error_reply(id, self.code, self.message, self.temporary)
    }
}

/// A reason to close a connection: the WebSocket close code and reason
/// (Centrifugo sends a disconnect only as the close frame on WebSocket). The
/// constants are Centrifugo's (`disconnect.go`). Codes 3000–3499 and
/// 4000–4499 tell the client to reconnect, 3500–3999 and 4500–4999 not to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Disconnect {
    /// The WebSocket close code.
    pub code: u16,
    /// The close reason (< 123 bytes).
    pub reason: &'static str,
}

impl Disconnect {
    /// 3000: closed without server advice. Reconnect.
    pub const CONNECTION_CLOSED: Disconnect = Disconnect::new(3000, "connection closed");
    /// 3001: the server is shutting down. Reconnect.
    pub const SHUTDOWN: Disconnect = Disconnect::new(3001, "shutdown");
    /// 3004: a fault of the server. Reconnect.
    pub const SERVER_ERROR: Disconnect = Disconnect::new(3004, "internal server error");
    /// 3005: the connection's token expired. Reconnect (then refresh the token).
    pub const EXPIRED: Disconnect = Disconnect::new(3005, "connection expired");
    /// 3006: a subscription's token expired. Reconnect.
    pub const SUB_EXPIRED: Disconnect = Disconnect::new(3006, "subscription expired");
    /// 3008: the client reads too slowly (its queue overflowed). Reconnect.
    pub const SLOW: Disconnect = Disconnect::new(3008, "slow");
    /// 3009: writing to the client failed. Reconnect.
    pub const WRITE_ERROR: Disconnect = Disconnect::new(3009, "write error");
    /// 3010: the stream position is invalid; recover on reconnect.
    pub const INSUFFICIENT_STATE: Disconnect = Disconnect::new(3010, "insufficient state");
    /// 3011: the server asks for a reconnect.
    pub const FORCE_RECONNECT: Disconnect = Disconnect::new(3011, "force reconnect");
    /// 3012: no pong to the server's ping in time. Reconnect.
    pub const NO_PONG: Disconnect = Disconnect::new(3012, "no pong");
    /// 3013: too many requests. Reconnect.
    pub const TOO_MANY_REQUESTS: Disconnect = Disconnect::new(3013, "too many requests");
    /// 3014: drop cached token and state, then reconnect.
    pub const STATE_INVALIDATED: Disconnect = Disconnect::new(3014, "state invalidated");
    /// 3500: the connection token is invalid. Terminal.
    pub const INVALID_TOKEN: Disconnect = Disconnect::new(3500, "invalid token");
    /// 3501: malformed frames or commands out of order. Terminal.
    pub const BAD_REQUEST: Disconnect = Disconnect::new(3501, "bad request");
    /// 3502: no connect command in time. Terminal.
    pub const STALE: Disconnect = Disconnect::new(3502, "stale");
    /// 3503: the server disconnects the client for good. Terminal.
    pub const FORCE_DISCONNECT: Disconnect = Disconnect::new(3503, "force disconnect");
    /// 3504: too many connections. Terminal.
    pub const CONNECTION_LIMIT: Disconnect = Disconnect::new(3504, "connection limit");
    /// 3505: too many channels. Terminal.
    pub const CHANNEL_LIMIT: Disconnect = Disconnect::new(3505, "channel limit");
    /// 3506: binary data on a JSON connection. Terminal.
    pub const INAPPROPRIATE_PROTOCOL: Disconnect = Disconnect::new(3506, "inappropriate protocol");
    /// 3507: permission denied. Terminal.
    pub const PERMISSION_DENIED: Disconnect = Disconnect::new(3507, "permission denied");
    /// 3508: not available. Terminal.
    pub const NOT_AVAILABLE: Disconnect = Disconnect::new(3508, "not available");
    /// 3509: too many errors. Terminal.
    pub const TOO_MANY_ERRORS: Disconnect = Disconnect::new(3509, "too many errors");

    /// Every code above, in numeric order.
    pub const ALL: [Disconnect; 22] = [
        Self::CONNECTION_CLOSED,
        Self::SHUTDOWN,
        Self::SERVER_ERROR,
        Self::EXPIRED,
        Self::SUB_EXPIRED,
        Self::SLOW,
        Self::WRITE_ERROR,
        Self::INSUFFICIENT_STATE,
        Self::FORCE_RECONNECT,
        Self::NO_PONG,
        Self::TOO_MANY_REQUESTS,
        Self::STATE_INVALIDATED,
        Self::INVALID_TOKEN,
        Self::BAD_REQUEST,
        Self::STALE,
        Self::FORCE_DISCONNECT,
        Self::CONNECTION_LIMIT,
        Self::CHANNEL_LIMIT,
        Self::INAPPROPRIATE_PROTOCOL,
        Self::PERMISSION_DENIED,
        Self::NOT_AVAILABLE,
        Self::TOO_MANY_ERRORS,
    ];

    /// A disconnect.
    pub const fn new(code: u16, reason: &'static str) -> Disconnect {
        Disconnect { code, reason }
    }

    /// Whether an SDK reconnects after this code: 3000–3499, 4000–4499 and
    /// ≥ 5000 say yes; 3500–3999 and 4500–4999 say no (codes below 3000
    /// belong to the transport; SDKs reconnect on them too).
    pub const fn reconnect(&self) -> bool {
        !matches!(self.code, 3500..=3999 | 4500..=4999)
    }

    /// The disconnect push for transports that cannot close with a code
    /// (`{"push":{"disconnect":{"code","reason"}}}`; `reconnect` left out,
    /// as Centrifugo does: the code range carries the advice).
    pub fn encode_push(&self) -> String {
        encode_disconnect_push(self.code, self.reason, false)
    }
}

/// The code and reason of an `unsubscribe` push. Codes < 2500 leave the
/// subscription unsubscribed; ≥ 2500 make the SDK resubscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnsubscribeCode {
    /// The numeric code.
    pub code: u32,
    /// Its reason, for humans.
    pub reason: &'static str,
}

impl UnsubscribeCode {
    /// 2000: the server unsubscribed the client. Terminal.
    pub const SERVER: UnsubscribeCode = UnsubscribeCode::new(2000, "server unsubscribe");
    /// 2500: loss or reordering detected; the SDK resubscribes and recovers.
    pub const INSUFFICIENT_STATE: UnsubscribeCode =
        UnsubscribeCode::new(2500, "insufficient state");
    /// 2501: the subscription token expired; resubscribe with a new one.
    pub const EXPIRED: UnsubscribeCode = UnsubscribeCode::new(2501, "subscription expired");

    /// An unsubscribe code.
    pub const fn new(code: u32, reason: &'static str) -> UnsubscribeCode {
        UnsubscribeCode { code, reason }
    }

    /// Whether the SDK resubscribes (code ≥ 2500).
    pub const fn resubscribe(&self) -> bool {
        self.code >= 2500
    }

    /// The `unsubscribe` push for `channel`.
    pub fn encode_push(&self, channel: &str) -> String {
        encode_unsubscribe_push(channel, self.code, self.reason)
    }
}

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// A command's method: the name of its request field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `connect`
    Connect,
    /// `subscribe`
    Subscribe,
    /// `unsubscribe`
    Unsubscribe,
    /// `publish`
    Publish,
    /// `presence`
    Presence,
    /// `presence_stats`
    PresenceStats,
    /// `history`
    History,
    /// `ping`
    Ping,
    /// `send`
    Send,
    /// `rpc`
    Rpc,
    /// `refresh`
    Refresh,
    /// `sub_refresh`
    SubRefresh,
}

impl Method {
    /// Every method, in `client.proto` field order.
    pub const ALL: [Method; 12] = [
        Method::Connect,
        Method::Subscribe,
        Method::Unsubscribe,
        Method::Publish,
        Method::Presence,
        Method::PresenceStats,
        Method::History,
        Method::Ping,
        Method::Send,
        Method::Rpc,
        Method::Refresh,
        Method::SubRefresh,
    ];

    /// The field name on the wire (also the reply's result field).
    pub const fn wire_name(self) -> &'static str {
        match self {
            Method::Connect => "connect",
            Method::Subscribe => "subscribe",
            Method::Unsubscribe => "unsubscribe",
            Method::Publish => "publish",
            Method::Presence => "presence",
            Method::PresenceStats => "presence_stats",
            Method::History => "history",
            Method::Ping => "ping",
            Method::Send => "send",
            Method::Rpc => "rpc",
            Method::Refresh => "refresh",
            Method::SubRefresh => "sub_refresh",
        }
    }

    /// The method of a wire field name.
    pub fn from_wire(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.wire_name() == name)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire_name())
    }
}

/// One JSON value as compact text, borrowed from the frame when it had no
/// insignificant white space. Always valid JSON.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawJson<'a>(Cow<'a, str>);

impl<'a> RawJson<'a> {
    /// Checks that `text` is one JSON value nested at most [`MAX_DEPTH`]
    /// levels, and compacts it. `None` if it is not.
    pub fn new(text: &'a str) -> Option<RawJson<'a>> {
        if too_deep(text, MAX_DEPTH) {
            return None;
        }
        let raw: &'a RawValue = serde_json::from_str(text).ok()?;
        Some(RawJson::from_raw(raw))
    }

    fn from_raw(raw: &'a RawValue) -> RawJson<'a> {
        RawJson(seed::compact_json(raw.get()))
    }

    /// The compact JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the text is borrowed from the input (it had no white space).
    pub fn is_borrowed(&self) -> bool {
        matches!(self.0, Cow::Borrowed(_))
    }

    /// Detaches from the input buffer.
    pub fn into_owned(self) -> RawJson<'static> {
        RawJson(Cow::Owned(self.0.into_owned()))
    }
}

/// A stream position: the `since` of a history request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition<'a> {
    /// The offset of the last publication the client has (0 if absent).
    pub offset: u64,
    /// The stream's epoch (empty if absent).
    pub epoch: Cow<'a, str>,
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command<'a> {
    /// The id the reply must carry. 0 for a pong, and usually for a `send`.
    pub id: u32,
    /// What the client asks.
    pub request: Request<'a>,
}

/// The request of a command: one variant per method, plus the pong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// Authenticate the connection. Other fields (`subs`, `headers`, `flag`,
    /// `profile`, `dict`) are accepted and ignored.
    Connect {
        /// The connection JWT.
        token: Option<Cow<'a, str>>,
        /// Custom data for the server.
        data: Option<RawJson<'a>>,
        /// The SDK's name (`js`, `python`, …).
        name: Option<Cow<'a, str>>,
        /// The SDK's version.
        version: Option<Cow<'a, str>>,
    },
    /// Subscribe to a channel. Other fields (`delta`, `tf`, `flag`, `type`,
    /// `phase`, `cursor`, `limit`, `asc`) are accepted and ignored.
    Subscribe {
        /// The channel (checked against the room-name rules).
        channel: Cow<'a, str>,
        /// The subscription JWT.
        token: Option<Cow<'a, str>>,
        /// Recover the publications missed since `epoch`/`offset`.
        recover: bool,
        /// The epoch to recover from.
        epoch: Option<Cow<'a, str>>,
        /// The offset to recover from.
        offset: Option<u64>,
        /// Ask for join and leave pushes.
        join_leave: bool,
        /// Ask for a positioned subscription (loss detection).
        positioned: bool,
        /// Ask for a recoverable subscription.
        recoverable: bool,
        /// Custom data for the server.
        data: Option<RawJson<'a>>,
    },
    /// Leave a channel.
    Unsubscribe {
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// Publish to a channel. (`type`, `key`, `removed` of map channels are
    /// ignored.)
    Publish {
        /// The channel.
        channel: Cow<'a, str>,
        /// The publication's data (required; `null` is a value here).
        data: RawJson<'a>,
    },
    /// Ask who is in a channel.
    Presence {
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// Ask how many are in a channel.
    PresenceStats {
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// Read a channel's history.
    History {
        /// The channel.
        channel: Cow<'a, str>,
        /// How many publications (absent or 0: none, only the position;
        /// negative: all, as Centrifugo caps them).
        limit: Option<i32>,
        /// Only publications after this position.
        since: Option<StreamPosition<'a>>,
        /// Newest first.
        reverse: bool,
    },
    /// Call a server-side method.
    Rpc {
        /// The method's name.
        method: Option<Cow<'a, str>>,
        /// Its argument.
        data: Option<RawJson<'a>>,
    },
    /// A message for the server, never answered.
    Send {
        /// The message (required; `null` is a value here).
        data: RawJson<'a>,
    },
    /// Replace the connection token.
    Refresh {
        /// The new connection JWT (required).
        token: Cow<'a, str>,
    },
    /// Replace a subscription token. (`type`, `track`, `untrack` are ignored.)
    SubRefresh {
        /// The channel.
        channel: Cow<'a, str>,
        /// The new subscription JWT (required).
        token: Cow<'a, str>,
    },
    /// The `ping` method (no SDK sends it; Centrifugo answers 108).
    Ping,
    /// The client's pong: a command with neither id nor method (`{}`).
    Pong,
}

impl<'a> Request<'a> {
    /// The method, `None` for the pong.
    pub fn method(&self) -> Option<Method> {
        Some(match self {
            Request::Connect { .. } => Method::Connect,
            Request::Subscribe { .. } => Method::Subscribe,
            Request::Unsubscribe { .. } => Method::Unsubscribe,
            Request::Publish { .. } => Method::Publish,
            Request::Presence { .. } => Method::Presence,
            Request::PresenceStats { .. } => Method::PresenceStats,
            Request::History { .. } => Method::History,
            Request::Rpc { .. } => Method::Rpc,
            Request::Send { .. } => Method::Send,
            Request::Refresh { .. } => Method::Refresh,
            Request::SubRefresh { .. } => Method::SubRefresh,
            Request::Ping => Method::Ping,
            Request::Pong => return None,
        })
    }

    /// The channel the request is about, if any.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Request::Subscribe { channel, .. }
            | Request::Unsubscribe { channel }
            | Request::Publish { channel, .. }
            | Request::Presence { channel }
            | Request::PresenceStats { channel }
            | Request::History { channel, .. }
            | Request::SubRefresh { channel, .. } => Some(channel),
            _ => None,
        }
    }

    /// Detaches from the input buffer.
    pub fn into_owned(self) -> Request<'static> {
        fn s(c: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(c.into_owned())
        }
        fn os(c: Option<Cow<'_, str>>) -> Option<Cow<'static, str>> {
            c.map(s)
        }
        fn oj(j: Option<RawJson<'_>>) -> Option<RawJson<'static>> {
            j.map(RawJson::into_owned)
        }
        match self {
            Request::Connect {
                token,
                data,
                name,
                version,
            } => Request::Connect {
                token: os(token),
                data: oj(data),
                name: os(name),
                version: os(version),
            },
            Request::Subscribe {
                channel,
                token,
                recover,
                epoch,
                offset,
                join_leave,
                positioned,
                recoverable,
                data,
            } => Request::Subscribe {
                channel: s(channel),
                token: os(token),
                recover,
                epoch: os(epoch),
                offset,
                join_leave,
                positioned,
                recoverable,
                data: oj(data),
            },
            Request::Unsubscribe { channel } => Request::Unsubscribe {
                channel: s(channel),
            },
            Request::Publish { channel, data } => Request::Publish {
                channel: s(channel),
                data: data.into_owned(),
            },
            Request::Presence { channel } => Request::Presence {
                channel: s(channel),
            },
            Request::PresenceStats { channel } => Request::PresenceStats {
                channel: s(channel),
            },
            Request::History {
                channel,
                limit,
                since,
                reverse,
            } => Request::History {
                channel: s(channel),
                limit,
                since: since.map(|p| StreamPosition {
                    offset: p.offset,
                    epoch: s(p.epoch),
                }),
                reverse,
            },
            Request::Rpc { method, data } => Request::Rpc {
                method: os(method),
                data: oj(data),
            },
            Request::Send { data } => Request::Send {
                data: data.into_owned(),
            },
            Request::Refresh { token } => Request::Refresh { token: s(token) },
            Request::SubRefresh { channel, token } => Request::SubRefresh {
                channel: s(channel),
                token: s(token),
            },
            Request::Ping => Request::Ping,
            Request::Pong => Request::Pong,
        }
    }

    /// Appends the request object (what follows `"<method>":`).
    fn write_body(&self, out: &mut String) {
        let mut o = Obj::open(out);
        match self {
            Request::Connect {
                token,
                data,
                name,
                version,
            } => {
                o.str("token", opt(token));
                o.raw("data", data.as_ref().map(RawJson::as_str));
                o.str("name", opt(name));
                o.str("version", opt(version));
            }
            Request::Subscribe {
                channel,
                token,
                recover,
                epoch,
                offset,
                join_leave,
                positioned,
                recoverable,
                data,
            } => {
                o.str("channel", channel);
                o.str("token", opt(token));
                o.bool("recover", *recover);
                o.str("epoch", opt(epoch));
                o.uint("offset", offset.unwrap_or(0));
                o.raw("data", data.as_ref().map(RawJson::as_str));
                o.bool("positioned", *positioned);
                o.bool("recoverable", *recoverable);
                o.bool("join_leave", *join_leave);
            }
            Request::Unsubscribe { channel }
            | Request::Presence { channel }
            | Request::PresenceStats { channel } => o.str("channel", channel),
            Request::Publish { channel, data } => {
                o.str("channel", channel);
                o.raw("data", Some(data.as_str()));
            }
            Request::History {
                channel,
                limit,
                since,
                reverse,
            } => {
                o.str("channel", channel);
                o.int("limit", i64::from(limit.unwrap_or(0)));
                if let Some(since) = since {
                    let mut p = Obj::open(o.key("since"));
                    p.uint("offset", since.offset);
                    p.str("epoch", &since.epoch);
                    p.close();
                }
                o.bool("reverse", *reverse);
            }
            Request::Rpc { method, data } => {
                o.raw("data", data.as_ref().map(RawJson::as_str));
                o.str("method", opt(method));
            }
            Request::Send { data } => o.raw("data", Some(data.as_str())),
            Request::Refresh { token } => o.str("token", token),
            Request::SubRefresh { channel, token } => {
                o.str("channel", channel);
                o.str("token", token);
            }
            Request::Ping | Request::Pong => {}
        }
        o.close();
    }
}

fn opt<'s>(s: &'s Option<Cow<'_, str>>) -> &'s str {
    s.as_deref().unwrap_or("")
}

impl Command<'_> {
    /// Encodes this command as a client sends it (one line, no newline).
    /// A parsed command re-encodes to text that parses to an equal command.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(64);
        self.write(&mut out);
        out
    }

    /// Appends this command, as [`Command::encode`] does.
    pub fn write(&self, out: &mut String) {
        let mut o = Obj::open(out);
        o.uint("id", u64::from(self.id));
        if let Some(m) = self.request.method() {
            self.request.write_body(o.key(m.wire_name()));
        }
        o.close();
    }

    /// Detaches from the input buffer.
    pub fn into_owned(self) -> Command<'static> {
        Command {
            id: self.id,
            request: self.request.into_owned(),
        }
    }
}

/// Encodes several commands as one frame (newline-separated), as SDKs batch.
pub fn encode_frame(commands: &[Command<'_>]) -> String {
    let mut out = String::new();
    for (i, c) in commands.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        c.write(&mut out);
    }
    out
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a whole frame was refused. The connection is to be closed with
/// [`FrameError::disconnect`] (3501 bad request). `Display` is a reason for
/// logs, always ≤ 123 bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Larger than `limits.max_frame_bytes`.
    #[error("frame larger than {max} bytes")]
    TooLarge {
        /// The limit, in bytes.
        max: usize,
    },
    /// Not UTF-8.
    #[error("frame is not valid UTF-8")]
    NotUtf8,
    /// A line that is not one JSON value.
    #[error("command is not valid JSON")]
    NotJson,
    /// A line that is JSON but not an object.
    #[error("command is not a JSON object")]
    NotObject,
    /// A line nested deeper than [`MAX_DEPTH`].
    #[error("command nested deeper than {max} levels")]
    TooDeep {
        /// The limit, in levels.
        max: usize,
    },
    /// More than [`MAX_COMMANDS_PER_FRAME`] commands.
    #[error("more than {max} commands in one frame")]
    TooManyCommands {
        /// The limit.
        max: usize,
    },
}

impl FrameError {
    /// How to close the connection: always 3501 bad request.
    pub fn disconnect(&self) -> Disconnect {
        Disconnect::BAD_REQUEST
    }

    /// A stable metric label for this kind of error.
    pub fn label(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "too_large",
            FrameError::NotUtf8 => "not_utf8",
            FrameError::NotJson => "not_json",
            FrameError::NotObject => "not_object",
            FrameError::TooDeep { .. } => "too_deep",
            FrameError::TooManyCommands { .. } => "too_many_commands",
        }
    }

    /// Every label, for metrics that list each reason even at zero.
    pub const LABELS: [&'static str; 6] = [
        "too_large",
        "not_utf8",
        "not_json",
        "not_object",
        "too_deep",
        "too_many_commands",
    ];
}

/// What is wrong with one command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandErrorKind {
    /// `id` is not an integer in `0..=u32::MAX`.
    #[error("id must be an integer from 0 to 4294967295")]
    BadId,
    /// A known field appears twice (`id` at the top level, or a request field).
    #[error("{field} appears more than once")]
    DuplicateField {
        /// The field's name (`since.epoch` for one inside `since`).
        field: &'static str,
    },
    /// An id but no known method field.
    #[error("no known method")]
    UnknownMethod,
    /// More than one method field.
    #[error("more than one method in one command")]
    MultipleMethods,
    /// A method other than `send` without an id.
    #[error("missing id")]
    MissingId,
    /// The method field is not an object.
    #[error("request must be an object")]
    MethodNotObject,
    /// A required field is absent (or `null`, or an empty token).
    #[error("missing {field}")]
    MissingField {
        /// The field's name.
        field: &'static str,
    },
    /// A field of the wrong type, or a number out of range.
    #[error("{field} must be {expected}")]
    WrongType {
        /// The field's name.
        field: &'static str,
        /// What it must be ("a string", "a boolean", "an integer from …").
        expected: &'static str,
    },
    /// A string holding an escape no Rust string can hold (a lone surrogate).
    #[error("{field} has an invalid \\u escape")]
    BadEscape {
        /// The field's name.
        field: &'static str,
    },
    /// An empty channel.
    #[error("channel is empty")]
    ChannelEmpty,
    /// A channel longer than `limits.max_room_bytes`.
    #[error("channel longer than {max} bytes")]
    ChannelTooLong {
        /// The limit, in bytes.
        max: usize,
    },
}

impl CommandErrorKind {
    /// A stable metric label for this kind of error.
    pub fn label(&self) -> &'static str {
        match self {
            CommandErrorKind::BadId => "bad_id",
            CommandErrorKind::DuplicateField { .. } => "duplicate_field",
            CommandErrorKind::UnknownMethod => "unknown_method",
            CommandErrorKind::MultipleMethods => "multiple_methods",
            CommandErrorKind::MissingId => "missing_id",
            CommandErrorKind::MethodNotObject => "method_not_object",
            CommandErrorKind::MissingField { .. } => "missing_field",
            CommandErrorKind::WrongType { .. } => "wrong_type",
            CommandErrorKind::BadEscape { .. } => "bad_escape",
            CommandErrorKind::ChannelEmpty => "channel_empty",
            CommandErrorKind::ChannelTooLong { .. } => "channel_too_long",
        }
    }

    /// Every label, for metrics that list each reason even at zero.
    pub const LABELS: [&'static str; 11] = [
        "bad_id",
        "duplicate_field",
        "unknown_method",
        "multiple_methods",
        "missing_id",
        "method_not_object",
        "missing_field",
        "wrong_type",
        "bad_escape",
        "channel_empty",
        "channel_too_long",
    ];
}

/// One command of a frame that is not valid. The frame's other commands are
/// unaffected. `Display` (`"<method>: <what>"`) is for logs, ≤ 123 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// The command's id; 0 when it had none or it was unreadable.
    pub id: u32,
    /// The method, when the command named exactly one (the first of several).
    pub method: Option<Method>,
    /// What is wrong.
    pub kind: CommandErrorKind,
}

impl CommandError {
    /// The id to send the error reply to, or `None` when no reply can carry
    /// it (no readable id, or a `send`, which is never answered): then close
    /// the connection with [`Disconnect::BAD_REQUEST`], as Centrifugo does.
    pub fn reply_id(&self) -> Option<u32> {
        if self.id == 0 || self.method == Some(Method::Send) {
            None
        } else {
            Some(self.id)
        }
    }

    /// The error to reply with: 104 method not found for a command with no
    /// known method, else 107 bad request.
    pub fn error_code(&self) -> ErrorCode {
        match self.kind {
            CommandErrorKind::UnknownMethod => ErrorCode::METHOD_NOT_FOUND,
            _ => ErrorCode::BAD_REQUEST,
        }
    }

    /// The error reply, when there is an id to send it to.
    pub fn encode_reply(&self) -> Option<String> {
        self.reply_id().map(|id| self.error_code().encode_reply(id))
    }

    /// A stable metric label (that of the kind).
    pub fn label(&self) -> &'static str {
        self.kind.label()
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.method {
            Some(m) => write!(f, "{m}: {}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl std::error::Error for CommandError {}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// One command of a frame, or what is wrong with it.
pub type Parsed<'a> = Result<Command<'a>, CommandError>;

/// Parses one client text frame: one result per command line, in order.
/// `Err` when the whole frame is refused (see the module docs for which
/// problems refuse the frame and which only one command). Never panics.
pub fn parse_frame<'a>(frame: &'a [u8], limits: &Limits) -> Result<Vec<Parsed<'a>>, FrameError> {
    if frame.len() > limits.max_frame_bytes {
        return Err(FrameError::TooLarge {
            max: limits.max_frame_bytes,
        });
    }
    let text = std::str::from_utf8(frame).map_err(|_| FrameError::NotUtf8)?;
    let mut out = Vec::new();
    for line in text.split('\n') {
        if line.bytes().all(is_ws) {
            continue;
        }
        if out.len() == MAX_COMMANDS_PER_FRAME {
            return Err(FrameError::TooManyCommands {
                max: MAX_COMMANDS_PER_FRAME,
            });
        }
        out.push(parse_line(line, limits)?);
    }
    Ok(out)
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Whether `text` nests objects and arrays (outside strings) deeper than `max`.
fn too_deep(text: &str, max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for &b in text.as_bytes() {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A problem found while reading a command: the whole frame, or one command.
enum Refusal {
    Frame(FrameError),
    Command(CommandErrorKind),
}

impl From<CommandErrorKind> for Refusal {
    fn from(k: CommandErrorKind) -> Self {
        Refusal::Command(k)
    }
}

impl From<FrameError> for Refusal {
    fn from(e: FrameError) -> Self {
        Refusal::Frame(e)
    }
}

fn parse_line<'a>(line: &'a str, limits: &Limits) -> Result<Parsed<'a>, FrameError> {
    if too_deep(line, MAX_DEPTH) {
        return Err(FrameError::TooDeep { max: MAX_DEPTH });
    }
    let top = Fields::parse(line)?;

    let mut id_raw: Option<&'a RawValue> = None;
    let mut id_twice = false;
    let mut first: Option<(Method, &'a RawValue)> = None;
    let mut methods = 0usize;
    for &(ref key, value) in &top.0 {
        if key == "id" {
            id_twice |= id_raw.is_some();
            id_raw = Some(value);
        } else if let Some(m) = Method::from_wire(key) {
            if is_null(value) {
                continue;
            }
            methods += 1;
            if first.is_none() {
                first = Some((m, value));
            }
        }
    }
    let named = first.map(|(m, _)| m);
    let fail = |id: u32, kind: CommandErrorKind| {
        Ok(Err(CommandError {
            id,
            method: named,
            kind,
        }))
    };
    if id_twice {
        return fail(0, CommandErrorKind::DuplicateField { field: "id" });
    }
    let id = match id_raw {
        Some(raw) if !is_null(raw) => match raw.get().parse::<u32>() {
            Ok(id) => id,
            Err(_) => return fail(0, CommandErrorKind::BadId),
        },
        _ => 0,
    };
    let Some((method, body)) = first else {
        return if id == 0 {
            Ok(Ok(Command {
                id: 0,
                request: Request::Pong,
            }))
        } else {
            fail(id, CommandErrorKind::UnknownMethod)
        };
    };
    if methods > 1 {
        return fail(id, CommandErrorKind::MultipleMethods);
    }
    if id == 0 && method != Method::Send {
        return fail(0, CommandErrorKind::MissingId);
    }
    if !body.get().starts_with('{') {
        return fail(id, CommandErrorKind::MethodNotObject);
    }
    match request(method, body.get(), limits) {
        Ok(request) => Ok(Ok(Command { id, request })),
        Err(Refusal::Command(kind)) => fail(id, kind),
        Err(Refusal::Frame(e)) => Err(e),
    }
}

fn request<'a>(method: Method, body: &'a str, limits: &Limits) -> Result<Request<'a>, Refusal> {
    let f = Fields::parse(body)?;
    Ok(match method {
        Method::Connect => Request::Connect {
            token: f.string("token")?,
            data: f.data("data")?,
            name: f.string("name")?,
            version: f.string("version")?,
        },
        Method::Subscribe => Request::Subscribe {
            channel: f.channel(limits)?,
            token: f.string("token")?,
            recover: f.boolean("recover")?,
            epoch: f.string("epoch")?,
            offset: f.u64("offset")?.filter(|&o| o != 0),
            join_leave: f.boolean("join_leave")?,
            positioned: f.boolean("positioned")?,
            recoverable: f.boolean("recoverable")?,
            data: f.data("data")?,
        },
        Method::Unsubscribe => Request::Unsubscribe {
            channel: f.channel(limits)?,
        },
        Method::Publish => Request::Publish {
            channel: f.channel(limits)?,
            data: f.required_data("data")?,
        },
        Method::Presence => Request::Presence {
            channel: f.channel(limits)?,
        },
        Method::PresenceStats => Request::PresenceStats {
            channel: f.channel(limits)?,
        },
        Method::History => Request::History {
            channel: f.channel(limits)?,
            limit: f.i32("limit")?.filter(|&l| l != 0),
            since: f.since()?,
            reverse: f.boolean("reverse")?,
        },
        Method::Ping => Request::Ping,
        Method::Send => Request::Send {
            data: f.required_data("data")?,
        },
        Method::Rpc => Request::Rpc {
            method: f.string("method")?,
            data: f.data("data")?,
        },
        Method::Refresh => Request::Refresh {
            token: f.required_string("token")?,
        },
        Method::SubRefresh => Request::SubRefresh {
            channel: f.channel(limits)?,
            token: f.required_string("token")?,
        },
    })
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// An object key, borrowed when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// The members of one JSON object, in order, values kept raw.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(4).min(16));
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    out.push((k, v));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Fields<'a> {
    /// Reads one JSON object. A value that is not an object is a data error
    /// from our visitor; anything else is a syntax error.
    fn parse(text: &'a str) -> Result<Fields<'a>, FrameError> {
        serde_json::from_str::<Fields<'a>>(text).map_err(|e| {
            if e.is_data() {
                FrameError::NotObject
            } else {
                FrameError::NotJson
            }
        })
    }

    /// The raw value of field `key`, `None` if absent or `null`.
    fn get(
        &self,
        key: &str,
        label: &'static str,
    ) -> Result<Option<&'a RawValue>, CommandErrorKind> {
        self.get_keep_null(key, label)
            .map(|v| v.filter(|raw| !is_null(raw)))
    }

    fn get_keep_null(
        &self,
        key: &str,
        label: &'static str,
    ) -> Result<Option<&'a RawValue>, CommandErrorKind> {
        let mut found = None;
        for (k, v) in &self.0 {
            if k == key {
                if found.is_some() {
                    return Err(CommandErrorKind::DuplicateField { field: label });
                }
                found = Some(*v);
            }
        }
        Ok(found)
    }

    /// An optional string; empty reads as absent.
    fn string(&self, name: &'static str) -> Result<Option<Cow<'a, str>>, CommandErrorKind> {
        match self.get(name, name)? {
            None => Ok(None),
            Some(raw) => Ok(Some(as_str(raw, name)?).filter(|s| !s.is_empty())),
        }
    }

    fn required_string(&self, name: &'static str) -> Result<Cow<'a, str>, CommandErrorKind> {
        self.string(name)?
            .ok_or(CommandErrorKind::MissingField { field: name })
    }

    fn channel(&self, limits: &Limits) -> Result<Cow<'a, str>, CommandErrorKind> {
        let raw = self
            .get("channel", "channel")?
            .ok_or(CommandErrorKind::MissingField { field: "channel" })?;
        let channel = as_str(raw, "channel")?;
        match seed::check_room(&channel, limits) {
            Ok(()) => Ok(channel),
            Err(seed::FrameError::RoomTooLong { max }) => {
                Err(CommandErrorKind::ChannelTooLong { max })
            }
            // check_room refuses only empty and too long names.
            Err(_) => Err(CommandErrorKind::ChannelEmpty),
        }
    }

    fn boolean(&self, name: &'static str) -> Result<bool, CommandErrorKind> {
        match self.get(name, name)?.map(RawValue::get) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(CommandErrorKind::WrongType {
                field: name,
                expected: "a boolean",
            }),
        }
    }

    fn u64(&self, name: &'static str) -> Result<Option<u64>, CommandErrorKind> {
        self.get(name, name)?
            .map(|raw| as_u64(raw, name))
            .transpose()
    }

    fn i32(&self, name: &'static str) -> Result<Option<i32>, CommandErrorKind> {
        self.get(name, name)?
            .map(|raw| {
                raw.get()
                    .parse::<i32>()
                    .map_err(|_| CommandErrorKind::WrongType {
                        field: name,
                        expected: "an integer from -2147483648 to 2147483647",
                    })
            })
            .transpose()
    }

    /// Optional raw JSON; `null` reads as absent.
    fn data(&self, name: &'static str) -> Result<Option<RawJson<'a>>, CommandErrorKind> {
        Ok(self.get(name, name)?.map(RawJson::from_raw))
    }

    /// Required raw JSON; `null` is a value.
    fn required_data(&self, name: &'static str) -> Result<RawJson<'a>, CommandErrorKind> {
        self.get_keep_null(name, name)?
            .map(RawJson::from_raw)
            .ok_or(CommandErrorKind::MissingField { field: name })
    }

    fn since(&self) -> Result<Option<StreamPosition<'a>>, Refusal> {
        let Some(raw) = self.get("since", "since")? else {
            return Ok(None);
        };
        if !raw.get().starts_with('{') {
            return Err(CommandErrorKind::WrongType {
                field: "since",
                expected: "an object",
            }
            .into());
        }
        let f = Fields::parse(raw.get())?;
        let offset = match f.get("offset", "since.offset")? {
            Some(raw) => as_u64(raw, "since.offset")?,
            None => 0,
        };
        let epoch = match f.get("epoch", "since.epoch")? {
            Some(raw) => as_str(raw, "since.epoch")?,
            None => Cow::Borrowed(""),
        };
        Ok(Some(StreamPosition { offset, epoch }))
    }
}

/// A JSON string value, borrowed when it has no escapes.
fn as_str<'a>(raw: &'a RawValue, field: &'static str) -> Result<Cow<'a, str>, CommandErrorKind> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Err(CommandErrorKind::WrongType {
            field,
            expected: "a string",
        });
    }
    if let Ok(s) = serde_json::from_str::<&str>(text) {
        return Ok(Cow::Borrowed(s));
    }
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|_| CommandErrorKind::BadEscape { field })
}

fn as_u64(raw: &RawValue, field: &'static str) -> Result<u64, CommandErrorKind> {
    raw.get()
        .parse::<u64>()
        .map_err(|_| CommandErrorKind::WrongType {
            field,
            expected: "an integer from 0 to 18446744073709551615",
        })
}

// ---------------------------------------------------------------------------
// Encoding: values
// ---------------------------------------------------------------------------

/// Who a connection is: the `info` of a publication, a join or a leave, and
/// an entry of a presence result. `Cow`s so that the node can keep owned
/// values (`ClientInfo<'static>`) and encode borrowed ones alike.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientInfo<'a> {
    /// The user id (empty for anonymous users; always written).
    pub user: Cow<'a, str>,
    /// The connection's client id (always written).
    pub client: Cow<'a, str>,
    /// Connection info from the token, raw JSON.
    pub conn_info: Option<Cow<'a, str>>,
    /// Channel info from the subscription token, raw JSON.
    pub chan_info: Option<Cow<'a, str>>,
}

impl ClientInfo<'_> {
    /// Detaches from borrowed buffers.
    pub fn into_owned(self) -> ClientInfo<'static> {
        ClientInfo {
            user: Cow::Owned(self.user.into_owned()),
            client: Cow::Owned(self.client.into_owned()),
            conn_info: self.conn_info.map(|c| Cow::Owned(c.into_owned())),
            chan_info: self.chan_info.map(|c| Cow::Owned(c.into_owned())),
        }
    }

    fn len_hint(&self) -> usize {
        40 + self.user.len()
            + self.client.len()
            + self.conn_info.as_deref().map_or(0, |c| c.len() + 14)
            + self.chan_info.as_deref().map_or(0, |c| c.len() + 14)
    }
}

/// A publication: `{"data":…,"info":…,"offset":…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publication<'a> {
    /// The data, raw JSON (written as is).
    pub data: &'a str,
    /// The publisher, for publications sent by clients.
    pub info: Option<&'a ClientInfo<'a>>,
    /// The offset in the channel's stream; 0 (none) is omitted.
    pub offset: u64,
}

impl Publication<'_> {
    fn len_hint(&self) -> usize {
        // {"data":…,"info":…,"offset":<20 digits>}
        48 + self.data.len() + self.info.map_or(0, ClientInfo::len_hint)
    }
}

/// The result of a subscribe (and of each server-side subscription in a
/// connect result). Every field is optional: zero values are omitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscribeResult<'a> {
    /// The subscription expires (a `ttl` follows).
    pub expires: bool,
    /// Seconds until the subscription token expires.
    pub ttl: u32,
    /// The channel keeps a history the client can recover from.
    pub recoverable: bool,
    /// The stream's epoch.
    pub epoch: &'a str,
    /// Recovered publications, oldest first.
    pub publications: &'a [Publication<'a>],
    /// Every missed publication was recovered.
    pub recovered: bool,
    /// The stream's top offset (or, after a recovery, the offset asked for).
    pub offset: u64,
    /// The subscription is positioned.
    pub positioned: bool,
    /// Custom data for the client, raw JSON.
    pub data: Option<&'a str>,
    /// The client asked to recover.
    pub was_recovering: bool,
    /// Instead of `publications`: the publications already encoded, as a
    /// JSON array (the node writes them from broker payloads).
    pub raw_publications: Option<&'a str>,
}

/// The result of a connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectResult<'a> {
    /// The connection's client id.
    pub client: &'a str,
    /// The server's version.
    pub version: &'a str,
    /// The connection expires (a `ttl` follows).
    pub expires: bool,
    /// Seconds until the connection token expires.
    pub ttl: u32,
    /// Custom data for the client, raw JSON.
    pub data: Option<&'a str>,
    /// Server-side subscriptions: channel and result.
    pub subs: &'a [(&'a str, SubscribeResult<'a>)],
    /// Seconds between server pings.
    pub ping: u32,
    /// The client must answer pings with a pong.
    pub pong: bool,
    /// The node's name.
    pub node: &'a str,
}

/// The result of a history request. Every field is always written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistoryResult<'a> {
    /// The publications.
    pub publications: &'a [Publication<'a>],
    /// The stream's epoch.
    pub epoch: &'a str,
    /// The stream's top offset.
    pub offset: u64,
    /// Instead of `publications`: the publications already encoded, as a
    /// JSON array.
    pub raw_publications: Option<&'a str>,
}

/// The result of a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RefreshResult<'a> {
    /// The connection's client id.
    pub client: &'a str,
    /// The server's version.
    pub version: &'a str,
    /// The connection expires.
    pub expires: bool,
    /// Seconds until the new token expires.
    pub ttl: u32,
}

/// A server-side subscribe push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscribePush<'a> {
    /// The channel keeps a recoverable history.
    pub recoverable: bool,
    /// The stream's epoch.
    pub epoch: &'a str,
    /// The stream's top offset.
    pub offset: u64,
    /// The subscription is positioned.
    pub positioned: bool,
    /// Custom data, raw JSON.
    pub data: Option<&'a str>,
}

// ---------------------------------------------------------------------------
// Encoding: replies
// ---------------------------------------------------------------------------

/// `{"id":N,"<field>":` + body + `}`.
fn reply(id: u32, field: &str, cap: usize, body: impl FnOnce(&mut String)) -> String {
    let mut out = String::with_capacity(cap + field.len() + 20);
    let mut o = Obj::open(&mut out);
    o.uint("id", u64::from(id));
    body(o.key(field));
    o.close();
    out
}

/// A reply with a result given as JSON text (`None`: the empty result `{}`):
/// `{"id":N,"<method>":<result>}`. For the methods whose result has no
/// fields (`publish`, `unsubscribe`, `ping`) and for results built elsewhere.
pub fn encode_reply(id: u32, method: Method, result: Option<&str>) -> String {
    let result = result.unwrap_or(PING);
    reply(id, method.wire_name(), result.len(), |out| {
        out.push_str(result)
    })
}

/// An error reply: `{"id":N,"error":{"code":C,"message":M,"temporary":true}}`
/// (`temporary` only when true).
pub fn encode_error_reply(id: u32, code: u32, message: &str, temporary: bool) -> String {
    reply(id, "error", message.len() + 48, |out| {
        let mut o = Obj::open(out);
        o.uint("code", u64::from(code));
        o.str("message", message);
        o.bool("temporary", temporary);
        o.close();
    })
}

/// The connect reply: `{"id":N,"connect":{"client","version","expires",
/// "ttl","data","subs","ping","pong","node"}}`, zero fields omitted.
pub fn encode_connect_reply(id: u32, r: &ConnectResult<'_>) -> String {
    let cap = 96 + r.client.len() + r.version.len() + r.node.len() + r.data.map_or(0, str::len);
    reply(id, "connect", cap, |out| {
        let mut o = Obj::open(out);
        o.str("client", r.client);
        o.str("version", r.version);
        o.bool("expires", r.expires);
        o.uint("ttl", u64::from(r.ttl));
        o.raw("data", r.data);
        if !r.subs.is_empty() {
            let mut subs = Obj::open(o.key("subs"));
            for (channel, result) in r.subs {
                write_subscribe_result(subs.string_key(channel), result);
            }
            subs.close();
        }
        o.uint("ping", u64::from(r.ping));
        o.bool("pong", r.pong);
        o.str("node", r.node);
        o.close();
    })
}

fn write_subscribe_result(out: &mut String, r: &SubscribeResult<'_>) {
    let mut o = Obj::open(out);
    o.bool("expires", r.expires);
    o.uint("ttl", u64::from(r.ttl));
    o.bool("recoverable", r.recoverable);
    o.str("epoch", r.epoch);
    if let Some(raw) = r.raw_publications.filter(|r| *r != "[]") {
        o.key("publications").push_str(raw);
    } else if !r.publications.is_empty() {
        write_publications(o.key("publications"), r.publications);
    }
    o.bool("recovered", r.recovered);
    o.uint("offset", r.offset);
    o.bool("positioned", r.positioned);
    o.raw("data", r.data);
    o.bool("was_recovering", r.was_recovering);
    o.close();
}

fn write_publications(out: &mut String, pubs: &[Publication<'_>]) {
    out.reserve(pubs.iter().map(Publication::len_hint).sum::<usize>() + 2);
    out.push('[');
    for (i, p) in pubs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_publication(out, p);
    }
    out.push(']');
}

/// The subscribe reply: `{"id":N,"subscribe":{"expires","ttl","recoverable",
/// "epoch","publications","recovered","offset","positioned","data",
/// "was_recovering"}}`, zero fields omitted.
pub fn encode_subscribe_reply(id: u32, r: &SubscribeResult<'_>) -> String {
    reply(id, "subscribe", 96 + r.epoch.len(), |out| {
        write_subscribe_result(out, r)
    })
}

/// The history reply: `{"id":N,"history":{"publications":[…],"epoch":E,
/// "offset":O}}`, every field always written.
pub fn encode_history_reply(id: u32, r: &HistoryResult<'_>) -> String {
    reply(id, "history", 48 + r.epoch.len(), |out| {
        let mut o = Obj::open(out);
        match r.raw_publications {
            Some(raw) => o.key("publications").push_str(raw),
            None => write_publications(o.key("publications"), r.publications),
        }
        write_str(r.epoch, o.key("epoch"));
        write_u64(o.key("offset"), r.offset);
        o.close();
    })
}

/// The presence reply: `{"id":N,"presence":{"presence":{<client>:<info>,…}}}`,
/// keyed by each info's `client` (the map is always written, `{}` if empty).
pub fn encode_presence_reply<'r, 'c: 'r>(
    id: u32,
    clients: impl IntoIterator<Item = &'r ClientInfo<'c>>,
) -> String {
    reply(id, "presence", 64, |out| {
        let mut o = Obj::open(out);
        let mut map = Obj::open(o.key("presence"));
        for info in clients {
            let out = map.string_key(&info.client);
            out.reserve(info.len_hint());
            write_client_info(out, info);
        }
        map.close();
        o.close();
    })
}

/// [`encode_presence_reply`] from client infos already encoded as JSON
/// objects (as presence stores them), each keyed by its client id.
pub fn encode_presence_reply_raw<'a>(
    id: u32,
    clients: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    reply(id, "presence", 64, |out| {
        let mut o = Obj::open(out);
        let mut map = Obj::open(o.key("presence"));
        for (client, info) in clients {
            map.string_key(client).push_str(info);
        }
        map.close();
        o.close();
    })
}

/// A join (`join: true`) or leave push from a client info already encoded
/// as a JSON object.
pub fn encode_join_leave_push_raw(channel: &str, join: bool, info: &str) -> String {
    let field = if join { "join" } else { "leave" };
    push(channel, field, info.len() + 10, |out| {
        let mut o = Obj::open(out);
        o.key("info").push_str(info);
        o.close();
    })
}

/// The presence stats reply: `{"id":N,"presence_stats":{"num_clients":C,
/// "num_users":U}}` (both always written).
pub fn encode_presence_stats_reply(id: u32, num_clients: u32, num_users: u32) -> String {
    reply(id, "presence_stats", 48, |out| {
        let mut o = Obj::open(out);
        write_u64(o.key("num_clients"), u64::from(num_clients));
        write_u64(o.key("num_users"), u64::from(num_users));
        o.close();
    })
}

/// The refresh reply: `{"id":N,"refresh":{"client","version","expires","ttl"}}`,
/// zero fields omitted.
pub fn encode_refresh_reply(id: u32, r: &RefreshResult<'_>) -> String {
    reply(
        id,
        "refresh",
        64 + r.client.len() + r.version.len(),
        |out| {
            let mut o = Obj::open(out);
            o.str("client", r.client);
            o.str("version", r.version);
            o.bool("expires", r.expires);
            o.uint("ttl", u64::from(r.ttl));
            o.close();
        },
    )
}

/// The sub_refresh reply: `{"id":N,"sub_refresh":{"expires","ttl"}}`, zero
/// fields omitted.
pub fn encode_sub_refresh_reply(id: u32, expires: bool, ttl: u32) -> String {
    reply(id, "sub_refresh", 32, |out| {
        let mut o = Obj::open(out);
        o.bool("expires", expires);
        o.uint("ttl", u64::from(ttl));
        o.close();
    })
}

/// The rpc reply: `{"id":N,"rpc":{"data":…}}` (`{}` without data).
pub fn encode_rpc_reply(id: u32, data: Option<&str>) -> String {
    reply(id, "rpc", 16 + data.map_or(0, str::len), |out| {
        let mut o = Obj::open(out);
        o.raw("data", data);
        o.close();
    })
}

// ---------------------------------------------------------------------------
// Encoding: pushes (no id)
// ---------------------------------------------------------------------------

/// `{"push":{"channel":C,"<field>":` + body + `}}`.
fn push(channel: &str, field: &str, cap: usize, body: impl FnOnce(&mut String)) -> String {
    let mut out = String::with_capacity(cap + channel.len() + field.len() + 28);
    write_push(&mut out, channel, field, body);
    out
}

fn write_push(out: &mut String, channel: &str, field: &str, body: impl FnOnce(&mut String)) {
    let mut o = Obj::open(out);
    let mut p = Obj::open(o.key("push"));
    p.str("channel", channel);
    body(p.key(field));
    p.close();
    o.close();
}

/// The exact capacity [`encode_pub_push`] allocates.
fn pub_push_capacity(channel: &str, p: &Publication<'_>) -> usize {
    // {"push":{"channel":"…","pub":{…}}}: 30 bytes around the channel.
    p.len_hint() + channel.len() + 30
}

/// A publication push: `{"push":{"channel":C,"pub":{"data":…,"info":…,
/// "offset":…}}}`. One allocation when no string needs escaping.
pub fn encode_pub_push(channel: &str, p: &Publication<'_>) -> String {
    let mut out = String::with_capacity(pub_push_capacity(channel, p));
    write_pub_push(&mut out, channel, p);
    out
}

/// Appends a publication push, as [`encode_pub_push`] does.
pub fn write_pub_push(out: &mut String, channel: &str, p: &Publication<'_>) {
    write_push(out, channel, "pub", |out| write_publication(out, p));
}

/// Appends one publication object (`{"data","info","offset"}`).
pub fn write_publication(out: &mut String, p: &Publication<'_>) {
    let mut o = Obj::open(out);
    o.raw("data", Some(p.data));
    if let Some(info) = p.info {
        write_client_info(o.key("info"), info);
    }
    o.uint("offset", p.offset);
    o.close();
}

/// Appends one client info object (`{"user","client","conn_info","chan_info"}`).
pub fn write_client_info(out: &mut String, info: &ClientInfo<'_>) {
    let mut o = Obj::open(out);
    write_str(&info.user, o.key("user"));
    write_str(&info.client, o.key("client"));
    o.raw("conn_info", info.conn_info.as_deref());
    o.raw("chan_info", info.chan_info.as_deref());
    o.close();
}

fn info_body(info: &ClientInfo<'_>) -> impl FnOnce(&mut String) {
    move |out| {
        let mut o = Obj::open(out);
        write_client_info(o.key("info"), info);
        o.close();
    }
}

/// A join push: `{"push":{"channel":C,"join":{"info":{…}}}}`.
pub fn encode_join_push(channel: &str, info: &ClientInfo<'_>) -> String {
    push(channel, "join", info.len_hint() + 10, info_body(info))
}

/// A leave push: `{"push":{"channel":C,"leave":{"info":{…}}}}`.
pub fn encode_leave_push(channel: &str, info: &ClientInfo<'_>) -> String {
    push(channel, "leave", info.len_hint() + 10, info_body(info))
}

/// An unsubscribe push: `{"push":{"channel":C,"unsubscribe":{"code":N,
/// "reason":R}}}`. See [`UnsubscribeCode`].
pub fn encode_unsubscribe_push(channel: &str, code: u32, reason: &str) -> String {
    push(channel, "unsubscribe", reason.len() + 32, |out| {
        let mut o = Obj::open(out);
        o.uint("code", u64::from(code));
        o.str("reason", reason);
        o.close();
    })
}

/// A server-side subscribe push: `{"push":{"channel":C,"subscribe":{
/// "recoverable","epoch","offset","positioned","data"}}}`, zero fields omitted.
pub fn encode_subscribe_push(channel: &str, s: &SubscribePush<'_>) -> String {
    let cap = 80 + s.epoch.len() + s.data.map_or(0, str::len);
    push(channel, "subscribe", cap, |out| {
        let mut o = Obj::open(out);
        o.bool("recoverable", s.recoverable);
        o.str("epoch", s.epoch);
        o.uint("offset", s.offset);
        o.bool("positioned", s.positioned);
        o.raw("data", s.data);
        o.close();
    })
}

/// A message push (the server-to-client counterpart of `send`), no channel:
/// `{"push":{"message":{"data":…}}}`.
pub fn encode_message_push(data: &str) -> String {
    push("", "message", data.len() + 12, |out| {
        let mut o = Obj::open(out);
        o.raw("data", Some(data));
        o.close();
    })
}

/// A disconnect push, no channel: `{"push":{"disconnect":{"code":N,
/// "reason":R,"reconnect":true}}}` (`reconnect` only when true). On
/// WebSocket Centrifugo closes with the code instead; this is for
/// transports that cannot.
pub fn encode_disconnect_push(code: u16, reason: &str, reconnect: bool) -> String {
    push("", "disconnect", reason.len() + 48, |out| {
        let mut o = Obj::open(out);
        o.uint("code", u64::from(code));
        o.str("reason", reason);
        o.bool("reconnect", reconnect);
        o.close();
    })
}

// ---------------------------------------------------------------------------
// Writing helpers
// ---------------------------------------------------------------------------

/// Writes one JSON object, a member at a time, omitting zero values.
struct Obj<'o> {
    out: &'o mut String,
    empty: bool,
}

impl<'o> Obj<'o> {
    fn open(out: &'o mut String) -> Self {
        out.push('{');
        Obj { out, empty: true }
    }

    fn comma(&mut self) {
        if !self.empty {
            self.out.push(',');
        }
        self.empty = false;
    }

    /// Starts member `k` (a plain ASCII name) and returns the output for its value.
    fn key(&mut self, k: &str) -> &mut String {
        self.comma();
        self.out.push('"');
        self.out.push_str(k);
        self.out.push_str("\":");
        self.out
    }

    /// Starts a member whose name is arbitrary text (escaped).
    fn string_key(&mut self, k: &str) -> &mut String {
        self.comma();
        write_str(k, self.out);
        self.out.push(':');
        self.out
    }

    fn str(&mut self, k: &str, v: &str) {
        if !v.is_empty() {
            write_str(v, self.key(k));
        }
    }

    fn bool(&mut self, k: &str, v: bool) {
        if v {
            self.key(k).push_str("true");
        }
    }

    fn uint(&mut self, k: &str, v: u64) {
        if v != 0 {
            write_u64(self.key(k), v);
        }
    }

    fn int(&mut self, k: &str, v: i64) {
        if v != 0 {
            let out = self.key(k);
            if v < 0 {
                out.push('-');
            }
            write_u64(out, v.unsigned_abs());
        }
    }

    fn raw(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            self.key(k).push_str(v);
        }
    }

    fn close(self) {
        self.out.push('}');
    }
}

/// Appends `s` as a JSON string: directly when nothing needs escaping (the
/// common case, no allocation), else through [`seed::write_json_string`].
/// Both give the same text (serde_json escapes only `"`, `\` and controls).
fn write_str(s: &str, out: &mut String) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        seed::write_json_string(s, out);
    }
}

fn write_u64(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(char::from(b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn parse(s: &str) -> Result<Vec<Parsed<'_>>, FrameError> {
        parse_frame(s.as_bytes(), &limits())
    }

    /// Parses a frame of exactly one valid command.
    fn one(s: &str) -> Command<'_> {
        let mut v = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(v.len(), 1, "{s}");
        v.pop().unwrap().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// Parses a frame of exactly one invalid command.
    fn bad(s: &str) -> CommandError {
        let mut v = parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(v.len(), 1, "{s}");
        v.pop().unwrap().expect_err(s)
    }

    fn json(s: &str) -> RawJson<'_> {
        RawJson::new(s).unwrap()
    }

    fn assert_verbatim(s: &str) -> Command<'_> {
        let c = one(s);
        assert_eq!(c.encode(), s);
        c
    }

    #[test]
    fn research_command_frames_parse_and_encode_verbatim() {
        assert_eq!(
            assert_verbatim(r#"{"id":1,"connect":{"token":"<JWT>","name":"js"}}"#),
            Command {
                id: 1,
                request: Request::Connect {
                    token: Some("<JWT>".into()),
                    data: None,
                    name: Some("js".into()),
                    version: None,
                }
            }
        );
        let c = assert_verbatim(r#"{"id":2,"subscribe":{"channel":"chat:42"}}"#);
        assert_eq!(c.request.channel(), Some("chat:42"));
        assert_eq!(assert_verbatim("{}").request, Request::Pong);
        assert_eq!(
            assert_verbatim(r#"{"id":3,"publish":{"channel":"chat:42","data":{"text":"yo"}}}"#)
                .request,
            Request::Publish {
                channel: "chat:42".into(),
                data: json(r#"{"text":"yo"}"#),
            }
        );
        assert_verbatim(r#"{"id":4,"presence":{"channel":"chat:42"}}"#);
        assert_verbatim(r#"{"id":5,"presence_stats":{"channel":"chat:42"}}"#);
        assert_eq!(
            assert_verbatim(
                r#"{"id":6,"history":{"channel":"chat:42","limit":10,"since":{"offset":12,"epoch":"x7"}}}"#
            )
            .request,
            Request::History {
                channel: "chat:42".into(),
                limit: Some(10),
                since: Some(StreamPosition {
                    offset: 12,
                    epoch: "x7".into()
                }),
                reverse: false,
            }
        );
        assert_eq!(
            assert_verbatim(
                r#"{"id":7,"subscribe":{"channel":"chat:42","recover":true,"epoch":"x7","offset":15}}"#
            )
            .request,
            Request::Subscribe {
                channel: "chat:42".into(),
                token: None,
                recover: true,
                epoch: Some("x7".into()),
                offset: Some(15),
                join_leave: false,
                positioned: false,
                recoverable: false,
                data: None,
            }
        );
        assert_verbatim(r#"{"id":8,"unsubscribe":{"channel":"chat:42"}}"#);
        assert_eq!(
            assert_verbatim(r#"{"id":9,"refresh":{"token":"<new JWT>"}}"#).request,
            Request::Refresh {
                token: "<new JWT>".into()
            }
        );
        assert_eq!(
            assert_verbatim(
                r#"{"id":10,"sub_refresh":{"channel":"$secret","token":"<new sub JWT>"}}"#
            )
            .request,
            Request::SubRefresh {
                channel: "$secret".into(),
                token: "<new sub JWT>".into()
            }
        );
    }

    #[test]
    fn research_reply_frames_encode_verbatim() {
        assert_eq!(
            encode_connect_reply(
                1,
                &ConnectResult {
                    client: "e2a1…",
                    ping: 25,
                    pong: true,
                    ..Default::default()
                }
            ),
            r#"{"id":1,"connect":{"client":"e2a1…","ping":25,"pong":true}}"#
        );
        assert_eq!(
            encode_subscribe_reply(
                2,
                &SubscribeResult {
                    recoverable: true,
                    epoch: "x7",
                    offset: 14,
                    ..Default::default()
                }
            ),
            r#"{"id":2,"subscribe":{"recoverable":true,"epoch":"x7","offset":14}}"#
        );
        assert_eq!(
            encode_pub_push(
                "chat:42",
                &Publication {
                    data: r#"{"text":"hi"}"#,
                    info: None,
                    offset: 15
                }
            ),
            r#"{"push":{"channel":"chat:42","pub":{"data":{"text":"hi"},"offset":15}}}"#
        );
        assert_eq!(PING, "{}");
        assert_eq!(
            encode_reply(3, Method::Publish, None),
            r#"{"id":3,"publish":{}}"#
        );
        let c1 = ClientInfo {
            user: "42".into(),
            client: "c1".into(),
            conn_info: Some(r#"{"name":"Alex"}"#.into()),
            chan_info: Some("{}".into()),
        };
        assert_eq!(
            encode_presence_reply(4, [&c1]),
            r#"{"id":4,"presence":{"presence":{"c1":{"user":"42","client":"c1","conn_info":{"name":"Alex"},"chan_info":{}}}}}"#
        );
        assert_eq!(
            encode_presence_stats_reply(5, 3, 2),
            r#"{"id":5,"presence_stats":{"num_clients":3,"num_users":2}}"#
        );
        let pubs = [
            Publication {
                data: r#"{"n":1}"#,
                info: None,
                offset: 13,
            },
            Publication {
                data: r#"{"n":2}"#,
                info: None,
                offset: 14,
            },
        ];
        assert_eq!(
            encode_history_reply(
                6,
                &HistoryResult {
                    publications: &pubs,
                    epoch: "x7",
                    offset: 15,
                    raw_publications: None,
                }
            ),
            r#"{"id":6,"history":{"publications":[{"data":{"n":1},"offset":13},{"data":{"n":2},"offset":14}],"epoch":"x7","offset":15}}"#
        );
        // The research file's constructed example lists these fields in
        // another order; client.proto (and Centrifugo's encoder) use this one.
        assert_eq!(
            encode_subscribe_reply(
                7,
                &SubscribeResult {
                    recoverable: true,
                    positioned: true,
                    epoch: "x7",
                    offset: 15,
                    was_recovering: true,
                    recovered: true,
                    publications: &pubs,
                    ..Default::default()
                }
            ),
            r#"{"id":7,"subscribe":{"recoverable":true,"epoch":"x7","publications":[{"data":{"n":1},"offset":13},{"data":{"n":2},"offset":14}],"recovered":true,"offset":15,"positioned":true,"was_recovering":true}}"#
        );
        assert_eq!(
            encode_reply(8, Method::Unsubscribe, None),
            r#"{"id":8,"unsubscribe":{}}"#
        );
        assert_eq!(
            encode_refresh_reply(
                9,
                &RefreshResult {
                    client: "e2a1…",
                    version: "6.x",
                    expires: true,
                    ttl: 600
                }
            ),
            r#"{"id":9,"refresh":{"client":"e2a1…","version":"6.x","expires":true,"ttl":600}}"#
        );
        assert_eq!(
            encode_sub_refresh_reply(10, true, 3600),
            r#"{"id":10,"sub_refresh":{"expires":true,"ttl":3600}}"#
        );
        assert_eq!(
            ErrorCode::PERMISSION_DENIED.encode_reply(11),
            r#"{"id":11,"error":{"code":103,"message":"permission denied"}}"#
        );
        let c9 = ClientInfo {
            user: "56".into(),
            client: "c9".into(),
            conn_info: Some(r#"{"name":"Alice"}"#.into()),
            chan_info: None,
        };
        assert_eq!(
            encode_join_push("chat:42", &c9),
            r#"{"push":{"channel":"chat:42","join":{"info":{"user":"56","client":"c9","conn_info":{"name":"Alice"}}}}}"#
        );
        let c9 = ClientInfo {
            conn_info: None,
            ..c9
        };
        assert_eq!(
            encode_leave_push("chat:42", &c9),
            r#"{"push":{"channel":"chat:42","leave":{"info":{"user":"56","client":"c9"}}}}"#
        );
        assert_eq!(
            UnsubscribeCode::INSUFFICIENT_STATE.encode_push("chat:42"),
            r#"{"push":{"channel":"chat:42","unsubscribe":{"code":2500,"reason":"insufficient state"}}}"#
        );
    }

    #[test]
    fn other_encoders() {
        assert_eq!(
            ErrorCode::INTERNAL.encode_reply(3),
            r#"{"id":3,"error":{"code":100,"message":"internal server error","temporary":true}}"#
        );
        assert_eq!(
            encode_error_reply(4, 4001, "custom \"x\"", false),
            r#"{"id":4,"error":{"code":4001,"message":"custom \"x\""}}"#
        );
        let sub = SubscribeResult {
            recoverable: true,
            offset: 3,
            epoch: "e",
            ..Default::default()
        };
        assert_eq!(
            encode_connect_reply(
                1,
                &ConnectResult {
                    client: "c",
                    version: "0.1.0",
                    expires: true,
                    ttl: 60,
                    data: Some(r#"{"a":1}"#),
                    subs: &[("news", sub), ("a\"b", SubscribeResult::default())],
                    ping: 25,
                    pong: true,
                    node: "n1",
                }
            ),
            r#"{"id":1,"connect":{"client":"c","version":"0.1.0","expires":true,"ttl":60,"data":{"a":1},"subs":{"news":{"recoverable":true,"epoch":"e","offset":3},"a\"b":{}},"ping":25,"pong":true,"node":"n1"}}"#
        );
        assert_eq!(
            encode_history_reply(2, &HistoryResult::default()),
            r#"{"id":2,"history":{"publications":[],"epoch":"","offset":0}}"#
        );
        assert_eq!(
            encode_presence_reply(3, []),
            r#"{"id":3,"presence":{"presence":{}}}"#
        );
        assert_eq!(
            encode_presence_stats_reply(4, 0, 0),
            r#"{"id":4,"presence_stats":{"num_clients":0,"num_users":0}}"#
        );
        assert_eq!(
            encode_sub_refresh_reply(5, false, 0),
            r#"{"id":5,"sub_refresh":{}}"#
        );
        assert_eq!(
            encode_rpc_reply(6, Some("[1,2]")),
            r#"{"id":6,"rpc":{"data":[1,2]}}"#
        );
        assert_eq!(encode_rpc_reply(7, None), r#"{"id":7,"rpc":{}}"#);
        assert_eq!(
            encode_reply(8, Method::History, Some(r#"{"x":1}"#)),
            r#"{"id":8,"history":{"x":1}}"#
        );
        assert_eq!(
            encode_subscribe_push(
                "ch",
                &SubscribePush {
                    recoverable: true,
                    epoch: "ep",
                    offset: 9,
                    positioned: true,
                    data: Some("null"),
                }
            ),
            r#"{"push":{"channel":"ch","subscribe":{"recoverable":true,"epoch":"ep","offset":9,"positioned":true,"data":null}}}"#
        );
        assert_eq!(
            encode_subscribe_push("ch", &SubscribePush::default()),
            r#"{"push":{"channel":"ch","subscribe":{}}}"#
        );
        assert_eq!(
            Disconnect::SHUTDOWN.encode_push(),
            r#"{"push":{"disconnect":{"code":3001,"reason":"shutdown"}}}"#
        );
        assert_eq!(
            encode_disconnect_push(3001, "shutdown", true),
            r#"{"push":{"disconnect":{"code":3001,"reason":"shutdown","reconnect":true}}}"#
        );
        assert_eq!(
            encode_message_push(r#""hi""#),
            r#"{"push":{"message":{"data":"hi"}}}"#
        );
        assert_eq!(
            encode_unsubscribe_push("ch", UnsubscribeCode::SERVER.code, ""),
            r#"{"push":{"channel":"ch","unsubscribe":{"code":2000}}}"#
        );
        // Escaped strings still give one valid JSON object.
        let p = Publication {
            data: "1",
            info: None,
            offset: u64::MAX,
        };
        let s = encode_pub_push("\u{1}\"\\é", &p);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["push"]["channel"], "\u{1}\"\\é");
        assert_eq!(v["push"]["pub"]["offset"], u64::MAX);
    }

    #[test]
    fn pub_push_with_info_takes_one_allocation() {
        let info = ClientInfo {
            user: "user-1".into(),
            client: "5b2e9c4f-0d1a-4c8e-9f3a-7e6d5c4b3a21".into(),
            conn_info: Some(r#"{"name":"Alice","roles":["a","b"]}"#.into()),
            chan_info: Some(r#"{"color":"red"}"#.into()),
        };
        let p = Publication {
            data: r#"{"text":"hello, world","n":[1,2,3]}"#,
            info: Some(&info),
            offset: u64::MAX,
        };
        let channel = "chat:a-long-channel-name:with/parts";
        let s = encode_pub_push(channel, &p);
        // No reallocation: the capacity is still the one reserved up front.
        assert_eq!(s.capacity(), pub_push_capacity(channel, &p));
        assert_eq!(
            s,
            format!(
                r#"{{"push":{{"channel":"{channel}","pub":{{"data":{},"info":{{"user":"user-1","client":"{}","conn_info":{},"chan_info":{}}},"offset":18446744073709551615}}}}}}"#,
                p.data,
                info.client,
                info.conn_info.as_deref().unwrap(),
                info.chan_info.as_deref().unwrap()
            )
        );
        let plain = Publication {
            data: "\"x\"",
            info: None,
            offset: 0,
        };
        let s = encode_pub_push("c", &plain);
        assert_eq!(s.capacity(), pub_push_capacity("c", &plain));
        assert_eq!(s, r#"{"push":{"channel":"c","pub":{"data":"x"}}}"#);
        let top = Publication {
            offset: u64::MAX,
            ..plain
        };
        let s = encode_pub_push("c", &top);
        assert_eq!(s.capacity(), pub_push_capacity("c", &top));
        let mut out = String::from("x\n");
        write_pub_push(&mut out, "c", &plain);
        assert_eq!(
            out,
            "x\n{\"push\":{\"channel\":\"c\",\"pub\":{\"data\":\"x\"}}}"
        );
    }

    #[test]
    fn strings_are_escaped_like_seed() {
        for s in [
            "plain",
            "a\"b",
            "back\\slash",
            "nl\n",
            "\u{1f}",
            "é✓😀",
            "\u{7f}",
            "\u{2028}",
        ] {
            let mut fast = String::new();
            write_str(s, &mut fast);
            let mut slow = String::new();
            seed::write_json_string(s, &mut slow);
            assert_eq!(fast, slow, "{s:?}");
        }
    }

    #[test]
    fn every_request_round_trips() {
        let commands = [
            Command {
                id: 1,
                request: Request::Connect {
                    token: Some("t.o.k".into()),
                    data: Some(json(r#"{"a":[1,2.50,"x y"]}"#)),
                    name: Some("python".into()),
                    version: Some("0.5.0".into()),
                },
            },
            Command {
                id: 2,
                request: Request::Subscribe {
                    channel: "news:é \"q\"".into(),
                    token: Some("sub".into()),
                    recover: true,
                    epoch: Some("ep".into()),
                    offset: Some(u64::MAX),
                    join_leave: true,
                    positioned: true,
                    recoverable: true,
                    data: Some(json(r#"{"k":"v"}"#)),
                },
            },
            Command {
                id: 3,
                request: Request::Unsubscribe {
                    channel: "c".into(),
                },
            },
            Command {
                id: 4,
                request: Request::Publish {
                    channel: "c".into(),
                    data: json("null"),
                },
            },
            Command {
                id: 5,
                request: Request::Presence {
                    channel: "c".into(),
                },
            },
            Command {
                id: 6,
                request: Request::PresenceStats {
                    channel: "c".into(),
                },
            },
            Command {
                id: 7,
                request: Request::History {
                    channel: "c".into(),
                    limit: Some(-1),
                    since: Some(StreamPosition {
                        offset: 0,
                        epoch: "".into(),
                    }),
                    reverse: true,
                },
            },
            Command {
                id: 8,
                request: Request::Rpc {
                    method: Some("getUser".into()),
                    data: Some(json("[]")),
                },
            },
            Command {
                id: 0,
                request: Request::Send {
                    data: json(r#""hi""#),
                },
            },
            Command {
                id: 9,
                request: Request::Send { data: json("1e5") },
            },
            Command {
                id: 10,
                request: Request::Refresh { token: "t".into() },
            },
            Command {
                id: 11,
                request: Request::SubRefresh {
                    channel: "c".into(),
                    token: "t".into(),
                },
            },
            Command {
                id: u32::MAX,
                request: Request::Ping,
            },
            Command {
                id: 0,
                request: Request::Pong,
            },
            Command {
                id: 12,
                request: Request::Rpc {
                    method: None,
                    data: None,
                },
            },
            Command {
                id: 13,
                request: Request::Connect {
                    token: None,
                    data: None,
                    name: None,
                    version: None,
                },
            },
        ];
        for c in &commands {
            let enc = c.encode();
            assert_eq!(&one(&enc), c, "{enc}");
            assert_eq!(one(&enc).into_owned(), *c);
        }
        let frame = encode_frame(&commands);
        let parsed: Vec<Command<'_>> = parse(&frame)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(parsed, commands);
    }

    #[test]
    fn zero_values_read_as_absent() {
        let c = one(
            r#"{"id":1,"subscribe":{"channel":"c","token":"","epoch":"","offset":0,"recover":false,"data":null,"positioned":null}}"#,
        );
        assert_eq!(
            c.request,
            Request::Subscribe {
                channel: "c".into(),
                token: None,
                recover: false,
                epoch: None,
                offset: None,
                join_leave: false,
                positioned: false,
                recoverable: false,
                data: None,
            }
        );
        let c = one(r#"{"id":1,"history":{"channel":"c","limit":0,"since":null}}"#);
        assert_eq!(
            c.request,
            Request::History {
                channel: "c".into(),
                limit: None,
                since: None,
                reverse: false
            }
        );
        // null data of publish and send is the value null.
        let c = one(r#"{"id":1,"publish":{"channel":"c","data":null}}"#);
        assert_eq!(
            c.request,
            Request::Publish {
                channel: "c".into(),
                data: json("null")
            }
        );
        // A null method field is absent: Centrifugo takes the first non-null.
        let c = one(r#"{"id":1,"subscribe":null,"publish":{"channel":"c","data":1}}"#);
        assert_eq!(c.request.method(), Some(Method::Publish));
        // An id of null is no id: with no method, a pong.
        assert_eq!(one(r#"{"id":null}"#).request, Request::Pong);
        assert_eq!(one(r#"{"id":0}"#).request, Request::Pong);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let c = one(
            r#"{"id":1,"future":{"x":[1]},"connect":{"token":"t","subs":{"a":{"recover":true}},"headers":{"h":"v"},"flag":3,"profile":"p","dict":"d","zzz":null}}"#,
        );
        assert_eq!(
            c.request,
            Request::Connect {
                token: Some("t".into()),
                data: None,
                name: None,
                version: None
            }
        );
        // centrifuge-python's subscribe carries flag, delta, tf.
        let c = one(
            r#"{"id": 2, "subscribe": {"channel": "c", "flag": 3, "delta": "fossil", "tf": {"op": "and"}}}"#,
        );
        assert_eq!(c.request.channel(), Some("c"));
        // A pong may carry unknown fields too.
        assert_eq!(one(r#"{"x":1}"#).request, Request::Pong);
    }

    #[test]
    fn data_is_borrowed_or_compacted() {
        let c = one(r#"{"id":1,"publish":{"channel":"c","data":{"b":1.50,"a":"x y"}}}"#);
        let Request::Publish { data, channel } = c.request else {
            panic!()
        };
        assert!(data.is_borrowed());
        assert!(matches!(channel, Cow::Borrowed(_)));
        assert_eq!(data.as_str(), r#"{"b":1.50,"a":"x y"}"#);
        // As centrifuge-python sends it (json.dumps puts spaces after : and ,).
        let c = one(
            "{\"id\": 1, \"publish\": {\"channel\": \"c\", \"data\": {\"b\" : [1, 2], \"a\": \"x y\"}}}\r\n",
        );
        let Request::Publish { data, .. } = c.request else {
            panic!()
        };
        assert!(!data.is_borrowed());
        assert_eq!(data.as_str(), r#"{"b":[1,2],"a":"x y"}"#);
        // Lone surrogates inside data are just text, passed on as written.
        let c = one(r#"{"id":1,"publish":{"channel":"c","data":{"\ud800":"\udc00"}}}"#);
        let Request::Publish { data, .. } = c.request else {
            panic!()
        };
        assert_eq!(data.as_str(), r#"{"\ud800":"\udc00"}"#);
        assert!(RawJson::new("[1, 2]").is_some());
        assert!(RawJson::new("[1, 2").is_none());
        assert!(RawJson::new("").is_none());
    }

    #[test]
    fn batching_mixed_good_and_bad() {
        let frame = concat!(
            "{\"id\":1,\"connect\":{}}\n",
            "\n",
            "{\"id\":2,\"subscribe\":{\"channel\":\"\"}}\r\n",
            "   \r\n",
            "{\"id\":3,\"subscribe\":{\"channel\":\"a\"},\"publish\":{\"channel\":\"a\",\"data\":1}}\n",
            "{\"id\":4,\"publish\":{\"channel\":\"a\",\"data\":{}}}\n",
            "{\"subscribe\":{\"channel\":\"a\"}}\n",
            "{}\n",
            "{\"send\":{\"data\":[true]}}\n",
        );
        let v = parse(frame).unwrap();
        assert_eq!(v.len(), 7);
        assert_eq!(v[0].as_ref().unwrap().id, 1);
        let e = v[1].as_ref().unwrap_err();
        assert_eq!(
            (e.id, e.method, &e.kind),
            (2, Some(Method::Subscribe), &CommandErrorKind::ChannelEmpty)
        );
        assert_eq!(e.to_string(), "subscribe: channel is empty");
        assert_eq!(e.reply_id(), Some(2));
        assert_eq!(
            e.encode_reply().unwrap(),
            r#"{"id":2,"error":{"code":107,"message":"bad request"}}"#
        );
        let e = v[2].as_ref().unwrap_err();
        assert_eq!((e.id, &e.kind), (3, &CommandErrorKind::MultipleMethods));
        assert_eq!(e.method, Some(Method::Subscribe));
        assert_eq!(v[3].as_ref().unwrap().id, 4);
        let e = v[4].as_ref().unwrap_err();
        assert_eq!((e.id, &e.kind), (0, &CommandErrorKind::MissingId));
        assert_eq!(e.reply_id(), None);
        assert_eq!(e.encode_reply(), None);
        assert_eq!(v[5].as_ref().unwrap().request, Request::Pong);
        assert_eq!(
            v[6].as_ref().unwrap().request,
            Request::Send {
                data: json("[true]")
            }
        );
        // One bad line refuses the whole frame.
        assert_eq!(
            parse("{\"id\":1,\"connect\":{}}\n{\"id\":2,"),
            Err(FrameError::NotJson)
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("\n\r\n \n").unwrap(), vec![]);
    }

    #[test]
    fn command_errors() {
        let cases: &[(&str, u32, Option<Method>, CommandErrorKind, &str)] = &[
            (
                r#"{"id":4294967296,"connect":{}}"#,
                0,
                Some(Method::Connect),
                CommandErrorKind::BadId,
                "connect: id must be an integer from 0 to 4294967295",
            ),
            (r#"{"id":-1}"#, 0, None, CommandErrorKind::BadId, ""),
            (r#"{"id":1.0}"#, 0, None, CommandErrorKind::BadId, ""),
            (r#"{"id":1e1}"#, 0, None, CommandErrorKind::BadId, ""),
            (r#"{"id":"1"}"#, 0, None, CommandErrorKind::BadId, ""),
            (
                r#"{"id":99999999999999999999999999}"#,
                0,
                None,
                CommandErrorKind::BadId,
                "",
            ),
            (
                r#"{"id":1,"id":2,"ping":{}}"#,
                0,
                Some(Method::Ping),
                CommandErrorKind::DuplicateField { field: "id" },
                "ping: id appears more than once",
            ),
            (
                r#"{"id":5,"foo":{}}"#,
                5,
                None,
                CommandErrorKind::UnknownMethod,
                "no known method",
            ),
            (
                r#"{"id":5,"ping":{},"ping":{}}"#,
                5,
                Some(Method::Ping),
                CommandErrorKind::MultipleMethods,
                "ping: more than one method in one command",
            ),
            (
                r#"{"presence":{"channel":"c"}}"#,
                0,
                Some(Method::Presence),
                CommandErrorKind::MissingId,
                "presence: missing id",
            ),
            (
                r#"{"id":0,"ping":{}}"#,
                0,
                Some(Method::Ping),
                CommandErrorKind::MissingId,
                "",
            ),
            (
                r#"{"id":6,"subscribe":"chat"}"#,
                6,
                Some(Method::Subscribe),
                CommandErrorKind::MethodNotObject,
                "subscribe: request must be an object",
            ),
            (
                r#"{"id":6,"connect":[]}"#,
                6,
                Some(Method::Connect),
                CommandErrorKind::MethodNotObject,
                "",
            ),
            (
                r#"{"id":7,"subscribe":{}}"#,
                7,
                Some(Method::Subscribe),
                CommandErrorKind::MissingField { field: "channel" },
                "subscribe: missing channel",
            ),
            (
                r#"{"id":7,"unsubscribe":{"channel":null}}"#,
                7,
                Some(Method::Unsubscribe),
                CommandErrorKind::MissingField { field: "channel" },
                "",
            ),
            (
                r#"{"id":7,"publish":{"channel":"c"}}"#,
                7,
                Some(Method::Publish),
                CommandErrorKind::MissingField { field: "data" },
                "publish: missing data",
            ),
            (
                r#"{"send":{}}"#,
                0,
                Some(Method::Send),
                CommandErrorKind::MissingField { field: "data" },
                "send: missing data",
            ),
            (
                r#"{"id":7,"refresh":{"token":""}}"#,
                7,
                Some(Method::Refresh),
                CommandErrorKind::MissingField { field: "token" },
                "refresh: missing token",
            ),
            (
                r#"{"id":7,"sub_refresh":{"channel":"c"}}"#,
                7,
                Some(Method::SubRefresh),
                CommandErrorKind::MissingField { field: "token" },
                "",
            ),
            (
                r#"{"id":8,"presence":{"channel":7}}"#,
                8,
                Some(Method::Presence),
                CommandErrorKind::WrongType {
                    field: "channel",
                    expected: "a string",
                },
                "presence: channel must be a string",
            ),
            (
                r#"{"id":8,"subscribe":{"channel":"c","recover":1}}"#,
                8,
                Some(Method::Subscribe),
                CommandErrorKind::WrongType {
                    field: "recover",
                    expected: "a boolean",
                },
                "subscribe: recover must be a boolean",
            ),
            (
                r#"{"id":8,"subscribe":{"channel":"c","offset":-1}}"#,
                8,
                Some(Method::Subscribe),
                CommandErrorKind::WrongType {
                    field: "offset",
                    expected: "an integer from 0 to 18446744073709551615",
                },
                "subscribe: offset must be an integer from 0 to 18446744073709551615",
            ),
            (
                r#"{"id":8,"subscribe":{"channel":"c","offset":18446744073709551616}}"#,
                8,
                Some(Method::Subscribe),
                CommandErrorKind::WrongType {
                    field: "offset",
                    expected: "an integer from 0 to 18446744073709551615",
                },
                "",
            ),
            (
                r#"{"id":8,"history":{"channel":"c","limit":2147483648}}"#,
                8,
                Some(Method::History),
                CommandErrorKind::WrongType {
                    field: "limit",
                    expected: "an integer from -2147483648 to 2147483647",
                },
                "history: limit must be an integer from -2147483648 to 2147483647",
            ),
            (
                r#"{"id":8,"history":{"channel":"c","since":[1]}}"#,
                8,
                Some(Method::History),
                CommandErrorKind::WrongType {
                    field: "since",
                    expected: "an object",
                },
                "history: since must be an object",
            ),
            (
                r#"{"id":8,"history":{"channel":"c","since":{"offset":"1"}}}"#,
                8,
                Some(Method::History),
                CommandErrorKind::WrongType {
                    field: "since.offset",
                    expected: "an integer from 0 to 18446744073709551615",
                },
                "",
            ),
            (
                r#"{"id":8,"history":{"channel":"c","since":{"epoch":1}}}"#,
                8,
                Some(Method::History),
                CommandErrorKind::WrongType {
                    field: "since.epoch",
                    expected: "a string",
                },
                "history: since.epoch must be a string",
            ),
            (
                r#"{"id":8,"history":{"channel":"c","since":{"epoch":"a","epoch":"b"}}}"#,
                8,
                Some(Method::History),
                CommandErrorKind::DuplicateField {
                    field: "since.epoch",
                },
                "history: since.epoch appears more than once",
            ),
            (
                r#"{"id":8,"rpc":{"method":{}}}"#,
                8,
                Some(Method::Rpc),
                CommandErrorKind::WrongType {
                    field: "method",
                    expected: "a string",
                },
                "",
            ),
            (
                r#"{"id":8,"connect":{"token":"\ud800"}}"#,
                8,
                Some(Method::Connect),
                CommandErrorKind::BadEscape { field: "token" },
                "connect: token has an invalid \\u escape",
            ),
            (
                r#"{"id":8,"subscribe":{"channel":"a\udc00b"}}"#,
                8,
                Some(Method::Subscribe),
                CommandErrorKind::BadEscape { field: "channel" },
                "",
            ),
            (
                r#"{"id":9,"subscribe":{"channel":"a","channel":"b"}}"#,
                9,
                Some(Method::Subscribe),
                CommandErrorKind::DuplicateField { field: "channel" },
                "subscribe: channel appears more than once",
            ),
            (
                r#"{"id":9,"publish":{"channel":"a","data":1,"data":2}}"#,
                9,
                Some(Method::Publish),
                CommandErrorKind::DuplicateField { field: "data" },
                "",
            ),
            (
                r#"{"id":10,"presence_stats":{"channel":""}}"#,
                10,
                Some(Method::PresenceStats),
                CommandErrorKind::ChannelEmpty,
                "presence_stats: channel is empty",
            ),
        ];
        for (input, id, method, kind, text) in cases {
            let e = bad(input);
            assert_eq!((e.id, e.method, &e.kind), (*id, *method, kind), "{input}");
            if !text.is_empty() {
                assert_eq!(e.to_string(), *text, "{input}");
            }
            assert!(CommandErrorKind::LABELS.contains(&e.label()));
            let want = if *kind == CommandErrorKind::UnknownMethod {
                ErrorCode::METHOD_NOT_FOUND
            } else {
                ErrorCode::BAD_REQUEST
            };
            assert_eq!(e.error_code(), want, "{input}");
            let reply = *id != 0 && *method != Some(Method::Send);
            assert_eq!(e.reply_id(), reply.then_some(*id), "{input}");
        }
        assert_eq!(
            bad(r#"{"id":5}"#).encode_reply().unwrap(),
            r#"{"id":5,"error":{"code":104,"message":"method not found"}}"#
        );
    }

    #[test]
    fn frame_errors() {
        let cases: &[(&[u8], FrameError, &str)] = &[
            (b"\xff{}", FrameError::NotUtf8, "frame is not valid UTF-8"),
            (b"nope", FrameError::NotJson, "command is not valid JSON"),
            (b"{\"id\":1", FrameError::NotJson, ""),
            (b"{\"id\":1} {}", FrameError::NotJson, ""),
            (b"{}{}", FrameError::NotJson, ""),
            (b"{'id':1}", FrameError::NotJson, ""),
            (
                b"[1,2]",
                FrameError::NotObject,
                "command is not a JSON object",
            ),
            (b"\"x\"", FrameError::NotObject, ""),
            (b"42", FrameError::NotObject, ""),
            (b"null", FrameError::NotObject, ""),
            (b"{}\ntrue", FrameError::NotObject, ""),
            // A key no Rust string can hold, at the top level or in a request.
            (br#"{"\ud800":1}"#, FrameError::NotJson, ""),
            (br#"{"id":1,"ping":{"\udfff":1}}"#, FrameError::NotJson, ""),
            (
                br#"{"id":1,"history":{"channel":"c","since":{"\ud800":1}}}"#,
                FrameError::NotJson,
                "",
            ),
        ];
        for (input, err, text) in cases {
            let got = parse_frame(input, &limits()).unwrap_err();
            assert_eq!(&got, err, "{}", String::from_utf8_lossy(input));
            if !text.is_empty() {
                assert_eq!(got.to_string(), *text);
            }
            assert_eq!(got.disconnect(), Disconnect::BAD_REQUEST);
            assert!(FrameError::LABELS.contains(&got.label()));
        }
    }

    #[test]
    fn too_many_commands() {
        let ok = "{}\n".repeat(MAX_COMMANDS_PER_FRAME);
        assert_eq!(parse(&ok).unwrap().len(), MAX_COMMANDS_PER_FRAME);
        let ok = format!("{ok}\n\n\r\n");
        assert_eq!(parse(&ok).unwrap().len(), MAX_COMMANDS_PER_FRAME);
        let over = format!("{ok}{{}}");
        let e = parse(&over).unwrap_err();
        assert_eq!(e, FrameError::TooManyCommands { max: 100 });
        assert_eq!(e.to_string(), "more than 100 commands in one frame");
    }

    #[test]
    fn nesting_limit() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        // The command and its request are 2 levels.
        let frame = |n| {
            format!(
                r#"{{"id":1,"publish":{{"channel":"c","data":{}}}}}"#,
                nest(n)
            )
        };
        let c = frame(MAX_DEPTH - 2);
        assert_eq!(one(&c).encode(), c);
        let e = parse(&frame(MAX_DEPTH - 1)).unwrap_err();
        assert_eq!(e, FrameError::TooDeep { max: MAX_DEPTH });
        assert_eq!(e.to_string(), "command nested deeper than 64 levels");
        // Brackets inside strings do not count.
        let s = format!(
            r#"{{"id":1,"publish":{{"channel":"c","data":"{}\"["}}}}"#,
            "[".repeat(500)
        );
        assert!(parse(&s).unwrap()[0].is_ok());
        // Deep and broken: refused before serde_json sees it.
        assert_eq!(
            parse(&"[".repeat(60_000)).unwrap_err(),
            FrameError::TooDeep { max: MAX_DEPTH }
        );
        assert!(RawJson::new(&nest(MAX_DEPTH)).is_some());
        assert!(RawJson::new(&nest(MAX_DEPTH + 1)).is_none());
    }

    #[test]
    fn frame_size_limit() {
        let mut l = limits();
        l.max_frame_bytes = 10;
        assert!(parse_frame(b"{}\n{}\n{}\n", &l).is_ok());
        let e = parse_frame(b"{}\n{}\n{}\n{}", &l).unwrap_err();
        assert_eq!(e, FrameError::TooLarge { max: 10 });
        assert_eq!(e.to_string(), "frame larger than 10 bytes");
    }

    #[test]
    fn channels_unicode_escapes_and_length() {
        let c = one(r#"{"id":1,"subscribe":{"channel":"caf\u00e9 \"q\" \\ \ud83d\ude00"}}"#);
        assert_eq!(c.request.channel(), Some("café \"q\" \\ 😀"));
        assert_eq!(one(&c.encode()), c);
        let c = one(r#"{"id":1,"subscribe":{"channel":"日本語:ルーム"}}"#);
        let Request::Subscribe { channel, .. } = &c.request else {
            panic!()
        };
        assert!(matches!(channel, Cow::Borrowed("日本語:ルーム")));
        // Escaped keys name the same fields.
        let c = one(r#"{"\u0069d":3,"sub\u0073cribe":{"chan\u006eel":"x"}}"#);
        assert_eq!((c.id, c.request.channel()), (3, Some("x")));
        // The length limit counts bytes of UTF-8.
        let ok = "é".repeat(128);
        let long = format!("{ok}a");
        let frame = |ch: &str| format!(r#"{{"id":1,"presence":{{"channel":"{ch}"}}}}"#);
        assert_eq!(one(&frame(&ok)).request.channel(), Some(ok.as_str()));
        let e = bad(&frame(&long));
        assert_eq!(e.kind, CommandErrorKind::ChannelTooLong { max: 256 });
        assert_eq!(e.to_string(), "presence: channel longer than 256 bytes");
        let mut l = limits();
        l.max_room_bytes = 3;
        let v = parse_frame(
            r#"{"id":1,"history":{"channel":"\u00e9\u00e9"}}"#.as_bytes(),
            &l,
        )
        .unwrap();
        assert_eq!(
            v[0].as_ref().unwrap_err().kind,
            CommandErrorKind::ChannelTooLong { max: 3 }
        );
    }

    #[test]
    fn huge_ids() {
        assert_eq!(one(r#"{"id":4294967295,"ping":{}}"#).id, u32::MAX);
        let e = bad(r#"{"id":4294967296,"ping":{}}"#);
        assert_eq!(e.kind, CommandErrorKind::BadId);
        assert_eq!(e.reply_id(), None);
        assert_eq!(e.error_code(), ErrorCode::BAD_REQUEST);
    }

    #[test]
    fn send_keeps_an_id_it_is_given() {
        let c = one(r#"{"id":4,"send":{"data":{}}}"#);
        assert_eq!(c.id, 4);
        let e = bad(r#"{"id":4,"send":{"data":1,"data":2}}"#);
        assert_eq!(e.reply_id(), None, "send is never answered");
    }

    #[test]
    fn constants() {
        let codes: Vec<u32> = ErrorCode::ALL.iter().map(|e| e.code).collect();
        assert_eq!(codes, (100..=113).collect::<Vec<_>>());
        let temporary: Vec<u32> = ErrorCode::ALL
            .iter()
            .filter(|e| e.temporary)
            .map(|e| e.code)
            .collect();
        assert_eq!(temporary, [100, 111, 113]);
        assert_eq!(ErrorCode::BAD_REQUEST.message, "bad request");
        let codes: Vec<u16> = Disconnect::ALL.iter().map(|d| d.code).collect();
        assert_eq!(
            codes,
            [
                3000, 3001, 3004, 3005, 3006, 3008, 3009, 3010, 3011, 3012, 3013, 3014, 3500, 3501,
                3502, 3503, 3504, 3505, 3506, 3507, 3508, 3509
            ]
        );
        for d in Disconnect::ALL {
            assert!(!d.reason.is_empty() && d.reason.len() <= 123);
            assert_eq!(d.reconnect(), d.code < 3500, "{d:?}");
        }
        assert_eq!(Disconnect::BAD_REQUEST.reason, "bad request");
        assert_eq!(Disconnect::NO_PONG.reason, "no pong");
        assert!(Disconnect::new(4000, "app").reconnect());
        assert!(!Disconnect::new(4500, "app").reconnect());
        assert!(Disconnect::new(5000, "x").reconnect());
        assert!(!UnsubscribeCode::SERVER.resubscribe());
        assert!(UnsubscribeCode::INSUFFICIENT_STATE.resubscribe());
        assert_eq!(UnsubscribeCode::EXPIRED.code, 2501);
        for m in Method::ALL {
            assert_eq!(Method::from_wire(m.wire_name()), Some(m));
        }
        assert_eq!(Method::from_wire("Connect"), None);
    }

    #[test]
    fn error_texts_fit_a_close_frame() {
        let frame_errors = [
            FrameError::TooLarge { max: usize::MAX },
            FrameError::NotUtf8,
            FrameError::NotJson,
            FrameError::NotObject,
            FrameError::TooDeep { max: usize::MAX },
            FrameError::TooManyCommands { max: usize::MAX },
        ];
        for e in &frame_errors {
            assert!(e.to_string().len() <= 123, "{e}");
        }
        let labels: Vec<_> = frame_errors.iter().map(FrameError::label).collect();
        assert_eq!(labels, FrameError::LABELS);
        let kinds = [
            CommandErrorKind::BadId,
            CommandErrorKind::DuplicateField {
                field: "since.offset",
            },
            CommandErrorKind::UnknownMethod,
            CommandErrorKind::MultipleMethods,
            CommandErrorKind::MissingId,
            CommandErrorKind::MethodNotObject,
            CommandErrorKind::MissingField { field: "channel" },
            CommandErrorKind::WrongType {
                field: "since.offset",
                expected: "an integer from 0 to 18446744073709551615",
            },
            CommandErrorKind::BadEscape {
                field: "since.epoch",
            },
            CommandErrorKind::ChannelEmpty,
            CommandErrorKind::ChannelTooLong { max: usize::MAX },
        ];
        let labels: Vec<_> = kinds.iter().map(CommandErrorKind::label).collect();
        assert_eq!(labels, CommandErrorKind::LABELS);
        for kind in kinds {
            for method in [None, Some(Method::PresenceStats)] {
                let e = CommandError {
                    id: u32::MAX,
                    method,
                    kind: kind.clone(),
                };
                assert!(e.to_string().len() <= 123, "{e}");
            }
        }
        for l in CommandErrorKind::LABELS {
            assert!(!FrameError::LABELS.contains(&l), "{l} is in both");
        }
    }
}
