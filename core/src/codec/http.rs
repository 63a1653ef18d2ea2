//! The plain-HTTP side of the listening port: which request gets a WebSocket
//! and which gets a response, decided from the request head alone.
//!
//! [`HeadReader`] collects a new socket's head, [`route`] decides it
//! ([`Decision`]), and [`switching_protocols`], [`fixed_response`] and
//! [`response`] format the answers.
//!
//! What is checked, and why:
//!
//! - the head: at most [`MAX_HEADERS`] header lines and [`MAX_HEAD_BYTES`]
//!   bytes; an HTTP head over either limit is answered (`431`, or `414` for
//!   a request line that alone does not fit) so a browser with large cookies
//!   learns why; bytes that are not HTTP (a TLS ClientHello) are dropped;
//! - the request target: origin-form (`/metrics`) or absolute-form
//!   (`http://host/metrics`, RFC 9112 §3.2.2, which also gives the host);
//! - a WebSocket upgrade (RFC 6455 §4.2.1): `GET`, HTTP/1.1 or later,
//!   `Connection: upgrade`, exactly one `Sec-WebSocket-Key` that is the
//!   base64 of 16 bytes, exactly one `Sec-WebSocket-Version` (`13`, else
//!   `426` naming 13, §4.4), at most one `Host`, `Origin` and `token` query
//!   parameter (each is an input to authentication, so two of one are
//!   ambiguous and refused);
//! - the client protocol ([`ClientProtocol`]) by path, and for Centrifugo's
//!   the subprotocol: only `centrifuge-json` (or none) is spoken.
//!
//! **The query string carries credentials** (`?token=…`): nothing here logs
//! it, [`Upgrade`]'s `Debug` redacts the token, and callers must log neither
//! the request target nor [`Upgrade::token`].

use std::fmt;

/// How much request head is read before giving up (8 KiB): a head that does
/// not end within this many bytes is [`Route::HeaderTooLarge`] (or
/// [`Route::UriTooLong`]), whatever follows.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// How many header lines a request may have; one more is
/// [`Route::HeaderTooLarge`].
pub const MAX_HEADERS: usize = 64;

/// The path (exact; a query may follow) that selects Centrifugo's client
/// protocol. Every other path selects the seed protocol.
pub const CENTRIFUGO_PATH: &str = "/connection/websocket";

/// The one Centrifugo subprotocol this server speaks (JSON).
pub const CENTRIFUGE_JSON: &str = "centrifuge-json";

/// The WebSocket version spoken (RFC 6455).
pub const WEBSOCKET_VERSION: &str = "13";

/// Which client protocol an upgrade's path selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientProtocol {
    /// The tutorial server's protocol ([`crate::seed`]): every path but
    /// [`CENTRIFUGO_PATH`].
    Seed,
    /// Centrifugo's client protocol, JSON only: [`CENTRIFUGO_PATH`].
    Centrifugo,
}

/// What to answer a plain request (or a refused upgrade) with.
///
/// [`fixed_response`] formats every route but [`Route::Health`],
/// [`Route::Metrics`], [`Route::Index`] and [`Route::Admin`], whose answers
/// depend on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /`: the chat page.
    Index,
    /// `GET /admin`: the admin page (the node decides whether it is on).
    Admin,
    /// Anything else that is well-formed HTTP: 404.
    NotFound,
    /// A method other than GET or HEAD on a known path: 405.
    MethodNotAllowed,
    /// A WebSocket upgrade that breaks RFC 6455 §4.2.1 (the reason says
    /// how): 400.
    BadUpgrade(BadUpgrade),
    /// A WebSocket upgrade asking for a version other than 13: 426 with
    /// `Sec-WebSocket-Version: 13` (RFC 6455 §4.2.2, §4.4).
    UnsupportedVersion,
    /// A WebSocket upgrade on [`CENTRIFUGO_PATH`] whose
    /// `Sec-WebSocket-Protocol` offers subprotocols, none of them
    /// [`CENTRIFUGE_JSON`] (e.g. only `centrifuge-protobuf`): 400, "this
    /// server speaks only the JSON protocol (centrifuge-json)".
    UnsupportedSubprotocol,
    /// A head with more than [`MAX_HEADERS`] header lines, or one that does
    /// not end within [`MAX_HEAD_BYTES`]: 431.
    HeaderTooLarge,
    /// A request line that does not end within [`MAX_HEAD_BYTES`]: 414.
    UriTooLong,
    /// A method other than POST on `/api/…`: 405 (`Allow: POST`).
    ApiMethodNotAllowed,
    /// A `POST /api/…` without a `Content-Length`, or with a
    /// `Transfer-Encoding` (bodies are read by length only): 411.
    LengthRequired,
    /// A `Content-Length` that is not one decimal number (or two that
    /// differ): 400.
    BadContentLength,
}

/// Why a WebSocket upgrade was refused with 400 ([`Route::BadUpgrade`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BadUpgrade {
    /// The method is not GET.
    NotGet,
    /// HTTP/1.0: an upgrade needs HTTP/1.1 or later.
    Http10,
    /// No `Connection` header with the `upgrade` token.
    NoConnectionUpgrade,
    /// The request target is neither origin-form (`/path`) nor an
    /// absolute `http`/`https` URI.
    BadTarget,
    /// No `Sec-WebSocket-Version` header.
    MissingVersion,
    /// More than one `Sec-WebSocket-Version` header.
    DuplicateVersion,
    /// No `Sec-WebSocket-Key` header.
    MissingKey,
    /// More than one `Sec-WebSocket-Key` header.
    DuplicateKey,
    /// A `Sec-WebSocket-Key` that is not the base64 of exactly 16 bytes.
    BadKey,
    /// More than one `Host` header (RFC 9112 §3.2).
    DuplicateHost,
    /// A `Host` value that is not UTF-8.
    BadHost,
    /// More than one `Origin` header.
    DuplicateOrigin,
    /// An `Origin` value that is not UTF-8.
    BadOrigin,
    /// More than one `token` query parameter.
    DuplicateToken,
    /// A `token` query parameter with a bad percent-escape, or not UTF-8
    /// once decoded.
    BadToken,
}

impl BadUpgrade {
    /// A short human-readable reason (it is also the 400's body). Never
    /// contains request bytes.
    pub fn reason(self) -> &'static str {
        match self {
            BadUpgrade::NotGet => "the method is not GET",
            BadUpgrade::Http10 => "an upgrade needs HTTP/1.1",
            BadUpgrade::NoConnectionUpgrade => "no Connection: upgrade",
            BadUpgrade::BadTarget => "the request target is not a path",
            BadUpgrade::MissingVersion => "no Sec-WebSocket-Version",
            BadUpgrade::DuplicateVersion => "more than one Sec-WebSocket-Version",
            BadUpgrade::MissingKey => "no Sec-WebSocket-Key",
            BadUpgrade::DuplicateKey => "more than one Sec-WebSocket-Key",
            BadUpgrade::BadKey => "Sec-WebSocket-Key is not base64 of 16 bytes",
            BadUpgrade::DuplicateHost => "more than one Host",
            BadUpgrade::BadHost => "Host is not UTF-8",
            BadUpgrade::DuplicateOrigin => "more than one Origin",
            BadUpgrade::BadOrigin => "Origin is not UTF-8",
            BadUpgrade::DuplicateToken => "more than one token query parameter",
            BadUpgrade::BadToken => "the token query parameter is badly escaped",
        }
    }
}

