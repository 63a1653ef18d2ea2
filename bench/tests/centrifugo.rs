//! `roomcast-load --protocol centrifugo` end to end against a small
//! Centrifugo-protocol server written here, which batches several replies
//! and pushes into one frame, pings every 200 ms and closes 3012 a client
//! that leaves a ping unanswered for 2 s, and can be told to answer some
//! publishes with an error. Real processes and sockets on 127.0.0.1, every
//! wait bounded.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    pings: AtomicUsize,
    pongs: AtomicUsize,
    /// Frames written with more than one line.
    batched_frames: AtomicUsize,
    no_pong_closes: AtomicUsize,
    /// Anything the client did that the protocol does not allow.
    violations: Mutex<Vec<String>>,
}

impl Seen {
    fn violation(&self, what: String) {
        self.violations.lock().unwrap().push(what);
    }
}

struct Mock {
    addr: String,
    seen: Arc<Seen>,
    /// Publishes whose number (1, 2, … over all connections) is a multiple
    /// of this get an error reply and are not delivered; 0: never.
    fail_every: usize,
    publishes: AtomicUsize,
    rooms: Mutex<HashMap<String, Vec<mpsc::UnboundedSender<String>>>>,
}

async fn start(fail_every: usize) -> Arc<Mock> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mock = Arc::new(Mock {
        addr: listener.local_addr().unwrap().to_string(),
        seen: Arc::default(),
        fail_every,
        publishes: AtomicUsize::new(0),
        rooms: Mutex::default(),
    });
    let m = mock.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(m.clone(), tcp));
        }
    });
    mock
}

/// The handshake: only /connection/websocket, and the JSON subprotocol is
/// confirmed when offered.
#[allow(clippy::result_large_err)]
fn handshake(seen: &Seen, req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() != "/connection/websocket" {
        seen.violation(format!("connected to {}", req.uri()));
        let mut e = ErrorResponse::new(Some("not found".into()));
        *e.status_mut() = StatusCode::NOT_FOUND;
        return Err(e);
    }
    let offered = req
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if offered.split(',').any(|p| p.trim() == "centrifuge-json") {
        resp.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("centrifuge-json"),
        );
    } else {
        seen.violation(format!("subprotocols offered: {offered:?}"));
    }
    Ok(resp)
}

