//! The SDK agents themselves (tests/sdk, tests/src/sdk.rs), without roomcast:
//! both agents install, start, report a refused connection, answer bad
//! commands with `ok:false`, and, against a tiny Centrifugo-protocol echo
//! server written here, connect, subscribe, publish, receive, reconnect after
//! a dropped transport, fetch tokens and recover from a position, with the
//! real SDKs. Each test runs once per SDK: `<name>::js` and `<name>::py`.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use roomcast_tests::sdk::{Agent, Sdk, is, is_on};
use roomcast_tests::{TIMEOUT, Value, free_port, json};
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::{Message, Utf8Bytes};

macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn js() {
                super::$name(roomcast_tests::sdk::Sdk::Js)
            }
            #[test]
            fn py() {
                super::$name(roomcast_tests::sdk::Sdk::Py)
            }
        }
    )*};
}

both!(
    refused_connection,
    bad_commands,
    echo_round_trip,
    dropped_transport_reconnects,
    tokens_and_positions,
);

/// Connecting where nothing listens: `connecting`, then transport errors as
/// the SDK retries by itself, never `connected`; `disconnect` ends it.
fn refused_connection(sdk: Sdk) {
    let mut a = Agent::spawn(sdk);
    let url = format!("ws://127.0.0.1:{}/connection/websocket", free_port());
    let r = a.ok(json!({"cmd": "connect", "url": url}));
    assert_eq!(r["state"], "connecting");
    let ev = a.wait_event(is("connecting"), TIMEOUT);
    assert_eq!(ev["code"], 0, "{ev}");
    // Two failed attempts: the SDK reconnects on its own.
    for _ in 0..2 {
        let ev = a.wait_event(is("error"), TIMEOUT);
        assert_eq!(ev["code"], 2, "a transport error: {ev}");
    }
    assert_eq!(a.ok(json!({"cmd": "state"}))["client"], "connecting");
    a.ok(json!({"cmd": "disconnect"}));
    let ev = a.wait_event(is("disconnected"), TIMEOUT);
    assert_eq!(ev["code"], 0, "{ev}");
    assert_eq!(a.ok(json!({"cmd": "state"}))["client"], "disconnected");
    a.drain();
    assert!(
        !a.events().iter().any(|e| e["event"] == "connected"),
        "connected to nothing: {:?}",
        a.events()
    );
    a.exit();
}

/// Every malformed or misplaced command is an `ok:false` reply with a code,
/// and the agent goes on.
fn bad_commands(sdk: Sdk) {
    let mut a = Agent::spawn(sdk);
    assert_eq!(a.ready()["sdk"], sdk.name());
    let code = |e: Value| e["code"].clone();

    let r = a.call_raw("this is not json");
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"]["code"], "bad_json", "{r}");
    let r = a.call_raw("[1,2,3]");
    assert_eq!(r["error"]["code"], "bad_command", "{r}");
    assert_eq!(code(a.err(json!({"cmd": "fly"}))), "bad_command");
    assert_eq!(code(a.err(json!({"nocmd": 1}))), "bad_command");
    assert_eq!(code(a.err(json!({"cmd": 7}))), "bad_command");
    // Prototype and attribute names are no commands either.
    assert_eq!(code(a.err(json!({"cmd": "constructor"}))), "bad_command");
    assert_eq!(code(a.err(json!({"cmd": "__init__"}))), "bad_command");
    for cmd in [
        json!({"cmd": "publish", "channel": "c", "data": 1}),
        json!({"cmd": "subscribe", "channel": "c"}),
        json!({"cmd": "disconnect"}),
        json!({"cmd": "dropTransport"}),
    ] {
        assert_eq!(code(a.err(cmd)), "no_client");
    }
    assert_eq!(code(a.err(json!({"cmd": "connect"}))), "bad_command");
    assert_eq!(
        code(a.err(json!({"cmd": "connect", "url": 5}))),
        "bad_command"
    );

    let url = format!("ws://127.0.0.1:{}/connection/websocket", free_port());
    a.ok(json!({"cmd": "connect", "url": url}));
    assert_eq!(
        code(a.err(json!({"cmd": "connect", "url": url}))),
        "already_connected"
    );
    assert_eq!(code(a.err(json!({"cmd": "subscribe"}))), "bad_command");
    assert_eq!(
        code(a.err(json!({"cmd": "subscribe", "channel": "c", "getToken": "t"}))),
        "bad_command"
    );
    assert_eq!(
        code(a.err(json!({"cmd": "unsubscribe", "channel": "nope"}))),
        "no_subscription"
    );
    assert_eq!(
        code(a.err(json!({"cmd": "publish", "channel": "c"}))),
        "bad_command"
    );
    assert_eq!(
        code(a.err(json!({"cmd": "presence", "channel": "c", "via": "pigeon"}))),
        "bad_command"
    );
    assert_eq!(
        code(a.err(json!({"cmd": "addTokens", "tokens": ["t"]}))),
        "bad_command"
    );
    assert_eq!(code(a.err(json!({"cmd": "dropTransport"}))), "no_transport");
    // An SDK call that cannot finish fails with the SDK's own code (1:
    // timeout, 3: disconnected) rather than hanging.
    a.ok(json!({"cmd": "disconnect"}));
    let e = a.err(json!({"cmd": "publish", "channel": "c", "data": 1}));
    assert!(e["code"] == 1 || e["code"] == 3, "{e}");
    // Still answering.
    assert_eq!(a.ok(json!({"cmd": "state"}))["client"], "disconnected");
    a.exit();
}

