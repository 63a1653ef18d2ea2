//! Raw clients of Centrifugo's bidirectional protocol (JSON) at
//! `/connection/websocket`, written from the wire up (sync `tungstenite`),
//! for what the SDKs never send: malformed or misplaced commands, batches,
//! binary frames, clients that do not answer pings. And [`NodeOnPort`]: a
//! node on a chosen port, so a test can restart a node where its clients
//! reconnect.
//!
//! A server frame may carry several JSON objects, one per line; each is
//! classified as a reply (it has an `id`), a push (`push`) or a ping (`{}`).
//! Replies and pushes read while waiting for something else are kept, so
//! none is lost between calls. Pings are answered with `{}` (the pong)
//! unless [`CfClient::set_auto_pong`] says not to, and counted.

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocket;
use tungstenite::{Message, Utf8Bytes};

use crate::{CLOSE_TIMEOUT, Event, HttpResponse, Runtime, TIMEOUT, http_get, http_request};

/// The path that selects Centrifugo's protocol.
pub const CF_PATH: &str = "/connection/websocket";

/// `ws://addr/connection/websocket`, the URL an SDK connects to.
pub fn cf_url(addr: SocketAddr) -> String {
    format!("ws://{addr}{CF_PATH}")
}

/// Sends a WebSocket upgrade request for `/connection/websocket` offering
/// `subprotocols` (as one `Sec-WebSocket-Protocol` header; none: no header)
/// over raw TCP, and returns the response, read until the server closes.
/// Meant for a refused upgrade: after a `101` the server keeps the socket
/// open (use [`CfClient::open_offering`] for those).
pub fn upgrade_request(addr: SocketAddr, subprotocols: &[&str]) -> HttpResponse {
    let mut req = format!(
        "GET {CF_PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    if !subprotocols.is_empty() {
        req.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            subprotocols.join(", ")
        ));
    }
    req.push_str("\r\n");
    http_request(addr, req.as_bytes())
}

/// A blocking client of the Centrifugo JSON protocol. Every wait is bounded
/// by [`TIMEOUT`] unless given its own deadline; a timeout panics.
pub struct CfClient {
    ws: WebSocket<TcpStream>,
    addr: SocketAddr,
    next_id: u32,
    replies: VecDeque<Value>,
    pushes: VecDeque<Value>,
    auto_pong: bool,
    pings: usize,
    subprotocol: Option<String>,
    client_id: Option<String>,
    connect_result: Option<Value>,
}

impl CfClient {
    /// Opens a WebSocket to `/connection/websocket` offering no
    /// subprotocol; sends nothing.
    pub fn open(addr: SocketAddr) -> CfClient {
        CfClient::open_offering(addr, &[])
    }

