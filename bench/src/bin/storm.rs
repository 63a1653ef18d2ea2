//! A connect storm into one presence room: N Centrifugo-protocol clients
//! connect and subscribe with `join_leave` at once; counts the join pushes
//! they receive and the time until the room settles (every client
//! subscribed and no push for `--quiet`). With the default member cap
//! (`--presence-max-members`, 1000) the pushes stop growing as N² past it.
//!
//!   roomcast-storm --node ws://127.0.0.1:8080 -c 10000 [--room storm]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_tungstenite::tokio::connect_async;
use async_tungstenite::tungstenite::Message;
use clap::Parser;
use futures_util::StreamExt;

#[derive(Parser, Debug)]
struct Args {
    /// The node's base URL (ws://host:port).
    #[arg(long)]
    node: String,
    /// Clients.
    #[arg(short = 'c', long, default_value_t = 10_000)]
    clients: usize,
    #[arg(long, default_value = "storm")]
    room: String,
    /// Settled: no push for this long after the last subscribe.
    #[arg(long, default_value = "2s", value_parser = parse_secs)]
    quiet: Duration,
    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let n: f64 = s
        .trim_end_matches('s')
        .parse()
        .map_err(|e| format!("{s}: {e}"))?;
    Ok(Duration::from_secs_f64(n))
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let joins = Arc::new(AtomicU64::new(0));
    let leaves = Arc::new(AtomicU64::new(0));
    let subscribed = Arc::new(AtomicU64::new(0));
    let last_push = Arc::new(std::sync::Mutex::new(Instant::now()));
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.concurrency));
    let url = format!("{}/connection/websocket", a.node.trim_end_matches('/'));
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        let (url, room) = (url.clone(), a.room.clone());
        let (joins, leaves, subscribed, last_push, sem) = (
            joins.clone(),
            leaves.clone(),
            subscribed.clone(),
            last_push.clone(),
            sem.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.expect("semaphore");
            let Ok((mut ws, _)) = connect_async(url.as_str()).await else {
                eprintln!("connect failed");
                return;
            };
            let hello = format!(
                "{{\"id\":1,\"connect\":{{}}}}\n{{\"id\":2,\"subscribe\":{{\"channel\":{},\"join_leave\":true}}}}",
                serde_json::to_string(&room).unwrap()
            );
            if ws.send(Message::text(hello)).await.is_err() {
                return;
            }
            drop(permit);
            while let Some(Ok(msg)) = ws.next().await {
                let Message::Text(t) = msg else { continue };
                for line in t.lines() {
                    if line == "{}" {
                        let _ = ws.send(Message::text("{}")).await;
                    } else if line.starts_with("{\"id\":2,\"subscribe\"") {
                        subscribed.fetch_add(1, Ordering::Relaxed);
                    } else if line.contains("\"join\":{") {
                        joins.fetch_add(1, Ordering::Relaxed);
                        *last_push.lock().unwrap() = Instant::now();
                    } else if line.contains("\"leave\":{") {
                        leaves.fetch_add(1, Ordering::Relaxed);
                        *last_push.lock().unwrap() = Instant::now();
                    }
                }
            }
        }));
    }
    let mut all_subscribed = None;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let s = subscribed.load(Ordering::Relaxed) as usize;
        if all_subscribed.is_none() && s >= a.clients {
            all_subscribed = Some(start.elapsed());
        }
        let quiet = last_push.lock().unwrap().elapsed() >= a.quiet;
        if all_subscribed.is_some() && quiet {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            eprintln!("did not settle in 10 minutes");
            break;
        }
    }
    // Settled: every client subscribed and the last push delivered.
    let last = last_push.lock().unwrap().saturating_duration_since(start);
    let settled = all_subscribed.unwrap_or_default().max(last);
    println!(
        "{{\"clients\":{},\"subscribed\":{},\"join_pushes\":{},\"leave_pushes\":{},\"all_subscribed_s\":{:.2},\"settled_s\":{:.2}}}",
        a.clients,
        subscribed.load(Ordering::Relaxed),
        joins.load(Ordering::Relaxed),
        leaves.load(Ordering::Relaxed),
        all_subscribed.map_or(f64::NAN, |d| d.as_secs_f64()),
        settled.as_secs_f64()
    );
    for t in tasks {
        t.abort();
    }
}