/// Connect, client- and server-side subscriptions, publish (through the
/// client and through the subscription) and receive, presence, history, RPC,
/// errors from the server, unsubscribe, disconnect.
fn echo_round_trip(sdk: Sdk) {
    let server = EchoServer::start();
    let mut a = Agent::spawn(sdk);
    a.ok(json!({"cmd": "connect", "url": server.url(), "name": "e2e", "wait": true}));
    let ev = a.wait_event(is("connected"), TIMEOUT);
    assert_eq!(ev["client"], "c1", "{ev}");
    assert_eq!(ev["transport"], "websocket", "{ev}");
    let ev = a.wait_event(
        |e| e["event"] == "subscribed" && e["server"] == true,
        TIMEOUT,
    );
    assert_eq!(ev["channel"], "srv:news", "{ev}");
    let connect = server.wait_command(1, "connect");
    assert_eq!(connect["connect"]["name"], "e2e", "{connect}");

    a.ok(json!({"cmd": "subscribe", "channel": "chat:1", "wait": true}));
    let ev = a.wait_event(is_on("subscribed", "chat:1"), TIMEOUT);
    assert_eq!(
        ev,
        json!({"event": "subscribed", "server": false, "channel": "chat:1", "recovered": false,
               "wasRecovering": false, "positioned": false, "recoverable": false,
               "streamPosition": null, "data": null})
    );

    a.ok(json!({"cmd": "publish", "channel": "chat:1", "data": {"text": "hi"}}));
    let ev = a.wait_event(is_on("publication", "chat:1"), TIMEOUT);
    assert_eq!(
        ev,
        json!({"event": "publication", "server": false, "channel": "chat:1",
               "data": {"text": "hi"}, "offset": null, "tags": null,
               "info": {"client": "c1", "user": "", "connInfo": null, "chanInfo": null}})
    );
    a.ok(json!({"cmd": "publish", "channel": "chat:1", "data": [2], "via": "subscription"}));
    let ev = a.wait_event(is_on("publication", "chat:1"), TIMEOUT);
    assert_eq!(ev["data"], json!([2]), "{ev}");
    a.ok(json!({"cmd": "publish", "channel": "srv:news", "data": "extra"}));
    let ev = a.wait_event(is_on("publication", "srv:news"), TIMEOUT);
    assert_eq!(ev["server"], true, "{ev}");
    assert_eq!(ev["data"], "extra", "{ev}");

    let r = a.ok(json!({"cmd": "presence", "channel": "chat:1"}));
    assert_eq!(
        r,
        json!({"clients": {"c1": {"client": "c1", "user": "u1", "connInfo": {"name": "A"},
                                  "chanInfo": null}}})
    );
    let r = a.ok(json!({"cmd": "presenceStats", "channel": "chat:1", "via": "subscription"}));
    assert_eq!(r, json!({"numClients": 1, "numUsers": 1}));
    let r = a.ok(json!({"cmd": "history", "channel": "chat:1", "limit": 2,
                        "since": {"offset": 2, "epoch": "ep1"}}));
    assert_eq!(
        r,
        json!({"offset": 4, "epoch": "ep1", "publications": [
            {"channel": "chat:1", "data": {"n": 1}, "info": null, "offset": 3, "tags": null},
            {"channel": "chat:1", "data": {"n": 2}, "info": null, "offset": 4, "tags": {"k": "v"}}]})
    );
    let history = server.wait_command(1, "history");
    assert_eq!(history["history"]["limit"], 2, "{history}");
    assert_eq!(
        history["history"]["since"],
        json!({"offset": 2, "epoch": "ep1"})
    );
    let r = a.ok(json!({"cmd": "rpc", "method": "sum", "data": [1, 2]}));
    assert_eq!(r, json!({"data": {"method": "sum", "echo": [1, 2]}}));
    a.ok(json!({"cmd": "rpc", "method": "drop-news", "data": null}));
    let ev = a.wait_event(is_on("unsubscribed", "srv:news"), TIMEOUT);
    assert_eq!(ev["server"], true, "{ev}");

    // The server's errors.
    let e = a.err(json!({"cmd": "publish", "channel": "denied:1", "data": 1}));
    assert_eq!(e["code"], 103, "{e}");
    assert_eq!(e["message"], "permission denied", "{e}");
    a.ok(json!({"cmd": "subscribe", "channel": "denied:2"}));
    let ev = a.wait_event(is_on("unsubscribed", "denied:2"), TIMEOUT);
    assert_eq!(ev["code"], 103, "{ev}");

    a.ok(json!({"cmd": "unsubscribe", "channel": "chat:1"}));
    let ev = a.wait_event(is_on("unsubscribed", "chat:1"), TIMEOUT);
    assert_eq!(ev["code"], 0, "{ev}");
    let unsub = server.wait_command(1, "unsubscribe");
    assert_eq!(unsub["unsubscribe"]["channel"], "chat:1", "{unsub}");
    let state = a.ok(json!({"cmd": "state"}));
    assert_eq!(state["client"], "connected", "{state}");
    assert_eq!(state["subscriptions"]["chat:1"], "unsubscribed", "{state}");

    a.ok(json!({"cmd": "disconnect"}));
    let ev = a.wait_event(is("disconnected"), TIMEOUT);
    assert_eq!(ev["code"], 0, "{ev}");
    assert!(server.wait_ended(1), "disconnect sends a close frame");
    a.exit();
    server.check_clean();
}

