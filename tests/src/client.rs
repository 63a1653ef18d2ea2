//! The blocking WebSocket client.

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::error::ProtocolError;
use tungstenite::protocol::WebSocket;
use tungstenite::{Message, Utf8Bytes};

use crate::{TIMEOUT, unique};

/// What a client saw next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame: code and reason (`None` if it had no payload).
    Close(Option<(u16, String)>),
    /// The connection ended without (further) frames: EOF, reset, error.
    Gone(String),
}

/// How long a close handshake may take once this client has its part done:
/// the server's reply (or its end of the stream) must come within it.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The start of every `sync` marker; `recv` never returns one.
const SYNC_MARKER: &str = "\u{1}sync-marker";

/// A blocking WebSocket client. Every operation has a deadline.
pub struct Client {
    ws: WebSocket<TcpStream>,
    /// Text messages read while waiting for something else.
    pending: VecDeque<String>,
    addr: SocketAddr,
}

impl Client {
    /// Connects to `ws://addr/` and completes the handshake.
    pub fn connect(addr: SocketAddr) -> Client {
        Client::connect_path(addr, "/")
    }

    /// Connects to `ws://addr{path}`.
    pub fn connect_path(addr: SocketAddr, path: &str) -> Client {
        let stream = TcpStream::connect_timeout(&addr, TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        let (ws, _response) = tungstenite::client(format!("ws://{addr}{path}"), stream)
            .unwrap_or_else(|e| panic!("WebSocket handshake with {addr}: {e}"));
        Client {
            ws,
            pending: VecDeque::new(),
            addr,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.addr
    }

    /// The client's TCP socket (for raw access).
    pub fn tcp(&self) -> &TcpStream {
        self.ws.get_ref()
    }

    fn write(&mut self, msg: Message) {
        if let Err(e) = self.try_write(msg) {
            panic!("send to {}: {e}", self.addr);
        }
    }

    /// Sends a message; a failure (e.g. the server already closed) is returned.
    pub fn try_write(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        self.ws.get_mut().set_write_timeout(Some(TIMEOUT)).unwrap();
        self.ws.send(msg)
    }

    /// Sends a raw text frame.
    pub fn send_text(&mut self, text: &str) {
        self.write(Message::text(text));
    }

    /// Sends a raw binary frame.
    pub fn send_binary(&mut self, data: &[u8]) {
        self.write(Message::binary(data.to_vec()));
    }

    /// Sends a JSON value as one text frame.
    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// `{"type":"SUBSCRIBE","room":room}`
    pub fn subscribe(&mut self, room: &str) {
        self.send_json(&json!({"type": "SUBSCRIBE", "room": room}));
    }

    /// `{"type":"UNSUBSCRIBE","room":room}`
    pub fn unsubscribe(&mut self, room: &str) {
        self.send_json(&json!({"type": "UNSUBSCRIBE", "room": room}));
    }

    /// `{"type":"sendMessage","roomId":room,"message":message}`; a `&str`
    /// becomes a JSON string, a `Value` is sent as it is.
    pub fn send(&mut self, room: &str, message: impl Into<Value>) {
        let message: Value = message.into();
        self.send_json(&json!({"type": "sendMessage", "roomId": room, "message": message}));
    }

    /// Joins `room` and returns once the node has processed the join
    /// (see [`sync`](Self::sync)).
    pub fn join(&mut self, room: &str) {
        self.subscribe(room);
        self.sync();
    }

    /// A barrier: returns once the node has processed every frame this
    /// client sent before. It joins a private room, sends itself a marker
    /// there until it comes back (each connection's frames are handled in
    /// order, and a node subscribes before it publishes), then leaves the
    /// room again. Messages of other rooms read meanwhile are kept for
    /// [`recv`](Self::recv).
    pub fn sync(&mut self) {
        let room = unique("sync");
        let marker = unique(SYNC_MARKER);
        self.subscribe(&room);
        let deadline = Instant::now() + TIMEOUT;
        'outer: loop {
            self.send(&room, marker.as_str());
            // Resend if a broker outage lost the marker.
            let retry = (Instant::now() + Duration::from_secs(2)).min(deadline);
            loop {
                match self.next_event(retry) {
                    Some(Event::Text(t)) if t == marker => break 'outer,
                    Some(Event::Text(t)) if t.starts_with(SYNC_MARKER) => {}
                    Some(Event::Text(t)) => self.pending.push_back(t),
                    Some(other) => panic!("sync with {}: got {other:?}", self.addr),
                    None if Instant::now() >= deadline => {
                        panic!("sync with {}: marker never came back", self.addr)
                    }
                    None => break,
                }
            }
        }
        self.unsubscribe(&room);
    }

    /// Reads the next event, or `None` when `deadline` passes first.
    pub fn next_event(&mut self, deadline: Instant) -> Option<Event> {
        loop {
            let event = match self.read_until(deadline)? {
                Ok(Message::Text(t)) => Event::Text(t.as_str().to_string()),
                Ok(Message::Binary(b)) => Event::Binary(b.to_vec()),
                Ok(Message::Close(f)) => {
                    Event::Close(f.map(|f| (u16::from(f.code), f.reason.as_str().to_string())))
                }
                Ok(_) => continue,
                Err(e) => Event::Gone(e.to_string()),
            };
            return Some(event);
        }
    }

    /// The next thing the WebSocket library reads (a message, a control
    /// frame, or the error that ends the connection), or `None` when
    /// `deadline` passes first.
    fn read_until(&mut self, deadline: Instant) -> Option<tungstenite::Result<Message>> {
        read_until(&mut self.ws, deadline)
    }

    /// The next text message within [`TIMEOUT`]; panics on anything else.
    pub fn recv(&mut self) -> String {
        self.recv_within(TIMEOUT)
            .unwrap_or_else(|| panic!("no message from {} within {TIMEOUT:?}", self.addr))
    }

    /// The next text message, or `None` if none comes within `timeout`;
    /// panics on a close or a broken connection.
    pub fn recv_within(&mut self, timeout: Duration) -> Option<String> {
        if let Some(t) = self.pending.pop_front() {
            return Some(t);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_event(deadline) {
                // A late duplicate of a `sync` marker.
                Some(Event::Text(t)) if t.starts_with(SYNC_MARKER) => continue,
                Some(Event::Text(t)) => return Some(t),
                Some(other) => panic!("expected a message from {}, got {other:?}", self.addr),
                None => return None,
            }
        }
    }

    /// Receives `n` messages.
    pub fn recv_n(&mut self, n: usize) -> Vec<String> {
        (0..n).map(|_| self.recv()).collect()
    }

    /// Receives until `want` arrives, skipping other messages that `skip`
    /// accepts; panics on any other message.
    pub fn recv_skipping(&mut self, want: &str, skip: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = self
                .recv_within(left)
                .unwrap_or_else(|| panic!("{want:?} never arrived from {}", self.addr));
            if got == want {
                return;
            }
            assert!(
                skip(&got),
                "expected {want:?} from {}, got {got:?}",
                self.addr
            );
        }
    }