/// A valid WebSocket upgrade, with what the node needs to open the
/// connection and, later, to authenticate it.
///
/// `Debug` prints `token` redacted: the token is a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The client's `Sec-WebSocket-Key` (base64 of 16 bytes, trimmed).
    pub key: String,
    /// Where the head ends: bytes past it already belong to the WebSocket
    /// stream. At most [`MAX_HEAD_BYTES`].
    pub head_len: usize,
    /// The client protocol the path selects.
    pub protocol: ClientProtocol,
    /// The subprotocol to echo in the 101: `Some(CENTRIFUGE_JSON)` when a
    /// Centrifugo client offered it, otherwise `None` (always `None` for
    /// [`ClientProtocol::Seed`]).
    pub subprotocol: Option<&'static str>,
    /// The host the request names: the authority of an absolute-form
    /// target (RFC 9112 §3.2.2), else the `Host` header (trimmed).
    pub host: Option<String>,
    /// The `Origin` header (trimmed), as sent.
    pub origin: Option<String>,
    /// The query string's `token` parameter, percent-decoded (`+` is kept
    /// as is); `Some("")` for `?token` or `?token=`. A credential: never
    /// log it, nor the request target it came from.
    pub token: Option<String>,
}

impl Upgrade {
    /// The `Sec-WebSocket-Accept` value for [`Upgrade::key`].
    pub fn accept(&self) -> String {
        accept_key(&self.key)
    }

    /// The complete `101 Switching Protocols` answer to this upgrade.
    pub fn response(&self) -> Vec<u8> {
        switching_protocols(&self.accept(), self.subprotocol)
    }
}

impl fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrade")
            .field("key", &self.key)
            .field("head_len", &self.head_len)
            .field("protocol", &self.protocol)
            .field("subprotocol", &self.subprotocol)
            .field("host", &self.host)
            .field("origin", &self.origin)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The outcome of looking at the bytes received so far.
///
/// It depends only on the first [`MAX_HEAD_BYTES`] bytes and on whether
/// there are that many, so a complete decision on some bytes stays the same
/// whatever follows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The head is not complete: read more (up to [`MAX_HEAD_BYTES`]).
    Incomplete,
    /// A valid WebSocket upgrade (at any path). Answer with
    /// [`Upgrade::response`]; bytes past `head_len` already belong to the
    /// WebSocket stream.
    Upgrade(Upgrade),
    /// Complete (or too large): answer with a response for `route`, then
    /// close. `head_only` is set for HEAD requests.
    Route { route: Route, head_only: bool },
    /// Not HTTP: drop the connection at once.
    Invalid,
    /// A server API request (`POST /api/<method>` with a length): check its
    /// key and length, then read `content_length` bytes of body past
    /// `head_len`.
    Api(ApiHead),
}

/// The head of a server API request.
///
/// `Debug` prints `api_key` redacted: it is a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiHead {
    /// The path segment after `/api/` (not checked here).
    pub method: String,
    /// Where the head ends; the body follows.
    pub head_len: usize,
    /// The body's length, as `Content-Length` says.
    pub content_length: u64,
    /// The `X-API-Key` header, if sent once (`None` also when it is sent
    /// twice or is not UTF-8: such a request is unauthorized).
    pub api_key: Option<String>,
    /// Whether the connection may carry another request after this one
    /// (HTTP/1.1 without `Connection: close`, or HTTP/1.0 with
    /// `keep-alive`).
    pub keep_alive: bool,
    /// `X-Centrifugo-Error-Mode: transport`: errors as HTTP statuses.
    pub transport_errors: bool,
    /// The `Origin` header: browsers send it, API clients do not. A
    /// duplicate or non-UTF-8 one is kept as `Some("")`, which no rule
    /// allows.
    pub origin: Option<String>,
    /// The `Host` header, for the same-host rule.
    pub host: Option<String>,
}

impl fmt::Debug for ApiHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiHead")
            .field("method", &self.method)
            .field("head_len", &self.head_len)
            .field("content_length", &self.content_length)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("keep_alive", &self.keep_alive)
            .field("transport_errors", &self.transport_errors)
            .field("origin", &self.origin)
            .field("host", &self.host)
            .finish()
    }
}

/// The path prefix of the server API.
pub const API_PATH: &str = "/api/";

/// Checks a request to `/api/…`.
fn api_head(
    method: &str,
    version: Option<u8>,
    path: &str,
    headers: &Headers<'_, '_>,
    head_len: usize,
) -> Result<ApiHead, Route> {
    if method != "POST" {
        return Err(Route::ApiMethodNotAllowed);
    }
    if headers.all("transfer-encoding").next().is_some() {
        return Err(Route::LengthRequired);
    }
    let mut length: Option<u64> = None;
    for v in headers
        .all("content-length")
        .flat_map(|v| v.split(|b| *b == b','))
    {
        let v = trim(v);
        if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
            return Err(Route::BadContentLength);
        }
        let n: u64 = std::str::from_utf8(v)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or(Route::BadContentLength)?;
        if length.is_some_and(|l| l != n) {
            return Err(Route::BadContentLength);
        }
        length = Some(n);
    }
    let content_length = length.ok_or(Route::LengthRequired)?;
    let api_key = match headers.single("x-api-key") {
        Ok(Some(k)) => std::str::from_utf8(k).ok().map(str::to_owned),
        _ => None,
    };
    let keep_alive = if version == Some(0) {
        headers.has_token("connection", "keep-alive")
    } else {
        !headers.has_token("connection", "close")
    };
    let transport_errors = headers
        .all("x-centrifugo-error-mode")
        .any(|v| v.eq_ignore_ascii_case(b"transport"));
    let origin = match headers.single("origin") {
        Ok(None) => None,
        Ok(Some(v)) => Some(std::str::from_utf8(v).unwrap_or("").to_owned()),
        Err(()) => Some(String::new()),
    };
    let host = match headers.single("host") {
        Ok(Some(v)) => std::str::from_utf8(v).ok().map(str::to_owned),
        _ => None,
    };
    Ok(ApiHead {
        method: path[API_PATH.len()..].to_owned(),
        head_len,
        content_length,
        api_key,
        keep_alive,
        transport_errors,
        origin,
        host,
    })
}

