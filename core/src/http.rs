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

/// The full response to a plain request, from the node's current state.
pub fn respond(node: &crate::Node, io: &crate::IoStats, route: Route, head_only: bool) -> Vec<u8> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match route {
        Route::Health if node.hub().broker_up() => response(200, TEXT, b"ok\n", head_only),
        Route::Health => response(503, TEXT, b"broker unavailable\n", head_only),
        Route::Metrics => {
            let body = crate::metrics::render(node, io);
            response(200, "text/plain; version=0.0.4", body.as_bytes(), head_only)
        }
        Route::Index => response(
            200,
            "text/html; charset=utf-8",
            crate::CHAT_PAGE.as_bytes(),
            head_only,
        ),
        Route::NotFound => response(404, TEXT, b"not found\n", head_only),
        Route::MethodNotAllowed => response(405, TEXT, b"method not allowed\n", head_only),
        Route::BadUpgrade => response(400, TEXT, b"bad websocket upgrade\n", head_only),
    }
}

/// The `101 Switching Protocols` answer to an upgrade, given the
/// `Sec-WebSocket-Accept` value derived from the client's key (SHA-1 and
/// base64, which the WebSocket library computes).
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
    fn health_follows_the_broker() {
        use crate::{BrokerMode, HubConfig, IoStats, Node};
        let io = IoStats::default();
        let local = Node::new(HubConfig::default(), BrokerMode::Local, Default::default());
        assert!(respond(&local, &io, Route::Health, false).starts_with(b"HTTP/1.1 200"));
        let remote = Node::new(HubConfig::default(), BrokerMode::Remote, Default::default());
        assert!(respond(&remote, &io, Route::Health, false).starts_with(b"HTTP/1.1 503"));
        let page = respond(&local, &io, Route::Index, false);
        assert!(page.ends_with(crate::CHAT_PAGE.as_bytes()));
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