    /// Asserts that no message arrives within `timeout`.
    pub fn expect_silence(&mut self, timeout: Duration) {
        if let Some(t) = self.recv_within(timeout) {
            panic!("unexpected message from {}: {t:?}", self.addr);
        }
    }

    /// Waits for a close frame with `code` and `reason` (skipping messages
    /// that were queued before it), then lets the close handshake finish.
    pub fn expect_close(mut self, code: u16, reason: &str) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.next_event(deadline) {
                Some(Event::Text(_) | Event::Binary(_)) => continue,
                Some(Event::Close(Some((c, r)))) => {
                    assert_eq!(
                        (c, r.as_str()),
                        (code, reason),
                        "close frame from {}",
                        self.addr
                    );
                    break;
                }
                Some(other) => panic!(
                    "expected close {code} {reason:?} from {}, got {other:?}",
                    self.addr
                ),
                None => panic!(
                    "no close {code} {reason:?} from {} within {TIMEOUT:?}",
                    self.addr
                ),
            }
        }
        // Sends our close reply and reads until the server closes the TCP,
        // which it must do once the handshake is done (RFC 6455 §7.1.1), not
        // when its --shutdown-grace runs out.
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            match self.next_event(deadline) {
                Some(Event::Gone(_)) => break,
                Some(_) => continue,
                None => panic!(
                    "{} did not end the TCP stream after the close handshake",
                    self.addr
                ),
            }
        }
    }

    /// Waits until the connection ends (a close frame or the TCP going away),
    /// discarding messages; returns the close frame if one came.
    pub fn wait_closed(mut self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_event(deadline) {
                Some(Event::Text(_) | Event::Binary(_)) => continue,
                Some(Event::Close(f)) => return f,
                Some(Event::Gone(_)) => return None,
                None => panic!("connection to {} still open after {timeout:?}", self.addr),
            }
        }
    }

    /// A normal close handshake from the client side: sends a close frame,
    /// then reads (discarding what the server sent before it saw the close)
    /// the server's close reply, then until the server ends the TCP stream,
    /// which it must do once the handshake is done (RFC 6455 §7.1.1).
    /// Panics, saying how far the handshake got, if the stream ends without
    /// the reply, has not ended within [`CLOSE_TIMEOUT`], or breaks instead
    /// (a reset, a protocol error).
    pub fn close(mut self) {
        let addr = self.addr;
        if let Err(e) = self.ws.close(None) {
            panic!("send a close frame to {addr}: {e}");
        }
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        let mut answered = false;
        loop {
            match self.read_until(deadline) {
                Some(Ok(Message::Close(_))) => answered = true,
                Some(Ok(_)) => {}
                // The library's word for: the close handshake is done and the
                // peer ended the stream (EOF, or a reset once nothing more
                // may be read).
                Some(Err(tungstenite::Error::ConnectionClosed)) => return,
                // EOF before a close reply: the server must echo the close
                // frame before it ends the stream (RFC 6455 §5.5.1).
                Some(Err(tungstenite::Error::Protocol(
                    ProtocolError::ResetWithoutClosingHandshake,
                ))) => panic!("{addr} ended the TCP stream without answering the close frame"),
                Some(Err(e)) if !answered => {
                    panic!("{addr} broke the connection instead of closing it: {e}")
                }
                Some(Err(e)) => panic!("reading from {addr} after its close reply: {e}"),
                None if !answered => panic!(
                    "{addr} neither answered the close frame nor ended the TCP stream \
                     within {CLOSE_TIMEOUT:?}"
                ),
                None => panic!(
                    "{addr} answered the close frame but did not end the TCP stream \
                     within {CLOSE_TIMEOUT:?}"
                ),
            }
        }
    }

    /// Drops the TCP connection without a close frame.
    pub fn drop_abruptly(self) {
        let _ = self.ws.get_ref().shutdown(Shutdown::Both);
    }

    /// Sends a text frame of `len` bytes (`x` repeated), e.g. one over the
    /// node's frame limit; the node may close before reading all of it, so
    /// a failure is returned rather than raised.
    pub fn send_raw_text_len(&mut self, len: usize) -> Result<(), tungstenite::Error> {
        let text: String = std::iter::repeat_n('x', len).collect();
        self.try_write(Message::Text(Utf8Bytes::from(text)))
    }
}