/// Routes a request from its first bytes. `index` says whether `GET /`
/// serves the chat page. Only the first [`MAX_HEAD_BYTES`] bytes are looked
/// at.
pub fn route(buf: &[u8], index: bool) -> Decision {
    let window = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(window);
    let head_only = req.method == Some("HEAD");
    let answer = |route| Decision::Route { route, head_only };
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => {
            return Decision::Incomplete;
        }
        // Out of room: past the request line, the headers are too large; in
        // the target, the URI is; still in the method, it is not HTTP.
        Ok(httparse::Status::Partial) if req.version.is_some() => {
            return answer(Route::HeaderTooLarge);
        }
        Ok(httparse::Status::Partial) if req.method.is_some() => {
            return answer(Route::UriTooLong);
        }
        Err(httparse::Error::TooManyHeaders) => return answer(Route::HeaderTooLarge),
        _ => return Decision::Invalid,
    };
    let method = req.method.unwrap_or("");
    let target = Target::parse(req.path.unwrap_or(""));
    let headers = Headers(req.headers);
    if headers.has_token("upgrade", "websocket") {
        let http11 = req.version != Some(0);
        return match upgrade(method, http11, target, &headers, head_len) {
            Ok(up) => Decision::Upgrade(up),
            Err(route) => answer(route),
        };
    }
    if let Some(t) = target
        && t.path.starts_with(API_PATH)
    {
        return match api_head(method, req.version, t.path, &headers, head_len) {
            Ok(api) => Decision::Api(api),
            Err(route) => answer(route),
        };
    }
    let known = match target.map(|t| t.path) {
        Some("/healthz") => Some(Route::Health),
        Some("/metrics") => Some(Route::Metrics),
        Some("/") if index => Some(Route::Index),
        Some("/admin") => Some(Route::Admin),
        _ => None,
    };
    let route = match (known, method) {
        (None, _) => Route::NotFound,
        (Some(r), "GET" | "HEAD") => r,
        (Some(_), _) => Route::MethodNotAllowed,
    };
    answer(route)
}

/// Checks a request that asks for a WebSocket (its `Upgrade` names
/// `websocket`).
fn upgrade(
    method: &str,
    http11: bool,
    target: Option<Target<'_>>,
    headers: &Headers<'_, '_>,
    head_len: usize,
) -> Result<Upgrade, Route> {
    use BadUpgrade::*;
    let bad = Route::BadUpgrade;
    if method != "GET" {
        return Err(bad(NotGet));
    }
    if !http11 {
        return Err(bad(Http10));
    }
    if !headers.has_token("connection", "upgrade") {
        return Err(bad(NoConnectionUpgrade));
    }
    let target = target.ok_or(bad(BadTarget))?;
    // The version first: a client of another version may send another key.
    match headers.single("sec-websocket-version") {
        Err(()) => return Err(bad(DuplicateVersion)),
        Ok(None) => return Err(bad(MissingVersion)),
        Ok(Some(v)) if v != WEBSOCKET_VERSION.as_bytes() => {
            return Err(Route::UnsupportedVersion);
        }
        Ok(Some(_)) => {}
    }
    let key = match headers.single("sec-websocket-key") {
        Err(()) => return Err(bad(DuplicateKey)),
        Ok(None) => return Err(bad(MissingKey)),
        Ok(Some(k)) => k,
    };
    let key = match data_encoding::BASE64.decode(key) {
        Ok(nonce) if nonce.len() == 16 => String::from_utf8_lossy(key).into_owned(),
        _ => return Err(bad(BadKey)),
    };
    let host_header = headers.single_str("host", DuplicateHost, BadHost)?;
    let host = target.authority.or(host_header).map(str::to_owned);
    let origin = headers
        .single_str("origin", DuplicateOrigin, BadOrigin)?
        .map(str::to_owned);
    let token = query_token(target.query)?;
    let protocol = if target.path == CENTRIFUGO_PATH {
        ClientProtocol::Centrifugo
    } else {
        ClientProtocol::Seed
    };
    let subprotocol = match protocol {
        ClientProtocol::Seed => None,
        ClientProtocol::Centrifugo => {
            let mut offered = headers
                .all("sec-websocket-protocol")
                .flat_map(|v| v.split(|b| *b == b','))
                .map(trim)
                .filter(|p| !p.is_empty())
                .peekable();
            if offered.peek().is_none() {
                None
            } else if offered.any(|p| p == CENTRIFUGE_JSON.as_bytes()) {
                Some(CENTRIFUGE_JSON)
            } else {
                return Err(Route::UnsupportedSubprotocol);
            }
        }
    };
    Ok(Upgrade {
        key,
        head_len,
        protocol,
        subprotocol,
        host,
        origin,
        token,
    })
}

/// A parsed header list; names compare ASCII case-insensitively.
struct Headers<'h, 'b>(&'h [httparse::Header<'b>]);

impl<'h, 'b> Headers<'h, 'b> {
    /// Every value of `name`, in order (httparse has trimmed them).
    fn all(&self, name: &'static str) -> impl Iterator<Item = &'b [u8]> + use<'h, 'b> {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| trim(h.value))
    }

    /// The value of a header that may appear once; `Err` when it appears
    /// more often.
    fn single(&self, name: &'static str) -> Result<Option<&'b [u8]>, ()> {
        let mut all = self.all(name);
        match (all.next(), all.next()) {
            (_, Some(_)) => Err(()),
            (v, None) => Ok(v),
        }
    }

    /// [`Headers::single`] as UTF-8.
    fn single_str(
        &self,
        name: &'static str,
        duplicate: BadUpgrade,
        bad: BadUpgrade,
    ) -> Result<Option<&'b str>, Route> {
        match self.single(name) {
            Err(()) => Err(Route::BadUpgrade(duplicate)),
            Ok(None) => Ok(None),
            Ok(Some(v)) => match std::str::from_utf8(v) {
                Ok(v) => Ok(Some(v)),
                Err(_) => Err(Route::BadUpgrade(bad)),
            },
        }
    }

    /// Whether any `name` header lists `token` (comma-separated,
    /// case-insensitive).
    fn has_token(&self, name: &'static str, token: &str) -> bool {
        self.all(name).any(|v| {
            v.split(|b| *b == b',')
                .any(|p| trim(p).eq_ignore_ascii_case(token.as_bytes()))
        })
    }
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

/// A request target in origin-form or absolute-form (RFC 9112 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target<'a> {
    /// The authority of an absolute-form target.
    authority: Option<&'a str>,
    /// The path, `/` at least.
    path: &'a str,
    /// What follows `?`, up to any `#`.
    query: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// `None` for any other form (`*`, authority-form, garbage), and for an
    /// absolute URI that is not `http`/`https` with a non-empty authority
    /// free of userinfo (RFC 9110 §4.2.4).
    fn parse(target: &'a str) -> Option<Target<'a>> {
        let target = target.split('#').next().unwrap_or("");
        let (authority, rest) = if target.starts_with('/') {
            (None, target)
        } else {
            let (scheme, rest) = target.split_once("://")?;
            if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
                return None;
            }
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, rest) = rest.split_at(end);
            if authority.is_empty() || authority.contains('@') {
                return None;
            }
            (Some(authority), rest)
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        Some(Target {
            authority,
            path: if path.is_empty() { "/" } else { path },
            query,
        })
    }
}

