//! The plain-HTTP side of the listening port: which request gets a WebSocket
//! and which gets a response, decided from the request head alone.

/// How much request head the runtimes read before giving up (8 KiB).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// What to answer a plain request with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /`: the chat page.
    Index,
    /// Anything else that is well-formed HTTP: 404.
    NotFound,
    /// A method other than GET or HEAD on a known path: 405.
    MethodNotAllowed,
    /// A WebSocket upgrade missing its key or with another version: 400.
    BadUpgrade,
}

/// The outcome of looking at the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The head is not complete: read more (up to [`MAX_HEAD_BYTES`]).
    Incomplete,
    /// A valid WebSocket upgrade (at any path). Answer with
    /// [`switching_protocols`] for this key; bytes past `head_len` already
    /// belong to the WebSocket stream.
    Upgrade { key: String, head_len: usize },
    /// Complete. `head_only` is set for HEAD requests.
    Route { route: Route, head_only: bool },
    /// Not HTTP, or a head larger than the limit: drop the connection at once.
    Invalid,
}

/// Routes a request from its first bytes. `index` says whether `GET /`
/// serves the chat page.
pub fn route(buf: &[u8], index: bool) -> Decision {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => {
            return Decision::Incomplete;
        }
        _ => return Decision::Invalid,
    };
    let method = req.method.unwrap_or("");
    let path = req.path.unwrap_or("");
    let headers = &*req.headers;
    let header = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &'static str, token: &str| {
        header(name).any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
    };
    if has_token("upgrade", "websocket") {
        let key = header("sec-websocket-key").next().map(str::trim);
        let valid = method == "GET"
            && has_token("connection", "upgrade")
            && header("sec-websocket-version").any(|v| v.trim() == "13");
        return match key {
            Some(key) if valid && !key.is_empty() => Decision::Upgrade {
                key: key.to_string(),
                head_len,
            },
            _ => Decision::Route {
                route: Route::BadUpgrade,
                head_only: false,
            },
        };
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let known = match path {
        "/healthz" => Some(Route::Health),
        "/metrics" => Some(Route::Metrics),
        "/" if index => Some(Route::Index),
        _ => None,
    };
    let route = match (known, method) {
        (None, _) => Route::NotFound,
        (Some(r), "GET" | "HEAD") => r,
        (Some(_), _) => Route::MethodNotAllowed,
    };
    Decision::Route {
        route,
        head_only: method == "HEAD",
    }
}

/// Reads a new socket's request head: the runtime reads into [`buf`] and
/// reports each read to [`advance`] until it says stop, then hands the reader
/// to [`Node::answer`](crate::Node::answer). Holds at most
/// [`MAX_HEAD_BYTES`] plus one read.
///
/// [`buf`]: HeadReader::buf
/// [`advance`]: HeadReader::advance
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
    /// Returns `true` when reading must stop: the head is complete, or is
    /// not HTTP, or the stream ended.
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

    /// The decision (`None` when reading stopped early) and the bytes read.
    pub(crate) fn into_parts(mut self) -> (Option<Decision>, Vec<u8>) {
        self.buf.truncate(self.filled);
        (self.decision, self.buf)
    }
}

/// What a runtime does with a new socket, from [`Node::answer`](crate::Node::answer).
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Write `response` (the `101`), then speak WebSocket on the socket;
    /// `rest` is what the client sent past its head, already WebSocket bytes.
    Upgrade { response: Vec<u8>, rest: Vec<u8> },
    /// Write this response, then end the stream.
    Respond(Vec<u8>),
    /// Drop the socket at once.
    Drop,
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
/// `Sec-WebSocket-Accept` value derived from the client's key ([`accept_key`]).
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// A complete HTTP/1.1 response that closes the connection.
pub fn response(status: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
    }

    fn routed(route: Route) -> Decision {
        Decision::Route {
            route,
            head_only: false,
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route(&get("/healthz"), true), routed(Route::Health));
        assert_eq!(route(&get("/metrics?x=1"), true), routed(Route::Metrics));
        assert_eq!(route(&get("/"), true), routed(Route::Index));
        assert_eq!(route(&get("/"), false), routed(Route::NotFound));
        assert_eq!(route(&get("/nope"), true), routed(Route::NotFound));
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
    fn upgrade_at_any_path() {
        let req = b"GET /anything HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(
            route(req, true),
            Decision::Upgrade {
                key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
                head_len: req.len()
            }
        );
        let no_key = b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(route(no_key, true), routed(Route::BadUpgrade));
        let v8 = b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: a\r\nSec-WebSocket-Version: 8\r\n\r\n";
        assert_eq!(route(v8, true), routed(Route::BadUpgrade));
        let mut pipelined = req.to_vec();
        pipelined.extend_from_slice(b"\x81\x80");
        assert!(
            matches!(route(&pipelined, true), Decision::Upgrade { head_len, .. } if head_len == req.len())
        );
        assert!(
            String::from_utf8(switching_protocols("abc"))
                .unwrap()
                .contains("Sec-WebSocket-Accept: abc\r\n")
        );
    }

    #[test]
    fn partial_and_garbage() {
        assert_eq!(
            route(b"GET /healthz HTTP/1.1\r\nHo", true),
            Decision::Incomplete
        );
        assert_eq!(route(b"\x16\x03\x01\x02\x00", true), Decision::Invalid);
        assert_eq!(route(b"hello there\r\n\r\n", true), Decision::Invalid);
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        assert_eq!(route(&big, true), Decision::Invalid);
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
