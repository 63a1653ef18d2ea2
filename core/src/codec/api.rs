//! Centrifugo's HTTP server API, as values: `POST /api/<method>` with a
//! JSON body becomes an [`ApiRequest`] (or an [`ApiError`] with the
//! protocol's code), and answers are encoded as `{"result":…}` or
//! `{"error":{"code":…,"message":…}}`, the shapes Centrifugo's API client
//! libraries (`cent` and the others) read.
//!
//! What is checked here: the method name, that the body is one JSON object
//! (an empty body is `{}`), no field twice, the type of every known field,
//! the required fields, and the bounds that do not depend on the node's
//! settings (idempotency keys, pattern lengths). Unknown fields are
//! ignored, as Centrifugo does. What needs the node (a channel's namespace,
//! its length limit, whether it keeps history) is the node's to judge.
//!
//! Nothing here panics on any input; the fuzz target `api_request` and a
//! property test hold it to that.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The path prefix of the server API.
pub const API_PREFIX: &str = "/api/";

/// The longest idempotency key accepted (it becomes part of a Redis key).
pub const MAX_IDEMPOTENCY_KEY: usize = 256;

/// The most channels one broadcast may name.
pub const MAX_BROADCAST_CHANNELS: usize = 1000;

/// The longest `pattern` of a `channels` request.
pub const MAX_PATTERN: usize = 1024;

/// How long a publish's idempotency key is remembered (Centrifugo: 5 min).
pub const IDEMPOTENCY_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// A server API method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiMethod {
    Publish,
    Broadcast,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Presence,
    PresenceStats,
    History,
    HistoryRemove,
    Channels,
    Info,
}

impl ApiMethod {
    /// Every method, in [`ApiMethod::LABELS`] order.
    pub const ALL: [ApiMethod; 11] = [
        ApiMethod::Publish,
        ApiMethod::Broadcast,
        ApiMethod::Subscribe,
        ApiMethod::Unsubscribe,
        ApiMethod::Disconnect,
        ApiMethod::Presence,
        ApiMethod::PresenceStats,
        ApiMethod::History,
        ApiMethod::HistoryRemove,
        ApiMethod::Channels,
        ApiMethod::Info,
    ];

    /// The methods' names (their paths and metric labels).
    pub const LABELS: [&'static str; 11] = [
        "publish",
        "broadcast",
        "subscribe",
        "unsubscribe",
        "disconnect",
        "presence",
        "presence_stats",
        "history",
        "history_remove",
        "channels",
        "info",
    ];

    /// The method a path segment names.
    pub fn from_name(name: &str) -> Option<ApiMethod> {
        let i = Self::LABELS.iter().position(|l| *l == name)?;
        Some(Self::ALL[i])
    }

    pub fn name(self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// Its position in [`ApiMethod::ALL`].
    pub fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|m| *m == self)
            .expect("every method is listed")
    }
}

impl fmt::Display for ApiMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An API error: the protocol's code, a message, and the HTTP status it
/// maps to when errors are sent as HTTP statuses (`--api-http-errors`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u32,
    pub message: Cow<'static, str>,
    /// The status in HTTP-errors mode.
    pub status: u16,
}

impl ApiError {
    pub const fn new(code: u32, message: &'static str, status: u16) -> ApiError {
        ApiError {
            code,
            message: Cow::Borrowed(message),
            status,
        }
    }

    /// 100: the broker could not answer (temporary).
    pub const INTERNAL: ApiError = ApiError::new(100, "internal server error", 503);
    /// 102: the channel's namespace is not configured.
    pub const UNKNOWN_CHANNEL: ApiError = ApiError::new(102, "unknown channel", 404);
    /// 104: no such API method.
    pub const METHOD_NOT_FOUND: ApiError = ApiError::new(104, "method not found", 404);
    /// 106: a limit was reached.
    pub const LIMIT_EXCEEDED: ApiError = ApiError::new(106, "limit exceeded", 400);
    /// 107: a malformed request.
    pub const BAD_REQUEST: ApiError = ApiError::new(107, "bad request", 400);
    /// 108: the feature is off (no history in the namespace, a method not
    /// built yet).
    pub const NOT_AVAILABLE: ApiError = ApiError::new(108, "not available", 400);
    /// 112: `since` names another epoch.
    pub const UNRECOVERABLE_POSITION: ApiError = ApiError::new(112, "unrecoverable position", 416);