// The handshake callback's error is tungstenite's response type.
#[allow(clippy::result_large_err)]
async fn serve(m: Arc<Mock>, tcp: TcpStream) {
    let seen = m.seen.clone();
    let Ok(ws) = async_tungstenite::tokio::accept_hdr_async(tcp, |req: &Request, resp| {
        handshake(&seen, req, resp)
    })
    .await
    else {
        return;
    };
    m.seen.connections.fetch_add(1, Ordering::Relaxed);
    let (mut tx, mut rx) = ws.split();
    let (out, mut queue) = mpsc::unbounded_channel::<String>();
    let (close_tx, mut close_rx) = mpsc::unbounded_channel::<(u16, &'static str)>();
    // The writer: everything queued goes out in one frame, one line each.
    let writer_seen = m.seen.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(first) = queue.recv() => {
                    let mut frame = first;
                    let mut lines = 1;
                    while lines < 50 {
                        let Ok(next) = queue.try_recv() else { break };
                        frame.push('\n');
                        frame.push_str(&next);
                        lines += 1;
                    }
                    if lines > 1 {
                        writer_seen.batched_frames.fetch_add(1, Ordering::Relaxed);
                    }
                    if tx.send(Message::text(frame)).await.is_err() {
                        return;
                    }
                }
                Some((code, reason)) = close_rx.recv() => {
                    let _ = tx
                        .send(Message::Close(Some(CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        })))
                        .await;
                    return;
                }
                else => return,
            }
        }
    });
    // The pinger: `{}` every 200 ms; unanswered for 2 s closes 3012.
    let unanswered: Arc<Mutex<Option<Instant>>> = Arc::default();
    {
        let (out, close, unanswered, seen) = (
            out.clone(),
            close_tx.clone(),
            unanswered.clone(),
            m.seen.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            tick.tick().await;
            loop {
                tick.tick().await;
                let since = *unanswered.lock().unwrap();
                if since.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
                    seen.no_pong_closes.fetch_add(1, Ordering::Relaxed);
                    let _ = close.send((3012, "no pong"));
                    return;
                }
                if out.send("{}".into()).is_err() {
                    return;
                }
                seen.pings.fetch_add(1, Ordering::Relaxed);
                unanswered.lock().unwrap().get_or_insert_with(Instant::now);
            }
        });
    }
    let mut connected = false;
    while let Some(Ok(msg)) = rx.next().await {
        let Message::Text(text) = msg else { continue };
        for line in text.as_str().split('\n').filter(|l| !l.trim().is_empty()) {
            let Ok(Value::Object(cmd)) = serde_json::from_str::<Value>(line) else {
                m.seen.violation(format!("not a JSON object: {line}"));
                let _ = close_tx.send((3501, "bad request"));
                return;
            };
            if cmd.is_empty() {
                m.seen.pongs.fetch_add(1, Ordering::Relaxed);
                *unanswered.lock().unwrap() = None;
                continue;
            }
            let id = cmd.get("id").and_then(Value::as_u64).unwrap_or(0);
            if id == 0 {
                m.seen.violation(format!("a command without an id: {line}"));
                continue;
            }
            if !connected && !cmd.contains_key("connect") {
                m.seen
                    .violation(format!("a command before connect: {line}"));
                let _ = close_tx.send((3501, "bad request"));
                return;
            }
            if let Some(c) = cmd.get("subscribe") {
                let room = c["channel"].as_str().unwrap_or_default().to_string();
                m.rooms
                    .lock()
                    .unwrap()
                    .entry(room)
                    .or_default()
                    .push(out.clone());
                let _ = out.send(format!(r#"{{"id":{id},"subscribe":{{}}}}"#));
            } else if let Some(p) = cmd.get("publish") {
                let n = m.publishes.fetch_add(1, Ordering::Relaxed) + 1;
                if m.fail_every > 0 && n.is_multiple_of(m.fail_every) {
                    let _ = out.send(format!(
                        r#"{{"id":{id},"error":{{"code":111,"message":"too many requests","temporary":true}}}}"#
                    ));
                    continue;
                }
                let room = p["channel"].as_str().unwrap_or_default();
                let push = format!(
                    r#"{{"push":{{"channel":{},"pub":{{"data":{},"info":{{"user":"","client":"mock"}}}}}}}}"#,
                    Value::from(room),
                    p["data"]
                );
                // The reply first, then the members' pushes.
                let _ = out.send(format!(r#"{{"id":{id},"publish":{{}}}}"#));
                for member in m.rooms.lock().unwrap().get(room).into_iter().flatten() {
                    let _ = member.send(push.clone());
                }
            } else if cmd.contains_key("connect") {
                if connected {
                    m.seen.violation("connect twice".into());
                }
                connected = true;
                let _ = out.send(format!(
                    r#"{{"id":{id},"connect":{{"client":"mock","version":"0","ping":1,"pong":true}}}}"#
                ));
            } else {
                m.seen.violation(format!("unexpected command: {line}"));
            }
        }
    }
}

/// Runs roomcast-load against the mock (without blocking the mock's runtime).
async fn load(mock: &Mock, extra: &[&str]) -> Value {
    let url = format!("ws://{}", mock.addr);
    let mut args: Vec<String> = [
        "--protocol",
        "centrifugo",
        "--nodes",
        &url,
        "--timeout",
        "30s",
        "--settle",
        "3s",
        "--threads",
        "2",
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_roomcast-load"))
            .args(&args)
            .output()
            .expect("run roomcast-load")
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn violations(m: &Mock) -> Vec<String> {
    m.seen.violations.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_pushes_pings_and_replies() {
    let m = start(0).await;
    // ~2 s at 400 messages/s: every connection sees several pings.
    let r = load(
        &m,
        &[
            "-c", "30", "-r", "3", "-p", "2", "-m", "800", "--rate", "400",
        ],
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["protocol"], "centrifugo");
    assert_eq!(r["expected"], 8000);
    assert_eq!(r["delivered"], 8000);
    assert_eq!(r["protocol_errors"], 0);
    assert_eq!(r["malformed"], 0);
    assert_eq!(violations(&m), Vec::<String>::new());
    let seen = &m.seen;
    assert_eq!(seen.connections.load(Ordering::Relaxed), 32);
    assert_eq!(seen.no_pong_closes.load(Ordering::Relaxed), 0);
    let (pings, pongs) = (
        seen.pings.load(Ordering::Relaxed),
        seen.pongs.load(Ordering::Relaxed),
    );
    assert!(pings >= 32 * 5, "{pings} pings");
    // Pings still in flight when the run ended may be unanswered.
    assert!(pongs + 2 * 32 >= pings, "{pongs} pongs to {pings} pings");
    assert!(seen.batched_frames.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_fast_as_the_window_allows() {
    let m = start(0).await;
    let r = load(
        &m,
        &[
            "-c",
            "40",
            "-r",
            "4",
            "-p",
            "2",
            "-m",
            "2000",
            "--window-deliveries",
            "200",
        ],
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["delivered"], 20_000);
    assert_eq!(
        (r["duplicates"].as_u64(), r["out_of_order"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(violations(&m), Vec::<String>::new());
    // With 200 deliveries in flight over 40 members, frames carry several pushes.
    assert!(m.seen.batched_frames.load(Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_answer_pings() {
    let m = start(0).await;
    let r = load(
        &m,
        &["--scenario", "idle", "-c", "20", "-r", "2", "--hold", "3s"],
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["disconnects"], 0, "{r}");
    assert_eq!(violations(&m), Vec::<String>::new());
    let seen = &m.seen;
    assert_eq!(seen.no_pong_closes.load(Ordering::Relaxed), 0);
    // 21 connections (20 subscribers and the prober) for 3 s at 5 pings/s.
    let pongs = seen.pongs.load(Ordering::Relaxed);
    assert!(pongs >= 21 * 10, "{pongs} pongs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_fail_the_run() {
    let m = start(50).await;
    let r = load(&m, &["-c", "10", "-r", "2", "-p", "1", "-m", "200"]).await;
    assert_eq!(r["ok"], false, "{r}");
    let errors = r["protocol_errors"].as_u64().unwrap();
    // Every 50th publish, probes included, is refused.
    assert!(errors >= 4, "{r}");
    let first = r["first_protocol_error"].as_str().unwrap();
    assert!(first.contains("111 too many requests"), "{first}");
    assert!(r["lost"].as_u64().unwrap() > 0, "{r}");
}