/// `dropTransport` cuts the WebSocket without a close frame; the SDK
/// reconnects by itself and resubscribes, recovering from its position.
fn dropped_transport_reconnects(sdk: Sdk) {
    let server = EchoServer::start();
    let mut a = Agent::spawn(sdk);
    a.ok(json!({"cmd": "connect", "url": server.url(), "wait": true}));
    assert_eq!(a.wait_event(is("connecting"), TIMEOUT)["code"], 0);
    assert_eq!(a.wait_event(is("connected"), TIMEOUT)["client"], "c1");
    a.ok(json!({"cmd": "subscribe", "channel": "pos:1", "recoverable": true, "wait": true}));
    let ev = a.wait_event(is_on("subscribing", "pos:1"), TIMEOUT);
    assert_eq!(ev["code"], 0, "subscribe called: {ev}");
    let ev = a.wait_event(is_on("subscribed", "pos:1"), TIMEOUT);
    assert_eq!(ev["recoverable"], true, "{ev}");
    assert_eq!(ev["positioned"], true, "{ev}");
    assert_eq!(ev["wasRecovering"], false, "{ev}");
    assert_eq!(ev["streamPosition"], json!({"offset": 7, "epoch": "ep1"}));
    let sub = server.wait_command(1, "subscribe");
    assert_eq!(sub["subscribe"]["recoverable"], true, "{sub}");

    a.ok(json!({"cmd": "dropTransport"}));
    let ev = a.wait_event(is("connecting"), TIMEOUT);
    assert_eq!(ev["code"], 1, "transport closed: {ev}");
    let ev = a.wait_event(is_on("subscribing", "pos:1"), TIMEOUT);
    assert_eq!(ev["code"], 1, "transport closed: {ev}");
    assert!(
        !server.wait_ended(1),
        "a dropped transport sends no close frame"
    );
    assert_eq!(a.wait_event(is("connected"), TIMEOUT)["client"], "c2");
    let ev = a.wait_event(is_on("subscribed", "pos:1"), TIMEOUT);
    assert_eq!(ev["wasRecovering"], true, "{ev}");
    assert_eq!(ev["recovered"], true, "{ev}");
    assert_eq!(ev["streamPosition"], json!({"offset": 7, "epoch": "ep1"}));
    let sub = server.wait_command(2, "subscribe");
    assert_eq!(sub["subscribe"]["recover"], true, "{sub}");
    assert_eq!(sub["subscribe"]["offset"], 7, "{sub}");
    assert_eq!(sub["subscribe"]["epoch"], "ep1", "{sub}");
    a.expect_no_event(is("disconnected"), Duration::from_millis(200));

    // Still working on the new connection.
    a.ok(json!({"cmd": "publish", "channel": "pos:1", "data": "after"}));
    let ev = a.wait_event(is_on("publication", "pos:1"), TIMEOUT);
    assert_eq!(ev["info"]["client"], "c2", "{ev}");
    a.exit();
    server.check_clean();
}