    /// 107 with a reason (HTTP 400).
    pub fn bad_request(why: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError {
            code: 107,
            message: why.into(),
            status: 400,
        }
    }

    /// 107 for a field of the wrong type (HTTP 422).
    pub fn wrong_type(field: &str, want: &str) -> ApiError {
        ApiError {
            code: 107,
            message: format!("bad request: {field} must be {want}").into(),
            status: 422,
        }
    }

    /// The same code and status with another message.
    pub fn with_message(&self, message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError {
            message: message.into(),
            ..self.clone()
        }
    }

    /// `{"error":{"code":N,"message":"…"}}`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(40 + self.message.len());
        self.write(&mut out);
        out
    }

    /// Appends `{"error":{…}}`.
    pub fn write(&self, out: &mut String) {
        out.push_str("{\"error\":{\"code\":");
        out.push_str(&self.code.to_string());
        out.push_str(",\"message\":");
        write_json_str(&self.message, out);
        out.push_str("}}");
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

/// `{"result":<result>}`; `result` is a JSON object's text.
pub fn encode_result(result: &str) -> String {
    let mut out = String::with_capacity(11 + result.len());
    out.push_str("{\"result\":");
    out.push_str(result);
    out.push('}');
    out
}

/// A publish's result: `{"offset":N,"epoch":"E"}` in a room with history,
/// `{}` otherwise.
pub fn publish_result(position: Option<(u64, &str)>) -> String {
    match position {
        None => "{}".into(),
        Some((offset, epoch)) => {
            let mut out = format!("{{\"offset\":{offset},\"epoch\":");
            write_json_str(epoch, &mut out);
            out.push('}');
            out
        }
    }
}

/// A broadcast's result: one reply per channel, in order, each
/// `{"result":…}` or `{"error":…}` (its text given).
pub fn broadcast_result<'a>(replies: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::from("{\"responses\":[");
    for (i, r) in replies.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(r);
    }
    out.push_str("]}");
    out
}

/// A history result, its publications already a JSON array.
pub fn history_result(raw_publications: &str, epoch: &str, offset: u64) -> String {
    let mut out = String::with_capacity(48 + raw_publications.len() + epoch.len());
    out.push_str("{\"publications\":");
    out.push_str(raw_publications);
    out.push_str(",\"epoch\":");
    write_json_str(epoch, &mut out);
    out.push_str(",\"offset\":");
    out.push_str(&offset.to_string());
    out.push('}');
    out
}

/// A `channels` result: `{"channels":{name:{"num_clients":N},…}}`.
pub fn channels_result<'a>(channels: impl IntoIterator<Item = (&'a str, usize)>) -> String {
    let mut out = String::from("{\"channels\":{");
    for (i, (name, n)) in channels.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(name, &mut out);
        out.push_str(":{\"num_clients\":");
        out.push_str(&n.to_string());
        out.push('}');
    }
    out.push_str("}}");
    out
}

/// A `presence` result: `{"presence":{client:info,…}}`, each info a
/// client info object's text (`{"user","client"[,"conn_info"][,"chan_info"]}`).
pub fn presence_result<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::from("{\"presence\":{");
    for (i, (client, info)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_json_str(client, &mut out);
        out.push(':');
        out.push_str(info);
    }
    out.push_str("}}");
    out
}

/// A `presence_stats` result: `{"num_clients":N,"num_users":M}`.
pub fn presence_stats_result(clients: usize, users: usize) -> String {
    format!("{{\"num_clients\":{clients},\"num_users\":{users}}}")
}

