//! The floor (`roomcast-floor`) speaks the seed protocol, and `roomcast-load`
//! runs against it end to end with the delivery window and the CPU figures.
//! Real processes on 127.0.0.1, every wait bounded.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_tungstenite::WebSocketStream;
use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::Message;
use futures_util::StreamExt;
use tokio::net::TcpStream;

type Ws = WebSocketStream<TokioAdapter<TcpStream>>;

/// A running floor, killed when dropped.
struct Floor {
    child: Child,
    addr: String,
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_floor() -> Floor {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomcast-floor"))
        .args(["--listen", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start roomcast-floor");
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .expect("read the floor's first line");
    let addr = line
        .trim()
        .strip_prefix("floor listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Floor { child, addr }
}

async fn connect(f: &Floor) -> Ws {
    let tcp = TcpStream::connect(&f.addr).await.unwrap();
    let url = format!("ws://{}/", f.addr);
    async_tungstenite::tokio::client_async(url, tcp)
        .await
        .unwrap()
        .0
}

async fn send(ws: &mut Ws, frame: &str) {
    ws.send(Message::text(frame)).await.unwrap();
}

/// The next frame, within 5 s.
async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a frame within 5 s")
        .expect("connection open")
        .expect("no WebSocket error")
}

async fn text(ws: &mut Ws) -> String {
    match next(ws).await {
        Message::Text(t) => t.as_str().to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

async fn close_code(ws: &mut Ws) -> u16 {
    match next(ws).await {
        Message::Close(Some(c)) => c.code.into(),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

fn sub(room: &str) -> String {
    format!(r#"{{"type":"SUBSCRIBE","room":"{room}"}}"#)
}

fn msg(room: &str, m: &str) -> String {
    format!(r#"{{"type":"sendMessage","roomId":"{room}","message":{m}}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_speaks_the_seed_protocol() {
    let f = start_floor();
    let (mut a, mut b, mut c) = (connect(&f).await, connect(&f).await, connect(&f).await);
    // a's SUBSCRIBE is done once a message it sends to r comes back to it.
    send(&mut a, &sub("r")).await;
    send(&mut a, &msg("r", r#""ready""#)).await;
    assert_eq!(text(&mut a).await, "ready");
    // Then b's, likewise; a gets it too.
    send(&mut b, &sub("r")).await;
    send(&mut b, &msg("r", r#""b ready""#)).await;
    assert_eq!(text(&mut b).await, "b ready");
    assert_eq!(text(&mut a).await, "b ready");
    // Then c's; c's room is not r, so neither a nor b gets it (their next
    // frames are checked below).
    send(&mut c, &sub("other")).await;
    send(&mut c, &msg("other", r#""only c""#)).await;
    assert_eq!(text(&mut c).await, "only c");

    // Strings arrive unescaped; anything else as compact JSON, key order and
    // number spelling as sent.
    let cases = [
        (r#""a\"b\u00e9""#, "a\"bé"),
        (
            r#"{ "b" : 1.50, "a": [1, "x y"] }"#,
            r#"{"b":1.50,"a":[1,"x y"]}"#,
        ),
        ("null", "null"),
        ("-0.5e3", "-0.5e3"),
        (r#"[ "\\" , "\" " ]"#, r#"["\\","\" "]"#),
    ];
    for (m, want) in cases {
        send(&mut b, &msg("r", m)).await;
        assert_eq!(text(&mut a).await, want, "{m}");
        assert_eq!(text(&mut b).await, want, "{m}");
    }

    // After UNSUBSCRIBE, a's own message to r reaches b but not a: a's next
    // frame is the one it sends to a room it joins afterwards.
    send(&mut a, r#"{"type":"UNSUBSCRIBE","room":"r"}"#).await;
    send(&mut a, &msg("r", r#""from a""#)).await;
    assert_eq!(text(&mut b).await, "from a");
    send(&mut a, &sub("q")).await;
    send(&mut a, &msg("q", r#""self""#)).await;
    assert_eq!(text(&mut a).await, "self");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_closes_on_bad_input() {
    let f = start_floor();
    for (frame, code) in [
        (Message::text("nope"), 1008),
        (Message::text(r#"{"type":"JOIN","room":"r"}"#), 1008),
        (Message::text(r#"{"type":"SUBSCRIBE"}"#), 1008),
        (
            Message::text(r#"{"type":"sendMessage","roomId":"r"}"#),
            1008,
        ),
        (
            Message::text(r#"{"type":"sendMessage","roomId":"r","message":"\ud800"}"#),
            1008,
        ),
        (Message::binary(vec![1u8, 2, 3]), 1003),
    ] {
        let mut ws = connect(&f).await;
        ws.send(frame.clone()).await.unwrap();
        assert_eq!(close_code(&mut ws).await, code, "{frame:?}");
    }
    // The floor still serves.
    let mut ws = connect(&f).await;
    send(&mut ws, &sub("r")).await;
    send(&mut ws, &msg("r", "1")).await;
    assert_eq!(text(&mut ws).await, "1");
}

/// Runs roomcast-load against a fresh floor and returns its JSON report.
fn load(extra: &[&str]) -> serde_json::Value {
    let f = start_floor();
    let pid = f.child.id().to_string();
    let url = format!("ws://{}", f.addr);
    let mut args = vec![
        "--nodes",
        &url,
        "--pids",
        &pid,
        "-c",
        "40",
        "-r",
        "4",
        "-p",
        "2",
        "-m",
        "400",
        "--timeout",
        "30s",
        "--settle",
        "3s",
        "--threads",
        "2",
        "-q",
    ];
    args.extend_from_slice(extra);
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast-load"))
        .args(&args)
        .output()
        .expect("run roomcast-load");
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn load_generator_runs_against_the_floor() {
    let r = load(&["--window-deliveries", "25"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["expected"], 4000);
    assert_eq!(r["delivered"], 4000);
    assert_eq!(r["window_deliveries"], 25);
    assert!(r["window"].is_null());
    let cpu = r["node_cpu_s"].as_f64().expect("node CPU read");
    assert!(cpu >= 0.0, "{r}");
    assert_eq!(r["node_cpu_run_s"].as_array().unwrap().len(), 1);
    assert!(r["node_cpu_us_per_delivery"].as_f64().is_some(), "{r}");
    assert!(r["redis_cpu_s"].is_null());
    assert!(r["load_cpu_s"].as_f64().unwrap() >= 0.0, "{r}"); // may be < 1 tick

    let r = load(&["--window", "3"]);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["window"], 3);
    assert!(r["window_deliveries"].is_null());
}