    /// Opens a WebSocket offering `subprotocols` (none: no header); the
    /// handshake must succeed. [`CfClient::subprotocol`] says what the
    /// server chose (tungstenite checks it is one of those offered).
    pub fn open_offering(addr: SocketAddr, subprotocols: &[&str]) -> CfClient {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        let mut req = cf_url(addr)
            .into_client_request()
            .expect("a valid WebSocket URL");
        if !subprotocols.is_empty() {
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_str(&subprotocols.join(", ")).expect("a header value"),
            );
        }
        let (ws, response) = tungstenite::client(req, stream)
            .unwrap_or_else(|e| panic!("WebSocket handshake with {addr}{CF_PATH}: {e}"));
        let subprotocol = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().unwrap_or("<not ASCII>").to_string());
        CfClient {
            ws,
            addr,
            next_id: 1,
            replies: VecDeque::new(),
            pushes: VecDeque::new(),
            auto_pong: true,
            pings: 0,
            subprotocol,
            client_id: None,
            connect_result: None,
        }
    }

    /// Opens a WebSocket and sends `connect`; panics unless it succeeds.
    pub fn connect(addr: SocketAddr) -> CfClient {
        let mut c = CfClient::open(addr);
        c.handshake();
        c
    }

    /// Sends `connect` (no token) and waits for its result.
    pub fn handshake(&mut self) -> Value {
        let result = self.ok("connect", json!({"name": "roomcast-tests"}));
        let client = result["client"]
            .as_str()
            .unwrap_or_else(|| panic!("connect result without a client id: {result}"))
            .to_string();
        assert!(!client.is_empty(), "empty client id: {result}");
        self.client_id = Some(client);
        self.connect_result = Some(result.clone());
        result
    }

    /// The client id the connect reply gave.
    pub fn client_id(&self) -> &str {
        self.client_id.as_deref().expect("connected")
    }

    /// The connect reply's result.
    pub fn connect_result(&self) -> &Value {
        self.connect_result.as_ref().expect("connected")
    }

    /// The subprotocol the server echoed in its `101`, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    pub fn peer(&self) -> SocketAddr {
        self.addr
    }

    /// Whether server pings (`{}`) are answered with `{}` (default: yes).
    pub fn set_auto_pong(&mut self, on: bool) {
        self.auto_pong = on;
    }

    /// Server pings seen so far.
    pub fn pings(&self) -> usize {
        self.pings
    }

    /// The next command id [`CfClient::command`] will use.
    pub fn next_id(&self) -> u32 {
        self.next_id
    }

    /// Takes a command id for a command built by hand.
    pub fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends a text frame as it is.
    pub fn send_text(&mut self, text: &str) {
        if let Err(e) = self.try_send(Message::Text(Utf8Bytes::from(text))) {
            panic!("send to {}: {e}", self.addr);
        }
    }

    /// Sends a binary frame.
    pub fn send_binary(&mut self, data: &[u8]) {
        if let Err(e) = self.try_send(Message::binary(data.to_vec())) {
            panic!("send to {}: {e}", self.addr);
        }
    }

    /// Sends a message; a failure (e.g. the server closed) is returned.
    pub fn try_send(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        self.ws.get_mut().set_write_timeout(Some(TIMEOUT)).unwrap();
        self.ws.send(msg)
    }

    /// The line `{"id":N,"<method>":body}` with a fresh id; returns both.
    pub fn line(&mut self, method: &str, body: Value) -> (u32, String) {
        let id = self.take_id();
        let mut cmd = serde_json::Map::new();
        cmd.insert("id".into(), id.into());
        cmd.insert(method.into(), body);
        (id, Value::Object(cmd).to_string())
    }

    /// Sends `{"id":N,"<method>":body}` as one frame; returns N.
    pub fn command(&mut self, method: &str, body: Value) -> u32 {
        let (id, line) = self.line(method, body);
        self.send_text(&line);
        id
    }

    /// Sends a command and waits for its reply: `Ok(result)` (the value
    /// under the method's name, `{}` if absent) or `Err(error)`.
    pub fn call(&mut self, method: &str, body: Value) -> Result<Value, Value> {
        let id = self.command(method, body);
        self.result(id, method)
    }

    /// The reply to command `id` (of `method`) as [`CfClient::call`] gives it.
    pub fn result(&mut self, id: u32, method: &str) -> Result<Value, Value> {
        let reply = self.reply(id);
        if let Some(e) = reply.get("error") {
            return Err(e.clone());
        }
        Ok(reply.get(method).cloned().unwrap_or_else(|| json!({})))
    }

    /// [`CfClient::call`], panicking on an error reply.
    pub fn ok(&mut self, method: &str, body: Value) -> Value {
        let shown = body.to_string();
        self.call(method, body)
            .unwrap_or_else(|e| panic!("{method} {shown} to {}: error {e}", self.addr))
    }

    /// [`CfClient::call`], panicking unless the reply is an error; returns it.
    pub fn err(&mut self, method: &str, body: Value) -> Value {
        let shown = body.to_string();
        match self.call(method, body) {
            Ok(r) => panic!(
                "{method} {shown} to {}: succeeded ({r}), expected an error",
                self.addr
            ),
            Err(e) => e,
        }
    }

    /// `subscribe` to `channel`; panics on an error.
    pub fn subscribe(&mut self, channel: &str) -> Value {
        self.ok("subscribe", json!({"channel": channel}))
    }

    /// `unsubscribe` from `channel`; panics on an error.
    pub fn unsubscribe(&mut self, channel: &str) -> Value {
        self.ok("unsubscribe", json!({"channel": channel}))
    }

    /// `publish` `data` to `channel`; panics on an error.
    pub fn publish(&mut self, channel: &str, data: Value) -> Value {
        self.ok("publish", json!({"channel": channel, "data": data}))
    }

    /// The whole reply to command `id`, waiting for it.
    pub fn reply(&mut self, id: u32) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(i) = self.replies.iter().position(|r| r["id"] == id) {
                return self.replies.remove(i).expect("present");
            }
            self.pump(deadline, &format!("the reply to command {id}"));
        }
    }

    /// The next push (`{"push":{…}}`'s inner object), waiting for it.
    pub fn recv_push(&mut self) -> Value {
        self.recv_push_within(TIMEOUT)
            .unwrap_or_else(|| panic!("no push from {} within {TIMEOUT:?}", self.addr))
    }

    /// The next push, or `None` if none comes within `timeout`.
    pub fn recv_push_within(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.pushes.pop_front() {
                return Some(p);
            }
            if !self
                .pump_until(deadline)
                .unwrap_or_else(|e| panic!("waiting for a push from {}: got {e:?}", self.addr))
            {
                return None;
            }
        }
    }

    /// The next publication push on `channel`: its `pub` object
    /// (`{"data":…,"info":…}`). Panics on a push of another kind or channel.
    pub fn recv_publication(&mut self, channel: &str) -> Value {
        let push = self.recv_push();
        assert_eq!(
            push["channel"], channel,
            "expected a publication on {channel:?}, got {push}"
        );
        push.get("pub")
            .cloned()
            .unwrap_or_else(|| panic!("expected a publication on {channel:?}, got {push}"))
    }

    /// Panics if a push arrives within `timeout` (or is already there).
    pub fn expect_no_push(&mut self, timeout: Duration) {
        if let Some(p) = self.recv_push_within(timeout) {
            panic!("unexpected push from {}: {p}", self.addr);
        }
    }

    /// Replies received and not yet taken.
    pub fn unclaimed_replies(&self) -> &VecDeque<Value> {
        &self.replies
    }

    /// Reads and answers pings for `period`, keeping replies and pushes;
    /// panics if the connection ends meanwhile.
    pub fn idle(&mut self, period: Duration) {
        let deadline = Instant::now() + period;
        loop {
            match self.pump_until(deadline) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => panic!("{} ended the connection while idle: {e:?}", self.addr),
            }
        }
    }

    /// Waits for a close frame with `code` and `reason` (skipping replies,
    /// pushes and pings before it, which are kept), then lets the close
    /// handshake finish: the server must end the TCP stream, and then this
    /// client ends its side. Returns how long the close took to come. The
    /// client is of no further use but for what it kept.
    pub fn expect_close(&mut self, code: u16, reason: &str) -> Duration {
        self.expect_close_within(code, reason, TIMEOUT)
    }

    /// [`CfClient::expect_close`] with its own timeout.
    pub fn expect_close_within(&mut self, code: u16, reason: &str, timeout: Duration) -> Duration {
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            match self.pump_until(deadline) {
                Ok(true) => continue,
                Ok(false) => panic!(
                    "no close {code} {reason:?} from {} within {timeout:?}",
                    self.addr
                ),
                Err(Event::Close(Some((c, r)))) => {
                    assert_eq!(
                        (c, r.as_str()),
                        (code, reason),
                        "close frame from {}",
                        self.addr
                    );
                    break;
                }
                Err(other) => panic!(
                    "expected close {code} {reason:?} from {}, got {other:?}",
                    self.addr
                ),
            }
        }
        let took = started.elapsed();
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            match self.read_until(deadline) {
                Some(Err(_)) => break,
                Some(Ok(_)) => continue,
                None => panic!(
                    "{} did not end the TCP stream after the close handshake",
                    self.addr
                ),
            }
        }
        // The server ended its side; end ours, as dropping the client would
        // (the server reads until then).
        let _ = self.ws.get_ref().shutdown(Shutdown::Both);
        took
    }

    /// Reads one WebSocket message and files what it carries. `Ok(true)`:
    /// something was read; `Ok(false)`: `deadline` passed first; `Err`: the
    /// connection ended (a close frame, or [`Event::Gone`]), or the server
    /// sent a binary frame ([`Event::Binary`]).
    pub fn pump_until(&mut self, deadline: Instant) -> Result<bool, Event> {
        let msg = match self.read_until(deadline) {
            None => return Ok(false),
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(Event::Gone(e.to_string())),
        };
        match msg {
            Message::Text(t) => {
                self.take_text(t.as_str());
                Ok(true)
            }
            Message::Binary(b) => Err(Event::Binary(b.to_vec())),
            Message::Close(f) => {
                Err(Event::Close(f.map(|f| {
                    (u16::from(f.code), f.reason.as_str().to_string())
                })))
            }
            _ => Ok(true),
        }
    }

    fn pump(&mut self, deadline: Instant, what: &str) {
        match self.pump_until(deadline) {
            Ok(true) => {}
            Ok(false) => panic!(
                "{what} did not come from {} within {TIMEOUT:?}; unclaimed replies {:?}, pushes {:?}",
                self.addr, self.replies, self.pushes
            ),
            Err(e) => panic!("waiting for {what} from {}: got {e:?}", self.addr),
        }
    }

    fn take_text(&mut self, text: &str) {
        for line in text.split('\n') {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                panic!("{} sent a line that is not JSON ({e}): {line:?}", self.addr)
            });
            let Some(obj) = v.as_object() else {
                panic!("{} sent JSON that is not an object: {line}", self.addr);
            };
            if obj.is_empty() {
                self.pings += 1;
                if self.auto_pong {
                    let _ = self.try_send(Message::text("{}"));
                }
            } else if obj.contains_key("id") {
                self.replies.push_back(v);
            } else if let Some(p) = obj.get("push") {
                self.pushes.push_back(p.clone());
            } else {
                panic!(
                    "{} sent an object that is neither a reply, a push nor a ping: {line}",
                    self.addr
                );
            }
        }
    }

    fn read_until(&mut self, deadline: Instant) -> Option<tungstenite::Result<Message>> {
        crate::client::read_until(&mut self.ws, deadline)
    }
}