/// getToken lists (a 109 "token expired" makes the SDK ask for the next
/// one), a subscription's getToken, its flags, and `since`.
fn tokens_and_positions(sdk: Sdk) {
    let server = EchoServer::start();
    let mut a = Agent::spawn(sdk);
    a.ok(json!({"cmd": "connect", "url": server.url(), "getToken": ["expired", "t2"]}));
    let ev = a.wait_event(is("getToken"), TIMEOUT);
    assert_eq!(
        ev,
        json!({"event": "getToken", "scope": "connection", "channel": null, "index": 0,
               "token": "expired"})
    );
    let ev = a.wait_event(is("getToken"), TIMEOUT);
    assert_eq!(ev["index"], 1, "{ev}");
    assert_eq!(ev["token"], "t2", "{ev}");
    assert_eq!(a.wait_event(is("connected"), TIMEOUT)["client"], "c2");
    assert_eq!(
        server.wait_command(1, "connect")["connect"]["token"],
        "expired"
    );
    assert_eq!(server.wait_command(2, "connect")["connect"]["token"], "t2");
    assert_eq!(
        a.ok(json!({"cmd": "addTokens", "tokens": ["t3"]})),
        json!({"total": 3})
    );

    a.ok(
        json!({"cmd": "subscribe", "channel": "pos:2", "getToken": ["s1"],
                "joinLeave": true, "positioned": true, "recoverable": true,
                "since": {"offset": 5, "epoch": "ep0"}, "wait": true}),
    );
    let ev = a.wait_event(is("getToken"), TIMEOUT);
    assert_eq!(
        ev,
        json!({"event": "getToken", "scope": "subscription", "channel": "pos:2", "index": 0,
               "token": "s1"})
    );
    let ev = a.wait_event(is_on("subscribed", "pos:2"), TIMEOUT);
    assert_eq!(ev["wasRecovering"], true, "{ev}");
    assert_eq!(ev["recovered"], true, "{ev}");
    assert_eq!(ev["streamPosition"], json!({"offset": 5, "epoch": "ep0"}));
    let sub = server.wait_command(2, "subscribe")["subscribe"].clone();
    for (field, want) in [
        ("channel", json!("pos:2")),
        ("token", json!("s1")),
        ("join_leave", json!(true)),
        ("positioned", json!(true)),
        ("recoverable", json!(true)),
        ("recover", json!(true)),
        ("offset", json!(5)),
        ("epoch", json!("ep0")),
    ] {
        assert_eq!(sub[field], want, "{field} in {sub}");
    }
    // Join and leave of another client (room:* pushes them on subscribe).
    a.ok(json!({"cmd": "subscribe", "channel": "room:1", "joinLeave": true}));
    let info = json!({"client": "c9", "user": "u2", "connInfo": {"name": "B"}, "chanInfo": null});
    let ev = a.wait_event(is_on("join", "room:1"), TIMEOUT);
    assert_eq!(
        ev,
        json!({"event": "join", "server": false, "channel": "room:1", "info": info})
    );
    let ev = a.wait_event(is_on("leave", "room:1"), TIMEOUT);
    assert_eq!(
        ev,
        json!({"event": "leave", "server": false, "channel": "room:1", "info": info})
    );
    // An exhausted list is reported, and the SDK keeps retrying.
    a.ok(json!({"cmd": "subscribe", "channel": "pos:3", "getToken": []}));
    let ev = a.wait_event(is("getToken"), TIMEOUT);
    assert_eq!(ev["exhausted"], true, "{ev}");
    assert_eq!(ev["channel"], "pos:3", "{ev}");
    a.wait_event(is_on("subscriptionError", "pos:3"), TIMEOUT);
    a.exit();
    server.check_clean();
}

