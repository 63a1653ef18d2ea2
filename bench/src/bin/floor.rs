//! `roomcast-floor`: the performance floor roomcast is measured against. A
//! single-process broadcaster of the seed protocol with no Redis: a room
//! table behind one lock, an unbounded channel per connection, and a writer
//! task per connection that feeds every queued frame and then flushes once.
//! No limits, no slow-consumer handling, no HTTP: a baseline, not a server.
//!
//! Client frames: `{"type":"SUBSCRIBE","room":R}`, `{"type":"UNSUBSCRIBE","room":R}`,
//! `{"type":"sendMessage","roomId":R,"message":M}`; every member of R (the
//! sender too, if a member) receives M as a text frame: the string itself
//! when M is a JSON string, otherwise M's JSON text without insignificant
//! white space. A frame that is not one of these closes the connection
//! with 1008 (1003 for a binary frame).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

/// Room name → connection id → that connection's outgoing queue.
type Table = HashMap<String, HashMap<u64, UnboundedSender<Message>>>;
type Rooms = RwLock<Table>;

#[derive(Parser)]
#[command(about = "Single-process seed-protocol broadcaster, the benchmark floor")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(rename = "roomId", borrow)]
    room_id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    message: Option<&'a RawValue>,
}

/// A present field, even `null` (plain `Option` would read `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// What members receive for `message`: a JSON string's value, else the JSON
/// text with white space outside strings removed (key order and number
/// spelling kept as sent).
fn delivered(raw: &RawValue) -> Option<String> {
    if raw.get().starts_with('"') {
        return serde_json::from_str::<String>(raw.get()).ok();
    }
    let (mut out, mut in_str, mut escaped) = (String::with_capacity(raw.get().len()), false, false);
    for c in raw.get().chars() {
        if escaped {
            escaped = false;
        } else if in_str {
            escaped = c == '\\';
            in_str = c != '"';
        } else if c == '"' {
            in_str = true;
        } else if c.is_ascii_whitespace() {
            continue;
        }
        out.push(c);
    }
    Some(out)
}

async fn connection(stream: TcpStream, id: u64, rooms: Arc<Rooms>) {
    // tungstenite zero-fills its whole read buffer before every read; its
    // 128 KiB default would cost 128 KiB of RSS per connection and a 128 KiB
    // memset per read. 4 KiB (what roomcast-load uses) holds any seed frame
    // of ours in one read and still grows for larger ones.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let accept = async_tungstenite::tokio::accept_async_with_config(stream, Some(config));
    let Ok(ws) = accept.await else { return };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let mut res = sink.feed(m).await;
            while let (true, Ok(m)) = (res.is_ok(), rx.try_recv()) {
                res = sink.feed(m).await;
            }
            if res.is_err() || sink.flush().await.is_err() {
                break;
            }
        }
    });
    let mut mine = HashSet::new();
    let refused = loop {
        let Some(Ok(msg)) = source.next().await else {
            break None;
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                break Some((CloseCode::Unsupported, "binary frames are not supported"));
            }
            Message::Close(_) => break None,
            _ => continue,
        };
        let Ok(f) = serde_json::from_str::<Frame>(text.as_str()) else {
            break Some((CloseCode::Policy, "invalid frame"));
        };
        match (&*f.ty, f.room, f.room_id, f.message.map(delivered)) {
            ("SUBSCRIBE", Some(room), _, _) => {
                let mut w = rooms.write().unwrap_or_else(|e| e.into_inner());
                w.entry(room.to_string())
                    .or_default()
                    .insert(id, tx.clone());
                mine.insert(room.into_owned());
            }
            ("UNSUBSCRIBE", Some(room), _, _) => {
                let mut w = rooms.write().unwrap_or_else(|e| e.into_inner());
                leave(&mut w, &room, id);
                mine.remove(&*room);
            }
            ("sendMessage", _, Some(room), Some(Some(text))) => {
                let frame = Message::text(text);
                let r = rooms.read().unwrap_or_else(|e| e.into_inner());
                for member in r.get(&*room).into_iter().flat_map(|m| m.values()) {
                    let _ = member.send(frame.clone());
                }
            }
            _ => break Some((CloseCode::Policy, "invalid frame")),
        }
    };
    if let Some((code, reason)) = refused {
        let _ = tx.send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })));
    }
    {
        let mut w = rooms.write().unwrap_or_else(|e| e.into_inner());
        for room in &mine {
            leave(&mut w, room, id);
        }
    }
    drop(tx); // the writer ends once it has sent what is queued
    let _ = writer.await;
}

fn leave(rooms: &mut Table, room: &str, id: u64) {
    if let Some(members) = rooms.get_mut(room) {
        members.remove(&id);
        if members.is_empty() {
            rooms.remove(room);
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let listener = match TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("roomcast-floor: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    match listener.local_addr() {
        Ok(a) => eprintln!("floor listening on {a}"),
        Err(_) => eprintln!("floor listening on {}", args.listen),
    }
    let rooms = Arc::new(Rooms::default());
    let next = AtomicU64::new(0);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let id = next.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(stream, id, rooms.clone()));
            }
            // Out of descriptors and the like: wait a little, keep serving.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}