enum Handle {
    Tokio(roomcast_tokio::Running),
    #[cfg(feature = "smol")]
    Smol(roomcast_smol::Running),
}

/// A node on a port of the test's choosing (127.0.0.1), so that a new node
/// can take the place of one that stopped. Dropping it shuts it down.
pub struct NodeOnPort {
    addr: SocketAddr,
    handle: Option<Handle>,
}

impl NodeOnPort {
    /// Starts a node listening on 127.0.0.1:`port`, with `--redis url` if
    /// given and the extra flags; retries while the port is still taken
    /// (a node that just stopped), for up to [`TIMEOUT`]. With Redis, waits
    /// until `/healthz` says 200.
    pub fn start(rt: Runtime, port: u16, redis: Option<&str>, extra: &[&str]) -> NodeOnPort {
        let mut args: Vec<String> = vec!["roomcast".into()];
        if let Some(url) = redis {
            args.push("--redis".into());
            args.push(url.into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + TIMEOUT;
        let handle = loop {
            let started = match rt {
                Runtime::Tokio => {
                    let mut cli = roomcast_tokio::Cli::try_parse_from(&args)
                        .unwrap_or_else(|e| panic!("bad flags {args:?}: {e}"));
                    cli.listen = listen;
                    roomcast_tokio::start(cli).map(Handle::Tokio)
                }
                #[cfg(feature = "smol")]
                Runtime::Smol => {
                    let mut cli = roomcast_smol::Cli::try_parse_from(&args)
                        .unwrap_or_else(|e| panic!("bad flags {args:?}: {e}"));
                    cli.listen = listen;
                    roomcast_smol::start(cli).map(Handle::Smol)
                }
            };
            match started {
                Ok(h) => break h,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("start a {} node on {listen}: {e}", rt.name()),
            }
        };
        let node = NodeOnPort {
            addr: listen,
            handle: Some(handle),
        };
        if redis.is_some() {
            crate::wait_until("the node on a chosen port is healthy", TIMEOUT, || {
                http_get(node.addr, "/healthz").status == 200
            });
        }
        node
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Graceful shutdown; returns what the runtime's `shutdown` returned.
    pub fn shutdown(mut self) -> io::Result<()> {
        match self.handle.take().expect("running") {
            Handle::Tokio(r) => r.shutdown(),
            #[cfg(feature = "smol")]
            Handle::Smol(r) => r.shutdown(),
        }
    }
}

impl Drop for NodeOnPort {
    fn drop(&mut self) {
        drop(self.handle.take());
    }
}