/// One node of an `info` result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo<'a> {
    pub uid: &'a str,
    pub name: &'a str,
    pub version: &'a str,
    pub num_clients: usize,
    pub num_channels: usize,
    pub uptime: u64,
}

/// An `info` result: `{"nodes":[{uid,name,version,num_clients,num_users,
/// num_channels,uptime},…]}` (`num_users` is the connection count: the
/// node does not count distinct users).
pub fn info_result(nodes: &[NodeInfo<'_>]) -> String {
    let mut out = String::from("{\"nodes\":[");
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"uid\":");
        write_json_str(n.uid, &mut out);
        out.push_str(",\"name\":");
        write_json_str(n.name, &mut out);
        out.push_str(",\"version\":");
        write_json_str(n.version, &mut out);
        out.push_str(&format!(
            ",\"num_clients\":{},\"num_users\":{},\"num_channels\":{},\"uptime\":{}}}",
            n.num_clients, n.num_clients, n.num_channels, n.uptime
        ));
    }
    out.push_str("]}");
    out
}

fn write_json_str(s: &str, out: &mut String) {
    // serde_json escapes exactly as JSON needs; a &str always serializes.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// A publish's parameters (also each channel of a broadcast).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    pub channel: Cow<'a, str>,
    /// The data: raw JSON, any value but `null`.
    pub data: &'a str,
    pub idempotency_key: Option<Cow<'a, str>>,
    pub skip_history: bool,
}

/// A history request's `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since<'a> {
    pub offset: u64,
    pub epoch: Cow<'a, str>,
}

/// A parsed API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest<'a> {
    Publish(Publish<'a>),
    Broadcast {
        channels: Vec<Cow<'a, str>>,
        data: &'a str,
        idempotency_key: Option<Cow<'a, str>>,
        skip_history: bool,
    },
    Subscribe {
        user: Cow<'a, str>,
        channel: Cow<'a, str>,
        client: Option<Cow<'a, str>>,
    },
    Unsubscribe {
        user: Cow<'a, str>,
        channel: Cow<'a, str>,
        client: Option<Cow<'a, str>>,
    },
    Disconnect {
        user: Cow<'a, str>,
        client: Option<Cow<'a, str>>,
        /// `disconnect.code`, `disconnect.reason`, if given.
        code: Option<u32>,
        reason: Option<Cow<'a, str>>,
    },
    Presence {
        channel: Cow<'a, str>,
    },
    PresenceStats {
        channel: Cow<'a, str>,
    },
    History {
        channel: Cow<'a, str>,
        /// `None`: only the position.
        limit: Option<i32>,
        since: Option<Since<'a>>,
        reverse: bool,
    },
    HistoryRemove {
        channel: Cow<'a, str>,
    },
    Channels {
        pattern: Option<Cow<'a, str>>,
    },
    Info,
}

impl ApiRequest<'_> {
    pub fn method(&self) -> ApiMethod {
        match self {
            ApiRequest::Publish(_) => ApiMethod::Publish,
            ApiRequest::Broadcast { .. } => ApiMethod::Broadcast,
            ApiRequest::Subscribe { .. } => ApiMethod::Subscribe,
            ApiRequest::Unsubscribe { .. } => ApiMethod::Unsubscribe,
            ApiRequest::Disconnect { .. } => ApiMethod::Disconnect,
            ApiRequest::Presence { .. } => ApiMethod::Presence,
            ApiRequest::PresenceStats { .. } => ApiMethod::PresenceStats,
            ApiRequest::History { .. } => ApiMethod::History,
            ApiRequest::HistoryRemove { .. } => ApiMethod::HistoryRemove,
            ApiRequest::Channels { .. } => ApiMethod::Channels,
            ApiRequest::Info => ApiMethod::Info,
        }
    }
}

/// Parses the body of `POST /api/<method>`. `method` is the path segment
/// after `/api/`.
pub fn parse<'a>(method: &str, body: &'a [u8]) -> Result<ApiRequest<'a>, ApiError> {
    let m = ApiMethod::from_name(method).ok_or(ApiError::METHOD_NOT_FOUND)?;
    parse_method(m, body)
}