/// The next thing `ws` reads (a message, a control frame, or the error that
/// ends the connection), or `None` when `deadline` passes first. Shared by
/// the test clients of both protocols.
pub(crate) fn read_until(
    ws: &mut WebSocket<TcpStream>,
    deadline: Instant,
) -> Option<tungstenite::Result<Message>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        ws.get_mut().set_read_timeout(Some(left)).unwrap();
        match ws.read() {
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            r => return Some(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpListener};
    use std::panic::AssertUnwindSafe;
    use std::sync::mpsc;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use tungstenite::Message;

    use super::{CLOSE_TIMEOUT, Client};
    use crate::TIMEOUT;

    /// What the test server does once it has read the client's close frame.
    #[derive(Clone, Copy, PartialEq)]
    enum AfterClose {
        /// Sends the close reply and closes the TCP connection.
        Ends,
        /// Sends the close reply and keeps the TCP connection open.
        HoldsOpen,
        /// Neither replies nor closes the TCP connection.
        HoldsOpenWithoutReply,
        /// Closes the TCP connection without a reply.
        EndsWithoutReply,
    }

    /// A one-connection WebSocket server (std::net + tungstenite) that says
    /// "hello" and then waits for the client's close frame. Dropping the
    /// sender lets a server that holds the connection open go.
    fn server(after: AfterClose) -> (SocketAddr, mpsc::Sender<()>, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let (release, released) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            stream.set_write_timeout(Some(TIMEOUT)).unwrap();
            let mut ws = tungstenite::accept(stream).expect("server handshake");
            // Unread by the client when it closes: close() must skip it.
            ws.send(Message::text("hello")).expect("send hello");
            loop {
                match ws.read() {
                    // The reply is queued; the next read would write it.
                    Ok(Message::Close(_))
                        if matches!(
                            after,
                            AfterClose::HoldsOpenWithoutReply | AfterClose::EndsWithoutReply
                        ) =>
                    {
                        break;
                    }
                    Ok(_) => {}
                    // The close reply is written.
                    Err(tungstenite::Error::ConnectionClosed) => break,
                    Err(e) => panic!("test server: {e}"),
                }
            }
            if matches!(
                after,
                AfterClose::HoldsOpen | AfterClose::HoldsOpenWithoutReply
            ) {
                let _ = released.recv_timeout(Duration::from_secs(60));
            }
            // Without a reply: the queued reply is never written; only FIN.
            drop(ws);
        });
        (addr, release, thread)
    }

    /// Runs `close()` against a server that behaves as `after` says;
    /// returns its panic message (`None` if it returned) and how long it
    /// took.
    fn close_against(after: AfterClose) -> (Option<String>, Duration) {
        let (addr, release, thread) = server(after);
        let client = Client::connect(addr);
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| client.close()));
        let took = started.elapsed();
        drop(release);
        thread.join().expect("the test server panicked");
        let message = outcome.err().map(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        });
        (message, took)
    }

    #[test]
    fn close_returns_once_the_server_ends_the_stream() {
        let (failure, _) = close_against(AfterClose::Ends);
        assert_eq!(failure, None);
    }

    #[test]
    fn close_fails_when_the_server_ends_the_stream_without_a_reply() {
        let (failure, took) = close_against(AfterClose::EndsWithoutReply);
        let failure = failure.expect("close() returned though the server never answered");
        assert!(
            failure.contains("ended the TCP stream without answering the close frame"),
            "{failure}"
        );
        assert!(took < CLOSE_TIMEOUT, "waited {took:?}");
    }

    #[test]
    fn close_fails_when_the_server_never_ends_the_stream() {
        let (failure, took) = close_against(AfterClose::HoldsOpen);
        let failure = failure.expect("close() returned though the TCP stream stayed open");
        assert!(
            failure.contains("answered the close frame but did not end the TCP stream"),
            "{failure}"
        );
        assert!(took >= CLOSE_TIMEOUT, "gave up after {took:?}");
        assert!(took < CLOSE_TIMEOUT + TIMEOUT, "waited {took:?}");
    }

    #[test]
    fn close_fails_when_the_server_neither_answers_nor_ends_the_stream() {
        let (failure, took) = close_against(AfterClose::HoldsOpenWithoutReply);
        let failure = failure.expect("close() returned though the TCP stream stayed open");
        assert!(
            failure.contains("neither answered the close frame nor ended the TCP stream"),
            "{failure}"
        );
        assert!(took < CLOSE_TIMEOUT + TIMEOUT, "waited {took:?}");
    }
}