/// The `token` parameter of a query string, percent-decoded.
fn query_token(query: Option<&str>) -> Result<Option<String>, Route> {
    let mut token = None;
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(name).as_deref() != Some("token") {
            continue;
        }
        if token.is_some() {
            return Err(Route::BadUpgrade(BadUpgrade::DuplicateToken));
        }
        token = Some(percent_decode(value).ok_or(Route::BadUpgrade(BadUpgrade::BadToken))?);
    }
    Ok(token)
}

/// `%XX` escapes decoded; `None` for a bad escape or a result that is not
/// UTF-8. `+` stays `+`.
fn percent_decode(s: &str) -> Option<String> {
    let s = s.as_bytes();
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hi = hex_digit(*s.get(i + 1)?)?;
            let lo = hex_digit(*s.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Reads a new socket's request head: the runtime reads into [`buf`] and
/// reports each read to [`advance`] until it says stop, then takes the
/// decision and the bytes with [`into_parts`]. Holds at most
/// [`MAX_HEAD_BYTES`] plus one read.
///
/// [`buf`]: HeadReader::buf
/// [`advance`]: HeadReader::advance
/// [`into_parts`]: HeadReader::into_parts
#[derive(Debug)]
pub struct HeadReader {
    buf: Vec<u8>,
    filled: usize,
    index: bool,
    decision: Option<Decision>,
}

/// How much one read may take.
const READ_CHUNK: usize = 1024;

impl HeadReader {
    /// `index`: whether `GET /` serves the chat page.
    pub fn new(index: bool) -> HeadReader {
        HeadReader {
            buf: Vec::new(),
            filled: 0,
            index,
            decision: None,
        }
    }

    /// Where the next read goes.
    pub fn buf(&mut self) -> &mut [u8] {
        if self.buf.len() < self.filled + READ_CHUNK {
            self.buf.resize(self.filled + READ_CHUNK, 0);
        }
        &mut self.buf[self.filled..]
    }

    /// `n` bytes were read into [`HeadReader::buf`] (0: the stream ended).
    /// Returns `true` when reading must stop: the head is complete, too
    /// large, or not HTTP, or the stream ended.
    pub fn advance(&mut self, n: usize) -> bool {
        if self.decision.is_some() {
            return true;
        }
        if n == 0 {
            self.decision = Some(Decision::Invalid);
            return true;
        }
        self.filled = (self.filled + n).min(self.buf.len());
        match route(&self.buf[..self.filled], self.index) {
            Decision::Incomplete => false,
            d => {
                self.decision = Some(d);
                true
            }
        }
    }

    /// A reader that starts with `bytes` already read (what followed the
    /// previous request on a kept-alive connection): it may be decided
    /// already ([`HeadReader::is_decided`]), else read on.
    pub fn resume(index: bool, bytes: Vec<u8>) -> HeadReader {
        let filled = bytes.len();
        let mut r = HeadReader {
            buf: bytes,
            filled,
            index,
            decision: None,
        };
        if filled > 0 {
            match route(&r.buf[..filled], index) {
                Decision::Incomplete => {}
                d => r.decision = Some(d),
            }
        }
        r
    }

    /// Whether reading must stop (see [`HeadReader::advance`]).
    pub fn is_decided(&self) -> bool {
        self.decision.is_some()
    }

    /// The decision (`None` when reading stopped early) and the bytes read.
    /// A stream that ended before its head did is [`Decision::Invalid`].
    /// For an upgrade, the bytes past [`Upgrade::head_len`] are the start of
    /// the WebSocket stream.
    pub fn into_parts(mut self) -> (Option<Decision>, Vec<u8>) {
        self.buf.truncate(self.filled);
        (self.decision, self.buf)
    }
}

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`
/// (RFC 6455 §4.2.2: base64 of the SHA-1 of the key and a fixed GUID).
pub fn accept_key(key: &str) -> String {
    use sha1::{Digest, Sha1};
    const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = Sha1::default();
    sha1.update(key.as_bytes());
    sha1.update(WS_GUID);
    data_encoding::BASE64.encode(&sha1.finalize())
}

/// The `101 Switching Protocols` answer to an upgrade, given the
/// `Sec-WebSocket-Accept` value derived from the client's key
/// ([`accept_key`]) and the subprotocol to confirm, if any
/// ([`Upgrade::subprotocol`]; it must be a token the client offered).
/// [`Upgrade::response`] calls this.
pub fn switching_protocols(accept: &str, subprotocol: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = subprotocol {
        debug_assert!(
            p.bytes().all(|b| b.is_ascii_graphic() && b != b','),
            "{p:?}"
        );
        out.push_str("Sec-WebSocket-Protocol: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

const TEXT: &str = "text/plain; charset=utf-8";

/// The body of [`Route::UnsupportedSubprotocol`]'s 400.
pub const JSON_ONLY: &str = "this server speaks only the JSON protocol (centrifuge-json)\n";

/// The complete response for a route the codec answers alone: every route
/// but [`Route::Health`], [`Route::Metrics`], [`Route::Index`] and
/// [`Route::Admin`] (`None` for those; they depend on the node). Closes the
/// connection.
pub fn fixed_response(route: Route, head_only: bool) -> Option<Vec<u8>> {
    let r = match route {
        Route::Health | Route::Metrics | Route::Index | Route::Admin => return None,
        Route::NotFound => response(404, TEXT, b"not found\n", head_only),
        Route::MethodNotAllowed => build(
            405,
            &[("allow", "GET, HEAD")],
            "close",
            TEXT,
            b"method not allowed\n",
            head_only,
        ),
        Route::BadUpgrade(why) => {
            let body = format!("bad websocket upgrade: {}\n", why.reason());
            response(400, TEXT, body.as_bytes(), head_only)
        }
        // RFC 6455 §4.2.2 names the versions understood; RFC 9110 §15.5.22
        // wants an `Upgrade` header (and with it `Connection: upgrade`).
        Route::UnsupportedVersion => build(
            426,
            &[
                ("sec-websocket-version", WEBSOCKET_VERSION),
                ("upgrade", "websocket"),
            ],
            "upgrade, close",
            TEXT,
            b"unsupported websocket version: this server speaks 13\n",
            head_only,
        ),
        Route::UnsupportedSubprotocol => response(400, TEXT, JSON_ONLY.as_bytes(), head_only),
        Route::HeaderTooLarge => {
            response(431, TEXT, b"request header fields too large\n", head_only)
        }
        Route::UriTooLong => response(414, TEXT, b"request target too long\n", head_only),
        Route::ApiMethodNotAllowed => build(
            405,
            &[("allow", "POST")],
            "close",
            TEXT,
            b"method not allowed: the server API takes POST\n",
            head_only,
        ),
        Route::LengthRequired => response(
            411,
            TEXT,
            b"length required: send the body with a Content-Length (no chunked encoding)\n",
            head_only,
        ),
        Route::BadContentLength => response(400, TEXT, b"bad Content-Length\n", head_only),
    };
    Some(r)
}

/// A server API response (JSON); `keep_alive`: the connection stays open
/// for another request.
pub fn api_response(status: u16, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    build(status, &[], connection, "application/json", body, false)
}

/// The headers of a page that must not be framed, must not load anything
/// from another host, and sends no `Referer` (the admin page).
pub const LOCKED_PAGE_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
];

/// A complete HTTP/1.1 response with extra headers that closes the
/// connection.
pub fn response_with(
    status: u16,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    build(status, headers, "close", content_type, body, head_only)
}

/// A complete HTTP/1.1 response that closes the connection.
pub fn response(status: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    build(status, &[], "close", content_type, body, head_only)
}

fn build(
    status: u16,
    headers: &[(&str, &str)],
    connection: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        422 => "Unprocessable Content",
        500 => "Internal Server Error",
        414 => "URI Too Long",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "content-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: {connection}\r\n\r\n",
        body.len()
    ));
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
    }

    fn request(line: &str, headers: &[&str]) -> Vec<u8> {
        let mut r = format!("{line}\r\n");
        for h in headers {
            r.push_str(h);
            r.push_str("\r\n");
        }
        r.push_str("\r\n");
        r.into_bytes()
    }

    /// The headers of a valid upgrade, with `drop` (header names) left out
    /// and `extra` added.
    fn ws_headers<'a>(drop: &[&str], extra: &[&'a str]) -> Vec<&'a str> {
        let base = [
            "Host: example.com",
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        ];
        base.into_iter()
            .filter(|h| !drop.iter().any(|d| h.starts_with(&format!("{d}:"))))
            .chain(extra.iter().copied())
            .collect()
    }

    fn ws(target: &str, drop: &[&str], extra: &[&str]) -> Vec<u8> {
        request(&format!("GET {target} HTTP/1.1"), &ws_headers(drop, extra))
    }

    fn routed(route: Route) -> Decision {
        Decision::Route {
            route,
            head_only: false,
        }
    }

    fn refused(why: BadUpgrade) -> Decision {
        routed(Route::BadUpgrade(why))
    }

    fn upgraded(d: Decision) -> Upgrade {
        match d {
            Decision::Upgrade(up) => up,
            other => panic!("not an upgrade: {other:?}"),
        }
    }

    fn text(r: Vec<u8>) -> String {
        String::from_utf8(r).unwrap()
    }

    #[test]
    fn api_requests() {
        let post = |headers: &[&str]| {
            let mut r = request("POST /api/publish HTTP/1.1", headers);
            r.extend_from_slice(b"{}");
            route(&r, true)
        };
        let d = post(&["Host: x", "Content-Length: 2", "X-API-Key: k"]);
        let Decision::Api(api) = d else {
            panic!("{d:?}")
        };
        assert_eq!(api.method, "publish");
        assert_eq!(api.content_length, 2);
        assert_eq!(api.api_key.as_deref(), Some("k"));
        assert!(api.keep_alive && !api.transport_errors);
        assert!(!format!("{api:?}").contains("\"k\""), "{api:?}");
        let d = post(&[
            "Content-Length: 2, 2",
            "Connection: close",
            "X-Centrifugo-Error-Mode: transport",
            "X-API-Key: a",
            "X-API-Key: b",
        ]);
        let Decision::Api(api) = d else {
            panic!("{d:?}")
        };
        assert!(!api.keep_alive && api.transport_errors);
        assert_eq!(api.api_key, None, "two keys are no key");
        assert_eq!(post(&[]), routed(Route::LengthRequired));
        assert_eq!(
            post(&["Transfer-Encoding: chunked", "Content-Length: 2"]),
            routed(Route::LengthRequired)
        );
        for bad in ["-1", "x", "1, 2", "", "99999999999999999999"] {
            let h = format!("Content-Length: {bad}");
            assert_eq!(post(&[&h]), routed(Route::BadContentLength), "{bad}");
        }
        assert_eq!(
            route(&get("/api/publish"), true),
            routed(Route::ApiMethodNotAllowed)
        );
        let r = request("POST /api/info HTTP/1.0", &["Content-Length: 0"]);
        assert!(matches!(route(&r, true), Decision::Api(a) if !a.keep_alive));
        let r = text(api_response(200, b"{}", true));
        assert!(r.contains("connection: keep-alive\r\n"), "{r}");
        // A kept-alive connection's next request may already be here.
        let mut two = request("POST /api/info HTTP/1.1", &["Content-Length: 0"]);
        two.extend_from_slice(b"GET /healthz HTTP/1.1\r\n\r\n");
        let reader = HeadReader::resume(true, two[two.len() - 27..].to_vec());
        assert!(reader.is_decided());
        assert_eq!(reader.into_parts().0, Some(routed(Route::Health)));
        assert!(!HeadReader::resume(true, b"GET /he".to_vec()).is_decided());
    }

    #[test]
    fn routes() {
        assert_eq!(route(&get("/healthz"), true), routed(Route::Health));
        assert_eq!(route(&get("/metrics?x=1"), true), routed(Route::Metrics));
        assert_eq!(route(&get("/"), true), routed(Route::Index));
        assert_eq!(route(&get("/"), false), routed(Route::NotFound));
        assert_eq!(route(&get("/nope"), true), routed(Route::NotFound));
        assert_eq!(route(&get("/admin"), false), routed(Route::Admin));
        assert_eq!(route(&get("/admin?x"), true), routed(Route::Admin));
        assert_eq!(route(&get("/admin/"), true), routed(Route::NotFound));
        assert_eq!(route(&get("*"), true), routed(Route::NotFound));
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n", true),
            routed(Route::MethodNotAllowed)
        );
        assert_eq!(
            route(b"HEAD /healthz HTTP/1.1\r\n\r\n", true),
            Decision::Route {
                route: Route::Health,
                head_only: true
            }
        );
    }

    #[test]
    fn absolute_form_routes_like_origin_form() {
        assert_eq!(
            route(&get("http://host/metrics"), true),
            routed(Route::Metrics)
        );
        assert_eq!(
            route(&get("HTTPS://host:8443/healthz?x=1"), true),
            routed(Route::Health)
        );
        assert_eq!(route(&get("http://host"), true), routed(Route::Index));
        assert_eq!(route(&get("http://host?x"), true), routed(Route::Index));
        assert_eq!(
            route(b"POST http://host/metrics HTTP/1.1\r\n\r\n", true),
            routed(Route::MethodNotAllowed)
        );
        // Not an http URI, no authority, or userinfo (RFC 9110 §4.2.4).
        for t in [
            "ftp://host/metrics",
            "http:///metrics",
            "http://u@host/metrics",
        ] {
            assert_eq!(route(&get(t), true), routed(Route::NotFound), "{t}");
        }
    }

    #[test]
    fn upgrade_at_any_path() {
        let req = ws("/anything", &[], &[]);
        assert_eq!(
            route(&req, true),
            Decision::Upgrade(Upgrade {
                key: KEY.into(),
                head_len: req.len(),
                protocol: ClientProtocol::Seed,
                subprotocol: None,
                host: Some("example.com".into()),
                origin: None,
                token: None,
            })
        );
        let lower = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, upgrade\r\nupgrade: WebSocket\r\nsec-websocket-key:  dGhlIHNhbXBsZSBub25jZQ== \r\nsec-websocket-version: 13\r\n\r\n";
        assert_eq!(upgraded(route(lower, true)).key, KEY);
        assert_eq!(
            route(&ws("/", &["Sec-WebSocket-Key"], &[]), true),
            refused(BadUpgrade::MissingKey)
        );
        assert_eq!(
            route(&ws("/", &["Connection"], &[]), true),
            refused(BadUpgrade::NoConnectionUpgrade)
        );
        let post = request("POST / HTTP/1.1", &ws_headers(&[], &[]));
        assert_eq!(route(&post, true), refused(BadUpgrade::NotGet));
        let mut pipelined = req.clone();
        pipelined.extend_from_slice(b"\x81\x80");
        assert_eq!(upgraded(route(&pipelined, true)).head_len, req.len());
    }

    #[test]
    fn upgrade_at_absolute_form() {
        let up = upgraded(route(
            &ws(
                "http://chat.example:8080/connection/websocket?token=t",
                &[],
                &[],
            ),
            true,
        ));
        assert_eq!(up.protocol, ClientProtocol::Centrifugo);
        // RFC 9112 §3.2.2: the target's authority, not the Host header.
        assert_eq!(up.host.as_deref(), Some("chat.example:8080"));
        assert_eq!(up.token.as_deref(), Some("t"));
        let up = upgraded(route(&ws("https://h/room", &["Host"], &[]), true));
        assert_eq!(up.protocol, ClientProtocol::Seed);
        assert_eq!(up.host.as_deref(), Some("h"));
        for t in ["*", "ftp://h/connection/websocket", "http://u@h/"] {
            assert_eq!(
                route(&ws(t, &[], &[]), true),
                refused(BadUpgrade::BadTarget),
                "{t}"
            );
        }
    }

    #[test]
    fn duplicate_key_is_refused() {
        let req = ws("/", &[], &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="]);
        assert_eq!(route(&req, true), refused(BadUpgrade::DuplicateKey));
        // Even the same key twice.
        let req = ws("/", &[], &["sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ=="]);
        assert_eq!(route(&req, true), refused(BadUpgrade::DuplicateKey));
    }

    #[test]
    fn key_must_be_base64_of_16_bytes() {
        let bad = [
            "a",
            "",
            // 15 and 17 bytes.
            "AAAAAAAAAAAAAAAAAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAA=",
            // 16 bytes without padding, padding not canonical, bad alphabet.
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25jZQ-_",
            "dGhlIHNhbXBs ZSBub25jZQ==",
            "dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ==",
        ];
        for key in bad {
            let h = format!("Sec-WebSocket-Key: {key}");
            let req = ws("/", &["Sec-WebSocket-Key"], &[&h]);
            assert_eq!(route(&req, true), refused(BadUpgrade::BadKey), "{key:?}");
        }
        let req = ws(
            "/",
            &["Sec-WebSocket-Key"],
            &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="],
        );
        assert_eq!(upgraded(route(&req, true)).key, "AAAAAAAAAAAAAAAAAAAAAA==");
    }

    #[test]
    fn upgrade_needs_http_11() {
        let req = request("GET / HTTP/1.0", &ws_headers(&[], &[]));
        assert_eq!(route(&req, true), refused(BadUpgrade::Http10));
        let plain = b"GET /healthz HTTP/1.0\r\n\r\n";
        assert_eq!(route(plain, true), routed(Route::Health));
    }

    #[test]
    fn version() {
        let v8 = ws(
            "/",
            &["Sec-WebSocket-Version"],
            &["Sec-WebSocket-Version: 8"],
        );
        assert_eq!(route(&v8, true), routed(Route::UnsupportedVersion));
        let list = ws(
            "/",
            &["Sec-WebSocket-Version"],
            &["Sec-WebSocket-Version: 13, 8"],
        );
        assert_eq!(route(&list, true), routed(Route::UnsupportedVersion));
        let twice = ws("/", &[], &["Sec-WebSocket-Version: 13"]);
        assert_eq!(route(&twice, true), refused(BadUpgrade::DuplicateVersion));
        let none = ws("/", &["Sec-WebSocket-Version"], &[]);
        assert_eq!(route(&none, true), refused(BadUpgrade::MissingVersion));

        let r = text(fixed_response(Route::UnsupportedVersion, false).unwrap());
        assert!(r.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{r}");
        assert!(r.contains("\r\nsec-websocket-version: 13\r\n"), "{r}");
        assert!(r.contains("\r\nupgrade: websocket\r\n"), "{r}");
        assert!(r.contains("\r\nconnection: upgrade, close\r\n"), "{r}");
    }

    #[test]
    fn client_protocol_by_path() {
        let cases = [
            ("/connection/websocket", ClientProtocol::Centrifugo),
            (
                "/connection/websocket?cf_protocol_version=v2",
                ClientProtocol::Centrifugo,
            ),
            ("/connection/websocket/", ClientProtocol::Seed),
            ("/connection/websocketx", ClientProtocol::Seed),
            ("/connection/WebSocket", ClientProtocol::Seed),
            ("/connection", ClientProtocol::Seed),
            ("/", ClientProtocol::Seed),
            ("/room?x", ClientProtocol::Seed),
        ];
        for (path, protocol) in cases {
            let up = upgraded(route(&ws(path, &[], &[]), true));
            assert_eq!(up.protocol, protocol, "{path}");
            assert_eq!(up.subprotocol, None, "{path}");
        }
    }

    #[test]
    fn centrifugo_subprotocols() {
        let cf = "/connection/websocket";
        let offer = |offers: &[&str]| route(&ws(cf, &[], offers), true);
        let json = Some(CENTRIFUGE_JSON);
        for offers in [
            &["Sec-WebSocket-Protocol: centrifuge-json"][..],
            &["Sec-WebSocket-Protocol: centrifuge-protobuf, centrifuge-json"],
            &[
                "Sec-WebSocket-Protocol: centrifuge-protobuf",
                "sec-websocket-protocol: centrifuge-json",
            ],
            &["Sec-WebSocket-Protocol: foo,,centrifuge-json ,bar"],
        ] {
            assert_eq!(upgraded(offer(offers)).subprotocol, json, "{offers:?}");
        }
        for offers in [
            &[][..],
            &["Sec-WebSocket-Protocol:"],
            &["Sec-WebSocket-Protocol: , "],
        ] {
            assert_eq!(upgraded(offer(offers)).subprotocol, None, "{offers:?}");
        }
        for offers in [
            &["Sec-WebSocket-Protocol: centrifuge-protobuf"][..],
            &["Sec-WebSocket-Protocol: mqtt, chat"],
            &["Sec-WebSocket-Protocol: Centrifuge-JSON"],
        ] {
            assert_eq!(
                offer(offers),
                routed(Route::UnsupportedSubprotocol),
                "{offers:?}"
            );
        }
        let r = text(fixed_response(Route::UnsupportedSubprotocol, false).unwrap());
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        assert!(
            r.ends_with("\r\n\r\nthis server speaks only the JSON protocol (centrifuge-json)\n"),
            "{r}"
        );
        // A seed path never echoes one, whatever is offered.
        for offers in [
            &["Sec-WebSocket-Protocol: centrifuge-json"][..],
            &["Sec-WebSocket-Protocol: centrifuge-protobuf"],
        ] {
            let up = upgraded(route(&ws("/room", &[], offers), true));
            assert_eq!(up.subprotocol, None);
            assert!(!text(up.response()).contains("Sec-WebSocket-Protocol"));
        }
    }

    #[test]
    fn switching_protocols_format() {
        let r = text(switching_protocols("abc", None));
        assert!(r.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{r}");
        assert!(r.contains("\r\nSec-WebSocket-Accept: abc\r\n"), "{r}");
        assert!(!r.contains("Sec-WebSocket-Protocol"), "{r}");
        assert!(
            r.ends_with("\r\n\r\n") && !r.ends_with("\r\n\r\n\r\n"),
            "{r}"
        );
        let r = text(switching_protocols("abc", Some(CENTRIFUGE_JSON)));
        assert!(
            r.contains("\r\nSec-WebSocket-Protocol: centrifuge-json\r\n"),
            "{r}"
        );
        assert!(
            r.ends_with("\r\n\r\n") && !r.ends_with("\r\n\r\n\r\n"),
            "{r}"
        );
        let up = upgraded(route(
            &ws(
                "/connection/websocket",
                &[],
                &["Sec-WebSocket-Protocol: centrifuge-json"],
            ),
            true,
        ));
        let r = text(up.response());
        assert!(
            r.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{r}"
        );
        assert!(
            r.contains("\r\nSec-WebSocket-Protocol: centrifuge-json\r\n"),
            "{r}"
        );
    }

    #[test]
    fn origin_and_host() {
        let up = upgraded(route(
            &ws("/", &[], &["Origin: https://chat.example"]),
            true,
        ));
        assert_eq!(up.origin.as_deref(), Some("https://chat.example"));
        assert_eq!(up.host.as_deref(), Some("example.com"));
        let up = upgraded(route(&ws("/", &["Host"], &[]), true));
        assert_eq!((up.host, up.origin), (None, None));
        let two = ws(
            "/",
            &[],
            &["Origin: https://a.example", "origin: https://b.example"],
        );
        assert_eq!(route(&two, true), refused(BadUpgrade::DuplicateOrigin));
        let same = ws(
            "/",
            &[],
            &["Origin: https://a.example", "Origin: https://a.example"],
        );
        assert_eq!(route(&same, true), refused(BadUpgrade::DuplicateOrigin));
        let two_hosts = ws("/", &[], &["Host: evil.example"]);
        assert_eq!(route(&two_hosts, true), refused(BadUpgrade::DuplicateHost));
        let mut raw = ws("/", &[], &["Origin: x"]);
        let at = raw.windows(9).position(|w| w == b"Origin: x").unwrap();
        raw[at + 8] = 0xff;
        assert_eq!(route(&raw, true), refused(BadUpgrade::BadOrigin));
    }

    #[test]
    fn token() {
        let token = |target: &str| route(&ws(target, &[], &[]), true);
        let got = |target: &str| upgraded(token(target)).token;
        assert_eq!(got("/connection/websocket"), None);
        assert_eq!(got("/connection/websocket?x=1"), None);
        assert_eq!(
            got("/connection/websocket?token=abc.def"),
            Some("abc.def".into())
        );
        assert_eq!(got("/?a=1&token=a%2Fb%3D%3d&b=2"), Some("a/b==".into()));
        assert_eq!(got("/?token=a+b%20c"), Some("a+b c".into()));
        assert_eq!(got("/?token=%C3%A9"), Some("é".into()));
        assert_eq!(got("/?%74oken=x"), Some("x".into()));
        assert_eq!(got("/?token"), Some(String::new()));
        assert_eq!(got("/?token="), Some(String::new()));
        assert_eq!(got("/?tokens=x&xtoken=y"), None);
        assert_eq!(got("http://h/?token=t"), Some("t".into()));
        for bad in [
            "/?token=%zz",
            "/?token=%2",
            "/?token=%+f",
            "/?token=%ff",
            "/?token=a%",
        ] {
            assert_eq!(token(bad), refused(BadUpgrade::BadToken), "{bad}");
        }
        assert_eq!(
            token("/?token=a&token=a"),
            refused(BadUpgrade::DuplicateToken)
        );
        assert_eq!(
            token("/?token=a&%74oken=b"),
            refused(BadUpgrade::DuplicateToken)
        );
    }

    #[test]
    fn debug_redacts_the_token() {
        let up = upgraded(route(&ws("/?token=s3cr3t-value", &[], &[]), true));
        let shown = format!("{:?}", Decision::Upgrade(up.clone()));
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("token: Some(\"<redacted>\")"), "{shown}");
        assert!(shown.contains(KEY), "{shown}");
    }

    fn with_headers(n: usize) -> Vec<u8> {
        let mut r = b"GET /healthz HTTP/1.1\r\n".to_vec();
        for i in 0..n {
            r.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
        }
        r.extend_from_slice(b"\r\n");
        r
    }

    #[test]
    fn too_many_headers_is_431() {
        assert_eq!(
            route(&with_headers(MAX_HEADERS), true),
            routed(Route::Health)
        );
        let many = with_headers(MAX_HEADERS + 1);
        assert_eq!(route(&many, true), routed(Route::HeaderTooLarge));
        // Decided as soon as the 65th line is complete.
        let cut = many.len() - 2;
        assert_eq!(route(&many[..cut], true), routed(Route::HeaderTooLarge));
        let mut head = many.clone();
        head[..3].copy_from_slice(b"HEA");
        head.splice(3..3, *b"D");
        assert_eq!(
            route(&head, true),
            Decision::Route {
                route: Route::HeaderTooLarge,
                head_only: true
            }
        );
        let r = text(fixed_response(Route::HeaderTooLarge, false).unwrap());
        assert!(
            r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{r}"
        );
        assert!(r.contains("\r\nconnection: close\r\n"), "{r}");
    }

    #[test]
    fn head_over_8_kib_is_431() {
        // A large cookie.
        let cookie = format!("Cookie: c={}", "a".repeat(MAX_HEAD_BYTES));
        let req = request("GET / HTTP/1.1", &["Host: x", &cookie]);
        assert_eq!(route(&req, true), routed(Route::HeaderTooLarge));
        assert_eq!(
            route(&req[..MAX_HEAD_BYTES], true),
            routed(Route::HeaderTooLarge)
        );
        assert_eq!(
            route(&req[..MAX_HEAD_BYTES - 1], true),
            Decision::Incomplete
        );
        // A head that ends one byte past the limit is too large however it
        // was read; one that ends at the limit is not.
        let fill = |len: usize| {
            let base = request("GET /healthz HTTP/1.1", &["Host: x", "x-pad: "]);
            let pad = "p".repeat(len - base.len());
            request(
                "GET /healthz HTTP/1.1",
                &["Host: x", &format!("x-pad: {pad}")],
            )
        };
        let exact = fill(MAX_HEAD_BYTES);
        assert_eq!(exact.len(), MAX_HEAD_BYTES);
        assert_eq!(route(&exact, true), routed(Route::Health));
        let mut over = fill(MAX_HEAD_BYTES + 1);
        assert_eq!(route(&over, true), routed(Route::HeaderTooLarge));
        over.extend_from_slice(&[b'z'; 2000]);
        assert_eq!(route(&over, true), routed(Route::HeaderTooLarge));
        // A long request line is 414.
        let long = get(&format!("/{}", "u".repeat(MAX_HEAD_BYTES)));
        assert_eq!(route(&long, true), routed(Route::UriTooLong));
        let r = text(fixed_response(Route::UriTooLong, true).unwrap());
        assert!(r.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "{r}");
    }

    #[test]
    fn garbage_is_dropped() {
        assert_eq!(
            route(b"GET /healthz HTTP/1.1\r\nHo", true),
            Decision::Incomplete
        );
        assert_eq!(route(b"\x16\x03\x01\x02\x00", true), Decision::Invalid);
        assert_eq!(route(b"hello there\r\n\r\n", true), Decision::Invalid);
        assert_eq!(route(b"\x00\x00\x00\x00\r\n\r\n", true), Decision::Invalid);
        // A TLS ClientHello as long as the limit.
        let mut hello = b"\x16\x03\x01\x20\x00\x01\x00\x1f\xfc\x03\x03".to_vec();
        hello.resize(MAX_HEAD_BYTES + 100, 0x42);
        assert_eq!(route(&hello, true), Decision::Invalid);
        // A token that never ends is no method.
        assert_eq!(route(&[b'A'; MAX_HEAD_BYTES], true), Decision::Invalid);
        assert_eq!(route(&[b'\n'; MAX_HEAD_BYTES], true), Decision::Invalid);
        // Bad bytes in an otherwise HTTP head are not HTTP either.
        let mut bad = with_headers(3);
        bad[30] = 0;
        assert_eq!(route(&bad, true), Decision::Invalid);
    }

    /// Feeds `data` to a reader `chunk` bytes at a time, as a runtime would.
    fn read_all(data: &[u8], chunk: usize) -> (Option<Decision>, Vec<u8>) {
        let mut head = HeadReader::new(true);
        let mut fed = 0;
        loop {
            let buf = head.buf();
            let n = buf.len().min(chunk).min(data.len() - fed);
            buf[..n].copy_from_slice(&data[fed..fed + n]);
            fed += n;
            if head.advance(n) {
                break;
            }
            assert!(fed < MAX_HEAD_BYTES, "read on past the limit");
        }
        head.into_parts()
    }

    #[test]
    fn head_reader() {
        let cookie = format!("Cookie: c={}", "a".repeat(3 * MAX_HEAD_BYTES));
        let big = request("GET / HTTP/1.1", &["Host: x", &cookie]);
        for chunk in [1, 7, 1000, 1024, 5000] {
            let (d, bytes) = read_all(&big, chunk);
            assert_eq!(d, Some(routed(Route::HeaderTooLarge)), "{chunk}");
            assert!(bytes.len() >= MAX_HEAD_BYTES, "{chunk}");
            assert!(bytes.len() < MAX_HEAD_BYTES + READ_CHUNK, "{chunk}");
            assert_eq!(bytes, big[..bytes.len()], "{chunk}");
        }
        let mut req = ws("/connection/websocket?token=t", &[], &[]);
        let head_len = req.len();
        req.extend_from_slice(b"\x81\x80abcd");
        let (d, bytes) = read_all(&req, 1024);
        let up = upgraded(d.unwrap());
        assert_eq!(
            (up.head_len, up.protocol),
            (head_len, ClientProtocol::Centrifugo)
        );
        assert_eq!(bytes, req);
        let (d, _) = read_all(b"GET / HTTP/1.1\r\n", 1024);
        assert_eq!(d, Some(Decision::Invalid), "ended mid-head");
        let (d, _) = read_all(&with_headers(200), 1);
        assert_eq!(d, Some(routed(Route::HeaderTooLarge)));
    }

    #[test]
    fn fixed_responses() {
        let codes = [
            (Route::NotFound, 404),
            (Route::MethodNotAllowed, 405),
            (Route::BadUpgrade(BadUpgrade::BadKey), 400),
            (Route::UnsupportedVersion, 426),
            (Route::UnsupportedSubprotocol, 400),
            (Route::HeaderTooLarge, 431),
            (Route::UriTooLong, 414),
        ];
        for (route, code) in codes {
            let r = text(fixed_response(route, false).unwrap());
            assert!(r.starts_with(&format!("HTTP/1.1 {code} ")), "{r}");
            let (head, body) = r.split_once("\r\n\r\n").unwrap();
            assert!(
                head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())),
                "{r}"
            );
            let h = fixed_response(route, true).unwrap();
            assert_eq!(
                h,
                head.as_bytes()
                    .iter()
                    .chain(b"\r\n\r\n")
                    .copied()
                    .collect::<Vec<_>>()
            );
        }
        for route in [Route::Health, Route::Metrics, Route::Index] {
            assert_eq!(fixed_response(route, false), None);
        }
        let r = text(fixed_response(Route::MethodNotAllowed, false).unwrap());
        assert!(r.contains("\r\nallow: GET, HEAD\r\n"), "{r}");
        let r = text(fixed_response(Route::BadUpgrade(BadUpgrade::DuplicateKey), false).unwrap());
        assert!(
            r.ends_with("\r\n\r\nbad websocket upgrade: more than one Sec-WebSocket-Key\n"),
            "{r}"
        );
    }

    #[test]
    fn accept_key_is_rfc_6455s_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn response_format() {
        let r = response(503, "text/plain", b"down\n", false);
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(s.ends_with("\r\n\r\ndown\n"));
        assert!(s.contains("content-length: 5\r\n"));
        let h = response(200, "text/plain", b"ok", true);
        assert!(h.ends_with(b"\r\n\r\n"));
    }
}