/// [`parse`] for a known method.
pub fn parse_method(m: ApiMethod, body: &[u8]) -> Result<ApiRequest<'_>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("bad request: the body is not UTF-8"))?;
    let f = if text.trim_ascii().is_empty() {
        Fields(Vec::new())
    } else {
        Fields::parse(text)?
    };
    let req = match m {
        ApiMethod::Publish => ApiRequest::Publish(Publish {
            channel: f.channel()?,
            data: f.data()?,
            idempotency_key: f.idempotency_key()?,
            skip_history: f.boolean("skip_history")?,
        }),
        ApiMethod::Broadcast => {
            let channels = f.channels()?;
            ApiRequest::Broadcast {
                channels,
                data: f.data()?,
                idempotency_key: f.idempotency_key()?,
                skip_history: f.boolean("skip_history")?,
            }
        }
        ApiMethod::Subscribe => ApiRequest::Subscribe {
            user: f.required_string("user")?,
            channel: f.channel()?,
            client: f.string("client")?,
        },
        ApiMethod::Unsubscribe => ApiRequest::Unsubscribe {
            user: f.required_string("user")?,
            channel: f.channel()?,
            client: f.string("client")?,
        },
        ApiMethod::Disconnect => {
            // Fields that would narrow or widen who is disconnected are
            // refused rather than ignored.
            for field in ["whitelist", "session"] {
                if f.get(field)?
                    .is_some_and(|v| !matches!(v.get().trim_ascii(), "[]" | "\"\""))
                {
                    return Err(ApiError::NOT_AVAILABLE.with_message(format!(
                        "not available: disconnect by {field} is not supported"
                    )));
                }
            }
            let (code, reason) = f.disconnect()?;
            ApiRequest::Disconnect {
                user: f.required_string("user")?,
                client: f.string("client")?,
                code,
                reason,
            }
        }
        ApiMethod::Presence => ApiRequest::Presence {
            channel: f.channel()?,
        },
        ApiMethod::PresenceStats => ApiRequest::PresenceStats {
            channel: f.channel()?,
        },
        ApiMethod::History => ApiRequest::History {
            channel: f.channel()?,
            limit: f.i32("limit")?,
            since: f.since()?,
            reverse: f.boolean("reverse")?,
        },
        ApiMethod::HistoryRemove => ApiRequest::HistoryRemove {
            channel: f.channel()?,
        },
        ApiMethod::Channels => {
            let pattern = f.string("pattern")?;
            if pattern.as_ref().is_some_and(|p| p.len() > MAX_PATTERN) {
                return Err(ApiError::bad_request("bad request: pattern is too long"));
            }
            ApiRequest::Channels { pattern }
        }
        ApiMethod::Info => ApiRequest::Info,
    };
    // Fields roomcast does not carry are refused rather than dropped.
    if m == ApiMethod::Publish || m == ApiMethod::Broadcast {
        if f.get("b64data")?.is_some() {
            return Err(ApiError::NOT_AVAILABLE
                .with_message("not available: b64data (this server carries JSON data only)"));
        }
        if let Some(tags) = f.get("tags")? {
            let t = tags.get().trim_ascii();
            if !t.starts_with('{') {
                return Err(ApiError::wrong_type("tags", "an object of strings"));
            }
            let map: std::collections::BTreeMap<&str, Cow<'_, str>> = serde_json::from_str(t)
                .map_err(|_| ApiError::wrong_type("tags", "an object of strings"))?;
            if !map.is_empty() {
                return Err(ApiError::NOT_AVAILABLE
                    .with_message("not available: tags are not carried by this server"));
            }
        }
    }
    Ok(req)
}

/// A body's top-level fields, each once, values unparsed.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut out: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
                while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                    let v: &'de RawValue = map.next_value()?;
                    if out.iter().any(|(o, _)| *o == k) {
                        return Err(de::Error::custom(format!(
                            "field {} appears twice",
                            shown(&k)
                        )));
                    }
                    out.push((k, v));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A name echoed in a message: bounded.
