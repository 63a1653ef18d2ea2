//! Arbitrary bytes as the start of a connection on the listening port,
//! through the HTTP codec alone (`roomcast_core::http`), not the node.
//!
//! `route` never panics, and its decision is a function of the first
//! `MAX_HEAD_BYTES` bytes (and of whether there are that many). The
//! runtimes call it again each time more bytes arrive, so what must hold is
//! consistency between a buffer and any extension of it, at every length:
//! a prefix is either `Incomplete` or already has the final decision. A
//! complete decision (`Route`, `Upgrade`) stays the same whatever follows
//! (pipelined bytes, the WebSocket stream, a head too large), `Invalid`
//! never heals, and a head that completes never looked different on the way.
//!
//! Also:
//! - `Incomplete` only below the limit;
//! - an upgrade's `head_len` lies in the buffer and within the limit, its
//!   key is the base64 of 16 bytes, re-routing just the head gives the same
//!   upgrade; a seed path never gets a subprotocol, a Centrifugo one only
//!   `centrifuge-json` (and its request line names the Centrifugo path);
//! - a head that httparse parses completely when allowed any number of
//!   headers is never dropped (it is routed, upgraded, or 431 for its
//!   header count), and a 431 below the limit has more than `MAX_HEADERS`
//!   header lines;
//! - `index` only turns `/`'s 404 into the page (or a 405);
//! - every route has a well-formed response with the route's status, and
//!   HEAD's has no body; the upgrade's 101 carries the key's accept value
//!   and exactly the subprotocol decided.
//!
//! Then the bytes go through `HeadReader` as a runtime feeds them, in reads
//! of a few sizes: the reader stops no later than one read past the limit,
//! it stops exactly where `route` on what it was given is decided (or where
//! the stream ends, which is `Invalid`), and it hands back exactly the bytes
//! read, so an upgrade's WebSocket bytes are those past its head.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_core::http::{
    CENTRIFUGE_JSON, CENTRIFUGO_PATH, ClientProtocol, Decision, HeadReader, MAX_HEAD_BYTES,
    MAX_HEADERS, Route, Upgrade, accept_key, fixed_response, response, route,
};

/// Line ends checked as split points, at most.
const MAX_LINE_SPLITS: usize = 24;

fn check_prefix(data: &[u8], k: usize, full: &Decision) {
    let pre = route(&data[..k], true);
    assert!(
        pre == Decision::Incomplete || pre == *full,
        "prefix of {k} bytes gives {pre:?}, all {} bytes give {full:?}",
        data.len()
    );
}

/// The status a route is answered with (Health: 200 or 503 by the broker).
fn status(route: Route) -> &'static [u16] {
    match route {
        Route::Health => &[200, 503],
        Route::Metrics | Route::Index => &[200],
        // 404 where the admin page is off.
        Route::Admin => &[200, 404],
        Route::NotFound => &[404],
        Route::MethodNotAllowed | Route::ApiMethodNotAllowed => &[405],
        Route::LengthRequired => &[411],
        Route::BadContentLength => &[400],
        Route::BadUpgrade(_) | Route::UnsupportedSubprotocol => &[400],
        Route::UnsupportedVersion => &[426],
        Route::HeaderTooLarge => &[431],
        Route::UriTooLong => &[414],
    }
}

/// What a node would answer `route` with; the node-dependent three get a
/// stand-in through `response`.
fn answer(route: Route, head_only: bool) -> Vec<u8> {
    fixed_response(route, head_only).unwrap_or_else(|| {
        assert!(
            matches!(
                route,
                Route::Health | Route::Metrics | Route::Index | Route::Admin
            ),
            "no response for {route:?}"
        );
        response(200, "text/plain", b"ok\n", head_only)
    })
}

