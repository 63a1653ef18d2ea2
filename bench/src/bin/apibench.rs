//! Publishes per second through the server API (one keep-alive HTTP
//! connection, one request at a time) against direct Redis publishing
//! (`PUBLISH` on one connection, one at a time: pipelining off), in the
//! same run; prints both rates and their latency p50/p99 as JSON.
//!
//!   roomcast-apibench --api 127.0.0.1:8080 --key K --redis 127.0.0.1:6379 [-n 20000]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// The node's API address (host:port).
    #[arg(long)]
    api: String,
    /// The API key.
    #[arg(long)]
    key: String,
    /// Redis (host:port) for the direct baseline.
    #[arg(long)]
    redis: String,
    /// Publishes per side.
    #[arg(short = 'n', long, default_value_t = 20_000)]
    count: usize,
    #[arg(long, default_value = "apibench")]
    channel: String,
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn summary(mut lat: Vec<Duration>, total: Duration) -> serde_json::Value {
    lat.sort();
    serde_json::json!({
        "per_s": (lat.len() as f64 / total.as_secs_f64()).round(),
        "p50_ms": pct(&lat, 0.5),
        "p99_ms": pct(&lat, 0.99),
    })
}

fn connect(addr: &str) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    (s.try_clone().unwrap(), BufReader::new(s))
}

/// One keep-alive connection; a new one when the server ends it (it bounds
/// the requests per connection, `connection: close`).
fn api(a: &Args) -> (Vec<Duration>, Duration) {
    let (mut w, mut r) = connect(&a.api);
    let mut reconnects = 0;
    let mut lat = Vec::with_capacity(a.count);
    let start = Instant::now();
    let mut line = String::new();
    for i in 0..a.count {
        let body = format!(r#"{{"channel":"{}","data":{{"n":{i}}}}}"#, a.channel);
        let req = format!(
            "POST /api/publish HTTP/1.1\r\nHost: bench\r\nX-API-Key: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            a.key,
            body.len()
        );
        let t = Instant::now();
        w.write_all(req.as_bytes()).unwrap();
        let mut len = 0usize;
        let mut close = false;
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            close |= lower.starts_with("connection: close");
        }
        let mut b = vec![0; len];
        r.read_exact(&mut b).unwrap();
        assert!(
            b.starts_with(br#"{"result""#),
            "{}",
            String::from_utf8_lossy(&b)
        );
        lat.push(t.elapsed());
        if close {
            (w, r) = connect(&a.api);
            reconnects += 1;
        }
    }
    eprintln!("api: {reconnects} reconnects (the server's requests-per-connection bound)");
    (lat, start.elapsed())
}

fn redis(a: &Args) -> (Vec<Duration>, Duration) {
    let (mut w, mut r) = connect(&a.redis);
    let mut lat = Vec::with_capacity(a.count);
    let start = Instant::now();
    let mut line = String::new();
    for i in 0..a.count {
        let payload = format!(
            r#"{{"type":"sendMessage","roomId":"{}","message":{{"n":{i}}}}}"#,
            a.channel
        );
        let cmd = format!(
            "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{}\r\n${}\r\n{payload}\r\n",
            a.channel.len(),
            a.channel,
            payload.len()
        );
        let t = Instant::now();
        w.write_all(cmd.as_bytes()).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with(':'), "{line}");
        lat.push(t.elapsed());
    }
    (lat, start.elapsed())
}

fn main() {
    let a = Args::parse();
    let (rl, rt) = redis(&a);
    let (al, at) = api(&a);
    let redis = summary(rl, rt);
    let api = summary(al, at);
    let ratio = api["per_s"].as_f64().unwrap() / redis["per_s"].as_f64().unwrap();
    println!(
        "{}",
        serde_json::json!({"count": a.count, "api": api, "redis_direct": redis, "api_over_redis": (ratio * 100.0).round() / 100.0})
    );
}