fn shown(s: &str) -> String {
    let t: String = s.chars().take(40).collect();
    format!("{t:?}")
}

impl<'a> Fields<'a> {
    fn parse(text: &'a str) -> Result<Fields<'a>, ApiError> {
        if !text.trim_ascii_start().starts_with('{') {
            return Err(ApiError::bad_request(
                "bad request: the body must be a JSON object",
            ));
        }
        serde_json::from_str(text).map_err(|e| {
            let mut m = format!("bad request: invalid JSON body: {e}");
            while m.len() > 200 {
                m.pop();
            }
            ApiError::bad_request(m)
        })
    }

    /// A field; `null` counts as absent.
    fn get(&self, name: &str) -> Result<Option<&'a RawValue>, ApiError> {
        Ok(self
            .0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
            .filter(|v| v.get().trim_ascii() != "null"))
    }

    fn string(&self, name: &str) -> Result<Option<Cow<'a, str>>, ApiError> {
        match self.get(name)? {
            None => Ok(None),
            Some(v) => as_str(v, name).map(Some),
        }
    }

    fn required_string(&self, name: &str) -> Result<Cow<'a, str>, ApiError> {
        match self.string(name)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(ApiError::bad_request(format!(
                "bad request: {name} required"
            ))),
        }
    }

    fn channel(&self) -> Result<Cow<'a, str>, ApiError> {
        self.required_string("channel")
    }

    fn channels(&self) -> Result<Vec<Cow<'a, str>>, ApiError> {
        let Some(v) = self.get("channels")? else {
            return Err(ApiError::bad_request("bad request: channels required"));
        };
        let t = v.get().trim_ascii();
        if !t.starts_with('[') {
            return Err(ApiError::wrong_type("channels", "an array of strings"));
        }
        let list: Vec<&'a RawValue> = serde_json::from_str(v.get())
            .map_err(|_| ApiError::wrong_type("channels", "an array of strings"))?;
        if list.is_empty() {
            return Err(ApiError::bad_request("bad request: channels required"));
        }
        if list.len() > MAX_BROADCAST_CHANNELS {
            return Err(ApiError::LIMIT_EXCEEDED.with_message(format!(
                "limit exceeded: at most {MAX_BROADCAST_CHANNELS} channels"
            )));
        }
        let mut out = Vec::with_capacity(list.len());
        for c in list {
            let c = as_str(c, "channels")
                .map_err(|_| ApiError::wrong_type("channels", "an array of strings"))?;
            if c.is_empty() {
                return Err(ApiError::bad_request("bad request: empty channel"));
            }
            out.push(c);
        }
        Ok(out)
    }

    fn data(&self) -> Result<&'a str, ApiError> {
        match self.get("data")? {
            None => Err(ApiError::bad_request("bad request: data required")),
            // Valid JSON grammar, but a number no client's JSON could hold
            // (`1e999`) would be published and then fail to parse on the
            // way back from Redis or in a client: refused here.
            Some(v) if serde_json::from_str::<serde_json::Value>(v.get()).is_err() => Err(
                ApiError::bad_request("bad request: data holds a number out of range"),
            ),
            Some(v) => Ok(v.get()),
        }
    }

    fn idempotency_key(&self) -> Result<Option<Cow<'a, str>>, ApiError> {
        let k = self.string("idempotency_key")?;
        match &k {
            Some(k) if k.len() > MAX_IDEMPOTENCY_KEY => Err(ApiError::bad_request(format!(
                "bad request: idempotency_key is longer than {MAX_IDEMPOTENCY_KEY} bytes"
            ))),
            Some(k) if k.is_empty() => Ok(None),
            _ => Ok(k),
        }
    }

    fn boolean(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name)?.map(|v| v.get().trim_ascii()) {
            None => Ok(false),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(ApiError::wrong_type(name, "a boolean")),
        }
    }

    fn i32(&self, name: &str) -> Result<Option<i32>, ApiError> {
        match self.get(name)? {
            None => Ok(None),
            Some(v) => serde_json::from_str::<i64>(v.get())
                .ok()
                .map(|n| n.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32)
                .map(Some)
                .ok_or_else(|| ApiError::wrong_type(name, "an integer")),
        }
    }

    fn since(&self) -> Result<Option<Since<'a>>, ApiError> {
        let Some(v) = self.get("since")? else {
            return Ok(None);
        };
        let inner = Fields::parse(v.get())
            .map_err(|_| ApiError::wrong_type("since", "an object {offset, epoch}"))?;
        let offset = match inner.get("offset")? {
            None => 0,
            Some(o) => serde_json::from_str::<u64>(o.get())
                .map_err(|_| ApiError::wrong_type("since.offset", "a non-negative integer"))?,
        };
        let epoch = match inner.get("epoch")? {
            None => Cow::Borrowed(""),
            Some(e) => as_str(e, "since.epoch")?,
        };
        Ok(Some(Since { offset, epoch }))
    }

    fn disconnect(&self) -> Result<(Option<u32>, Option<Cow<'a, str>>), ApiError> {
        let Some(v) = self.get("disconnect")? else {
            return Ok((None, None));
        };
        let inner = Fields::parse(v.get())
            .map_err(|_| ApiError::wrong_type("disconnect", "an object {code, reason}"))?;
        let code = match inner.get("code")? {
            None => None,
            Some(c) => {
                let c = serde_json::from_str::<u32>(c.get()).ok().filter(|c| {
                    // Close codes a server may send (RFC 6455 §7.4).
                    (3000..=4999).contains(c)
                });
                Some(c.ok_or_else(|| ApiError::wrong_type("disconnect.code", "3000..4999"))?)
            }
        };
        let reason = inner.string("reason")?;
        if reason.as_ref().is_some_and(|r| r.len() > 123) {
            return Err(ApiError::bad_request(
                "bad request: disconnect.reason is longer than 123 bytes",
            ));
        }
        Ok((code, reason))
    }
}