fn check_response(route: Route, head_only: bool) {
    let r = answer(route, head_only);
    let r = String::from_utf8(r).expect("ASCII response");
    let (head, body) = r.split_once("\r\n\r\n").expect("a complete head");
    let code: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("status line of {r:?}"));
    if fixed_response(route, head_only).is_some() {
        assert!(status(route).contains(&code), "{route:?} answered {code}");
    }
    assert!(head.contains("\r\nconnection: "), "{r:?}");
    if head_only {
        assert!(body.is_empty(), "HEAD answered with a body: {r:?}");
    } else {
        let length = format!("\r\ncontent-length: {}\r\n", body.len());
        assert!(head.contains(&length), "{r:?}");
    }
    if route == Route::UnsupportedVersion {
        assert!(head.contains("\r\nsec-websocket-version: 13"), "{r:?}");
    }
}

fn check_upgrade(data: &[u8], up: &Upgrade, full: &Decision) {
    let head_len = up.head_len;
    assert!(
        head_len > 0 && head_len <= data.len().min(MAX_HEAD_BYTES),
        "head_len {head_len}"
    );
    let nonce = base64_len(&up.key);
    assert_eq!(nonce, Some(16), "key {:?}", up.key);
    assert_eq!(route(&data[..head_len], true), *full, "head alone");
    check_prefix(data, head_len - 1, full);
    match up.protocol {
        ClientProtocol::Seed => assert_eq!(up.subprotocol, None),
        ClientProtocol::Centrifugo => {
            assert!(matches!(up.subprotocol, None | Some(CENTRIFUGE_JSON)));
            let head = &data[..head_len];
            let line = head
                .split(|b| *b == b'\n')
                .find(|l| !l.is_empty() && *l != b"\r")
                .unwrap_or(b"");
            let path = CENTRIFUGO_PATH.as_bytes();
            assert!(
                line.windows(path.len()).any(|w| w == path),
                "Centrifugo at {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
    let response = String::from_utf8(up.response()).expect("ASCII response");
    assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
    assert!(response.ends_with("\r\n\r\n"), "{response}");
    let accept = format!("\r\nSec-WebSocket-Accept: {}\r\n", accept_key(&up.key));
    assert!(response.contains(&accept), "{response}");
    let echoed = response.contains("\r\nSec-WebSocket-Protocol: centrifuge-json\r\n");
    assert_eq!(echoed, up.subprotocol.is_some(), "{response}");
    assert_eq!(
        response.matches("Sec-WebSocket-Protocol").count(),
        usize::from(echoed)
    );
    // Debug never shows the token: it prints as without one, but marked.
    let shown = format!("{up:?}");
    let without = format!(
        "{:?}",
        Upgrade {
            token: None,
            ..up.clone()
        }
    );
    let marked = match up.token {
        Some(_) => without.replace("token: None", "token: Some(\"<redacted>\")"),
        None => without,
    };
    assert_eq!(shown, marked, "Debug of an upgrade");
}

/// How many bytes a strict base64 string decodes to.
fn base64_len(s: &str) -> Option<usize> {
    // Standard alphabet with padding, canonical: what RFC 6455 keys are.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    if pad > 2 || b[..b.len() - pad].iter().any(|c| !ALPHABET.contains(c)) {
        return None;
    }
    Some(b.len() / 4 * 3 - pad)
}

fn check(data: &[u8]) {
    let full = route(data, true);
    match &full {
        Decision::Incomplete => assert!(data.len() < MAX_HEAD_BYTES, "Incomplete past the limit"),
        Decision::Upgrade(up) => check_upgrade(data, up, &full),
        Decision::Route { route, head_only } => {
            check_response(*route, *head_only);
            check_response(*route, !*head_only);
        }
        Decision::Api(api) => {
            assert!(api.head_len <= data.len().min(MAX_HEAD_BYTES));
            assert!(
                !format!("{api:?}").contains("api_key: Some(\""),
                "key not redacted"
            );
        }
        Decision::Invalid => {}
    }

    // The header limit, and no complete head dropped: httparse with room
    // for any number of headers.
    let window = &data[..data.len().min(MAX_HEAD_BYTES)];
    let mut headers = vec![httparse_free::EMPTY; MAX_HEAD_BYTES / 2];
    let unlimited = httparse_free::parse(window, &mut headers);
    match (&full, unlimited) {
        (Decision::Invalid, Some(Some(n))) => panic!("a complete head of {n} headers dropped"),
        (
            Decision::Route {
                route: Route::HeaderTooLarge,
                ..
            },
            parsed,
        ) if data.len() < MAX_HEAD_BYTES => match parsed {
            Some(Some(n)) => assert!(n > MAX_HEADERS, "431 for {n} headers"),
            // More headers may follow, or bytes that are not HTTP after
            // the 65th: the count of lines is all that can be said.
            Some(None) | None => {
                let lines = window.iter().filter(|b| **b == b'\n').count();
                assert!(lines > MAX_HEADERS, "431 for {lines} lines");
            }
        },
        _ => {}
    }

    // `index` only matters for `/`.
    let plain = route(data, false);
    if plain != full {
        match (&full, &plain) {
            (
                Decision::Route {
                    route: Route::Index | Route::MethodNotAllowed,
                    head_only: a,
                },
                Decision::Route {
                    route: Route::NotFound,
                    head_only: b,
                },
            ) if a == b => {}
            _ => panic!("index changes {plain:?} into {full:?}"),
        }
    }

    // Prefixes ending at or just before each line end, where heads end, plus
    // a few spread over the buffer and around the limit.
    let n = data.len();
    let mut splits: Vec<usize> = data
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .take(MAX_LINE_SPLITS)
        .flat_map(|(i, _)| [i, i + 1])
        .collect();
    splits.extend([0, n / 4, n / 2, 3 * n / 4, n.saturating_sub(1)]);
    splits.extend([MAX_HEAD_BYTES - 1, MAX_HEAD_BYTES, MAX_HEAD_BYTES + 1]);
    splits.sort_unstable();
    splits.dedup();
    for k in splits.into_iter().filter(|k| *k < n) {
        check_prefix(data, k, &full);
    }
}

/// httparse with as many header slots as the caller gives: `None` not HTTP,
/// `Some(None)` partial, `Some(Some(n))` a complete head of `n` headers.
mod httparse_free {
    pub use httparse::EMPTY_HEADER as EMPTY;

    pub fn parse<'b>(buf: &'b [u8], headers: &mut [httparse::Header<'b>]) -> Option<Option<usize>> {
        let mut req = httparse::Request::new(headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(_)) => Some(Some(req.headers.len())),
            Ok(httparse::Status::Partial) => Some(None),
            Err(_) => None,
        }
    }
}

fn check_reader(data: &[u8], chunk: usize) {
    let mut head = HeadReader::new(true);
    let mut fed = 0;
    let ended = loop {
        let buf = head.buf();
        assert!(!buf.is_empty(), "no room to read into");
        let n = buf.len().min(chunk).min(data.len() - fed);
        buf[..n].copy_from_slice(&data[fed..fed + n]);
        fed += n;
        let stop = head.advance(n);
        let seen = route(&data[..fed], true);
        assert_eq!(
            stop,
            n == 0 || seen != Decision::Incomplete,
            "stopped {stop} after {fed} bytes decided {seen:?}"
        );
        if stop {
            break n == 0;
        }
        assert!(fed < MAX_HEAD_BYTES, "still reading past the limit");
    };
    assert!(head.advance(1), "reads on after stopping");
    let seen = route(&data[..fed], true);
    let (decision, bytes) = head.into_parts();
    assert_eq!(bytes, &data[..fed], "the bytes read");
    let decision = decision.expect("a decision once stopped");
    if ended && seen == Decision::Incomplete {
        assert_eq!(decision, Decision::Invalid, "stream ended mid-head");
        assert_eq!(fed, data.len());
        return;
    }
    assert_eq!(decision, seen, "after {fed} bytes");
    // As a node answers it.
    match decision {
        Decision::Upgrade(up) => {
            let rest = &bytes[up.head_len..];
            assert_eq!(rest, &data[up.head_len..fed], "bytes past the head");
        }
        Decision::Route { route, head_only } => check_response(route, head_only),
        Decision::Api(api) => assert!(api.head_len <= fed),
        Decision::Invalid => {}
        Decision::Incomplete => panic!("stopped on Incomplete with {fed} bytes"),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check_reader(data, 1024);
    check_reader(data, 3 + data.len() % 61);
    if data.len() <= 256 {
        check_reader(data, 1);
    }
});