/// The driver's waits are bounded: an event that never comes is `None` after
/// its timeout, and a call whose reply never comes panics after its own.
#[test]
fn waits_are_bounded() {
    let mut a = Agent::js();
    let started = Instant::now();
    assert_eq!(
        a.try_wait_event(is("connected"), Duration::from_millis(300)),
        None
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let url = format!("ws://127.0.0.1:{}/connection/websocket", free_port());
    let started = Instant::now();
    // The agent would wait 20 s for a connection that never comes.
    let cmd = json!({"cmd": "connect", "url": url, "wait": true, "timeout": 20_000});
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        a.call_timeout(cmd, Duration::from_secs(1))
    }))
    .expect_err("a call without a reply in time panics");
    let message = panicked
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("no reply within 1s"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// A tiny Centrifugo-protocol (JSON) server: answers what the SDKs send and
// echoes each publication back to its publisher. Client ids are `c<N>` for
// the N-th connection. Channels: `denied:*` fail with 103, `pos:*` are
// recoverable and positioned at {7, "ep1"} (a recovering subscribe is
// recovered at the position it asked for), `room:*` push a join and a leave
// of another client after a subscribe with join_leave, `srv:news` is a
// server-side subscription of every connection (RPC "drop-news" ends it). A
// connect token "expired" gets 109.
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Log {
    /// (connection number, command) in arrival order.
    commands: Vec<(usize, Value)>,
    /// (connection number, whether a close frame came) per ended connection.
    ended: Vec<(usize, bool)>,
    /// Handshakes refused for a wrong path.
    rejected: usize,
    /// Lines that were not JSON.
    bad: Vec<String>,
}

struct EchoServer {
    port: u16,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Log::default()));
        let (s, l) = (Arc::clone(&stop), Arc::clone(&log));
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        n += 1;
                        let (s, l) = (Arc::clone(&s), Arc::clone(&l));
                        conns.push(std::thread::spawn(move || serve(n, stream, &s, &l)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        EchoServer {
            port,
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/connection/websocket", self.port)
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last command of kind `op` that connection `conn` sent (waiting
    /// for one).
    fn wait_command(&self, conn: usize, op: &str) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some((_, c)) = self
                .log()
                .commands
                .iter()
                .rev()
                .find(|(n, c)| *n == conn && c.get(op).is_some())
            {
                return c.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "connection {conn} sent no {op}; commands: {:?}",
                    self.log().commands
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for connection `conn` to end; whether it sent a close frame.
    fn wait_ended(&self, conn: usize) -> bool {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(&(_, clean)) = self.log().ended.iter().find(|(n, _)| *n == conn) {
                return clean;
            }
            assert!(Instant::now() < deadline, "connection {conn} did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asserts that every handshake was for the right path and every line
    /// was JSON.
    fn check_clean(&self) {
        let log = self.log();
        assert_eq!(log.rejected, 0, "handshakes on a wrong path");
        assert!(log.bad.is_empty(), "lines that are not JSON: {:?}", log.bad);
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The handshake callback: only Centrifugo's WebSocket path is served.
// The error type is tungstenite's `Callback` signature.
#[allow(clippy::result_large_err)]
fn check_path(req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() == "/connection/websocket" {
        Ok(resp)
    } else {
        let mut refusal = ErrorResponse::new(Some("not found".to_owned()));
        *refusal.status_mut() = tungstenite::http::StatusCode::NOT_FOUND;
        Err(refusal)
    }
}

fn serve(n: usize, stream: TcpStream, stop: &AtomicBool, log: &Mutex<Log>) {
    let lock = || log.lock().unwrap_or_else(|e| e.into_inner());
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut ws = match tungstenite::accept_hdr(stream, check_path) {
        Ok(ws) => ws,
        Err(_) => {
            lock().rejected += 1;
            return;
        }
    };
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let client = format!("c{n}");
    let mut clean = false;
    while !stop.load(Ordering::Relaxed) {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let mut out = Vec::new();
                // Commands may come newline-batched in one frame.
                for line in text.as_str().split('\n').filter(|l| !l.trim().is_empty()) {
                    let Ok(cmd) = serde_json::from_str::<Value>(line) else {
                        lock().bad.push(line.to_owned());
                        continue;
                    };
                    answer(&client, &cmd, &mut out);
                    lock().commands.push((n, cmd));
                }
                if !out.is_empty() {
                    // Replies go back batched the same way.
                    let frame: Vec<String> = out.iter().map(Value::to_string).collect();
                    if ws
                        .send(Message::Text(Utf8Bytes::from(frame.join("\n"))))
                        .is_err()
                    {
                        break;
                    }
                }
            }
            Ok(Message::Close(_)) => clean = true,
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    lock().ended.push((n, clean));
}

fn answer(client: &str, cmd: &Value, out: &mut Vec<Value>) {
    // A pong ({}) or a fire-and-forget `send` has no id and gets no reply.
    let Some(id) = cmd.get("id").and_then(Value::as_u64) else {
        return;
    };
    let denied = json!({"id": id, "error": {"code": 103, "message": "permission denied"}});
    let channel = |op: &str| cmd[op]["channel"].as_str().unwrap_or_default().to_owned();
    let reply = if let Some(connect) = cmd.get("connect") {
        if connect["token"] == "expired" {
            json!({"id": id, "error": {"code": 109, "message": "token expired"}})
        } else {
            json!({"id": id, "connect": {"client": client, "ping": 25, "pong": true,
                                         "subs": {"srv:news": {}}}})
        }
    } else if let Some(sub) = cmd.get("subscribe") {
        let ch = channel("subscribe");
        if ch.starts_with("room:") && sub["join_leave"] == true {
            // Someone joins and leaves right after the subscribe reply.
            out.push(json!({"id": id, "subscribe": {}}));
            let info = json!({"user": "u2", "client": "c9", "conn_info": {"name": "B"}});
            out.push(json!({"push": {"channel": ch, "join": {"info": info}}}));
            json!({"push": {"channel": ch, "leave": {"info": info}}})
        } else if ch.starts_with("denied:") {
            denied
        } else if ch.starts_with("pos:") && sub["recover"] == true {
            json!({"id": id, "subscribe": {"recoverable": true, "positioned": true,
                "epoch": sub["epoch"], "offset": sub["offset"],
                "was_recovering": true, "recovered": true}})
        } else if ch.starts_with("pos:") {
            json!({"id": id, "subscribe": {"recoverable": true, "positioned": true,
                                           "epoch": "ep1", "offset": 7}})
        } else {
            json!({"id": id, "subscribe": {}})
        }
    } else if let Some(publish) = cmd.get("publish") {
        let ch = channel("publish");
        if ch.starts_with("denied:") {
            denied
        } else {
            out.push(json!({"id": id, "publish": {}}));
            json!({"push": {"channel": ch, "pub": {"data": publish["data"],
                                                   "info": {"user": "", "client": client}}}})
        }
    } else if cmd.get("unsubscribe").is_some() {
        json!({"id": id, "unsubscribe": {}})
    } else if cmd.get("presence").is_some() {
        json!({"id": id, "presence": {"presence": {
            client: {"user": "u1", "client": client, "conn_info": {"name": "A"}}}}})
    } else if cmd.get("presence_stats").is_some() {
        json!({"id": id, "presence_stats": {"num_clients": 1, "num_users": 1}})
    } else if cmd.get("history").is_some() {
        json!({"id": id, "history": {"epoch": "ep1", "offset": 4, "publications": [
            {"data": {"n": 1}, "offset": 3},
            {"data": {"n": 2}, "offset": 4, "tags": {"k": "v"}}]}})
    } else if let Some(rpc) = cmd.get("rpc") {
        if rpc["method"] == "drop-news" {
            // The server ends the server-side subscription.
            out.push(json!({"id": id, "rpc": {}}));
            json!({"push": {"channel": "srv:news",
                            "unsubscribe": {"code": 2000, "reason": "server unsubscribe"}}})
        } else {
            json!({"id": id, "rpc": {"data": {"method": rpc["method"], "echo": rpc["data"]}}})
        }
    } else {
        json!({"id": id, "error": {"code": 104, "message": "method not found"}})
    };
    out.push(reply);
}