fn as_str<'a>(v: &'a RawValue, name: &str) -> Result<Cow<'a, str>, ApiError> {
    let t = v.get().trim_ascii();
    if !t.starts_with('"') {
        return Err(ApiError::wrong_type(name, "a string"));
    }
    if let Ok(s) = serde_json::from_str::<&'a str>(v.get()) {
        return Ok(Cow::Borrowed(s));
    }
    serde_json::from_str::<String>(v.get())
        .map(Cow::Owned)
        .map_err(|_| ApiError::wrong_type(name, "a string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: &str, body: &str) -> ApiRequest<'static> {
        let body: &'static str = Box::leak(body.to_string().into_boxed_str());
        parse(method, body.as_bytes()).unwrap_or_else(|e| panic!("{method} {body}: {e}"))
    }

    fn err(method: &str, body: &str) -> ApiError {
        match parse(method, body.as_bytes()) {
            Err(e) => e,
            Ok(r) => panic!("{method} {body} accepted: {r:?}"),
        }
    }

    #[test]
    fn publish() {
        let r = ok(
            "publish",
            r#"{"channel":"chat:1","data":{"text":"hi"},"idempotency_key":"k1","skip_history":true,"extra":1}"#,
        );
        assert_eq!(
            r,
            ApiRequest::Publish(Publish {
                channel: "chat:1".into(),
                data: r#"{"text":"hi"}"#,
                idempotency_key: Some("k1".into()),
                skip_history: true,
            })
        );
        let r = ok("publish", r#"{"channel":"a\u0062","data":"x","tags":{}}"#);
        assert!(matches!(r, ApiRequest::Publish(p) if p.channel == "ab" && p.data == "\"x\""));
    }

    #[test]
    fn publish_refusals() {
        let cases = [
            (r#"{"data":1}"#, 107, 400),
            (
                r#"{"channel":"c","data":17e777777777777777777777}"#,
                107,
                400,
            ),
            (r#"{"channel":"c","data":{"a":[1e999]}}"#, 107, 400),
            (r#"{"channel":"","data":1}"#, 107, 400),
            (r#"{"channel":"c"}"#, 107, 400),
            (r#"{"channel":"c","data":null}"#, 107, 400),
            (r#"{"channel":1,"data":1}"#, 107, 422),
            (r#"{"channel":"c","data":1,"skip_history":"yes"}"#, 107, 422),
            (r#"{"channel":"c","data":1,"idempotency_key":5}"#, 107, 422),
            (r#"{"channel":"c","data":1,"channel":"d"}"#, 107, 400),
            (r#"{"channel":"c","data":1,"tags":{"a":"b"}}"#, 108, 400),
            (r#"{"channel":"c","data":1,"tags":[1]}"#, 107, 422),
            (r#"{"channel":"c","b64data":"AA=="}"#, 107, 400),
            (r#"{"channel":"c","data":1,"b64data":"AA=="}"#, 108, 400),
            (r#"[1]"#, 107, 400),
            (r#"{"channel":"c","data":1"#, 107, 400),
            ("nope", 107, 400),
            ("", 107, 400),
        ];
        for (body, code, status) in cases {
            let e = err("publish", body);
            assert_eq!((e.code, e.status), (code, status), "{body}: {e}");
            assert!(e.message.len() <= 240, "{body}: {e}");
        }
        let long = format!(
            r#"{{"channel":"c","data":1,"idempotency_key":"{}"}}"#,
            "k".repeat(257)
        );
        assert_eq!(err("publish", &long).code, 107);
        assert_eq!(err("publish", "\u{0}\u{ff}").code, 107);
        assert_eq!(parse("publish", b"\xff").unwrap_err().code, 107);
    }

    #[test]
    fn unknown_method() {
        for m in ["", "Publish", "batch", "publish/x", "refresh"] {
            assert_eq!(err(m, "{}"), ApiError::METHOD_NOT_FOUND, "{m}");
        }
    }

    #[test]
    fn broadcast() {
        let r = ok("broadcast", r#"{"channels":["a","b"],"data":[1]}"#);
        assert!(matches!(
            r,
            ApiRequest::Broadcast { ref channels, data: "[1]", .. } if channels.len() == 2
        ));
        for (body, code) in [
            (r#"{"channels":[],"data":1}"#, 107),
            (r#"{"channels":"a","data":1}"#, 107),
            (r#"{"channels":["a",2],"data":1}"#, 107),
            (r#"{"channels":["a",""],"data":1}"#, 107),
            (r#"{"channels":["a"]}"#, 107),
        ] {
            assert_eq!(err("broadcast", body).code, code, "{body}");
        }
        let many = format!(
            r#"{{"channels":[{}],"data":1}}"#,
            vec!["\"c\""; MAX_BROADCAST_CHANNELS + 1].join(",")
        );
        assert_eq!(err("broadcast", &many).code, 106);
    }

    #[test]
    fn history() {
        let r = ok(
            "history",
            r#"{"channel":"c","limit":5,"since":{"offset":3,"epoch":"e"},"reverse":true}"#,
        );
        assert_eq!(
            r,
            ApiRequest::History {
                channel: "c".into(),
                limit: Some(5),
                since: Some(Since {
                    offset: 3,
                    epoch: "e".into()
                }),
                reverse: true,
            }
        );
        let r = ok("history", r#"{"channel":"c","limit":-1,"since":null}"#);
        assert!(matches!(
            r,
            ApiRequest::History {
                limit: Some(-1),
                since: None,
                ..
            }
        ));
        for body in [
            r#"{"channel":"c","limit":"5"}"#,
            r#"{"channel":"c","limit":1.5}"#,
            r#"{"channel":"c","since":5}"#,
            r#"{"channel":"c","since":{"offset":-1}}"#,
            r#"{"channel":"c","since":{"epoch":7}}"#,
            r#"{"channel":"c","reverse":1}"#,
        ] {
            assert_eq!(err("history", body).status, 422, "{body}");
        }
        assert!(matches!(
            ok("history_remove", r#"{"channel":"c"}"#),
            ApiRequest::HistoryRemove { .. }
        ));
    }

    #[test]
    fn the_others() {
        assert_eq!(ok("info", ""), ApiRequest::Info);
        assert_eq!(ok("info", " {} "), ApiRequest::Info);
        assert_eq!(ok("channels", "{}"), ApiRequest::Channels { pattern: None });
        assert_eq!(
            ok("channels", r#"{"pattern":"chat:*"}"#),
            ApiRequest::Channels {
                pattern: Some("chat:*".into())
            }
        );
        assert_eq!(err("channels", r#"{"pattern":1}"#).status, 422);
        assert!(matches!(
            ok("presence_stats", r#"{"channel":"c"}"#),
            ApiRequest::PresenceStats { .. }
        ));
        assert_eq!(
            ok(
                "disconnect",
                r#"{"user":"u","disconnect":{"code":4000,"reason":"bye"}}"#
            ),
            ApiRequest::Disconnect {
                user: "u".into(),
                client: None,
                code: Some(4000),
                reason: Some("bye".into())
            }
        );
        assert_eq!(
            err("disconnect", r#"{"user":"u","disconnect":{"code":1000}}"#).status,
            422
        );
        assert_eq!(err("disconnect", r#"{}"#).code, 107);
        assert!(matches!(
            ok("subscribe", r#"{"user":"u","channel":"c","client":"x"}"#),
            ApiRequest::Subscribe { .. }
        ));
        assert_eq!(err("unsubscribe", r#"{"user":"u"}"#).code, 107);
    }

    #[test]
    fn encoders() {
        assert_eq!(encode_result("{}"), r#"{"result":{}}"#);
        assert_eq!(
            encode_result(&publish_result(Some((4, "ab\"c")))),
            r#"{"result":{"offset":4,"epoch":"ab\"c"}}"#
        );
        assert_eq!(
            ApiError::UNKNOWN_CHANNEL.encode(),
            r#"{"error":{"code":102,"message":"unknown channel"}}"#
        );
        let b = broadcast_result([
            r#"{"result":{}}"#,
            r#"{"error":{"code":102,"message":"x"}}"#,
        ]);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["responses"][1]["error"]["code"], 102);
        let h = history_result("[]", "e", 3);
        assert_eq!(h, r#"{"publications":[],"epoch":"e","offset":3}"#);
        let c = channels_result([("a\"", 2), ("b", 1)]);
        let v: serde_json::Value = serde_json::from_str(&c).unwrap();
        assert_eq!(v["channels"]["a\""]["num_clients"], 2);
        let i = info_result(&[NodeInfo {
            uid: "u",
            name: "n",
            version: "1",
            num_clients: 3,
            num_channels: 1,
            uptime: 9,
        }]);
        let v: serde_json::Value = serde_json::from_str(&i).unwrap();
        assert_eq!(v["nodes"][0]["num_clients"], 3);
        for m in ApiMethod::ALL {
            assert_eq!(ApiMethod::from_name(m.name()), Some(m));
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(
            method in proptest::sample::select(ApiMethod::LABELS.to_vec()),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            if let Err(e) = parse(method, &body) {
                let v: serde_json::Value = serde_json::from_str(&e.encode()).unwrap();
                proptest::prop_assert!(v["error"]["code"].is_u64());
            }
        }

        #[test]
        fn json_like_bodies_never_panic(
            method in proptest::sample::select(ApiMethod::LABELS.to_vec()),
            body in r#"\{("(channel|channels|data|limit|since|offset|epoch|user|disconnect|code|tags|idempotency_key|reverse)":(\[|\{|"[a-z]*"|-?[0-9]{1,12}|true|null|\]|\}|,)*,?)*\}?"#,
        ) {
            let _ = parse(method, body.as_bytes());
        }
    }
}
