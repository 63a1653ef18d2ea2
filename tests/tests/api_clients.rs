//! The HTTP server API driven by real API clients: Centrifugo's Python
//! client `cent` (pinned with hashes in tests/api-client/requirements.txt,
//! in a virtualenv that tests/sdk/install.sh makes) publishes, broadcasts,
//! reads history, presence, info and channels, on both runtimes, embedded
//! and on two nodes sharing a test-owned Redis; and schemathesis checks
//! the node's live answers against docs/openapi.yaml.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use roomcast_tests::auth::{self as tokens, ConfigFile};
use roomcast_tests::centrifugo::CfClient;
use roomcast_tests::sdk::ensure_api_clients;
use roomcast_tests::{Node, RedisServer, Runtime, TIMEOUT, Value, json, scenarios, unique};

scenarios!(
    cent_drives_the_api_embedded,
    cent_drives_the_api_on_two_nodes,
    live_answers_match_the_openapi_description,
);

const KEY: &str = "test-api-key-cent-7d2a";

/// How long one client run may take.
const RUN_LIMIT: Duration = Duration::from_secs(240);

fn config() -> ConfigFile {
    ConfigFile::new(&format!(
        "token_hmac_secret = \"{}\"\n\
         allow_anonymous_connect_without_token = true\n\
         [default_namespace]\n\
         allow_subscribe_for_client = true\n\
         allow_subscribe_for_anonymous = true\n\
         [[namespace]]\n\
         name = \"hist\"\n\
         allow_subscribe_for_client = true\n\
         allow_subscribe_for_anonymous = true\n\
         history_size = 100\n\
         history_ttl = \"5m\"\n\
         [[namespace]]\n\
         name = \"pres\"\n\
         allow_subscribe_for_client = true\n\
         presence = true\n",
        tokens::SECRET
    ))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `program args` (bounded by [`RUN_LIMIT`]); its stdout, panicking
/// with everything it printed unless it succeeded.
/// Runs `program` in a directory of its own (schemathesis keeps a cache
/// in its working directory, which is not the checkout's business).
fn run(program: &Path, args: &[&str]) -> String {
    let dir = std::env::temp_dir().join(unique("roomcast-api-client"));
    std::fs::create_dir_all(&dir).expect("a working directory");
    let mut child = roomcast_tests::spawn_child(
        Command::new(program)
            .args(args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let started = Instant::now();
    loop {
        match child.try_wait().expect("wait for the client") {
            Some(_) => break,
            None if started.elapsed() > RUN_LIMIT => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("its output");
                panic!(
                    "{} {args:?} ran over {RUN_LIMIT:?}:\n{}{}",
                    program.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let out = child.wait_with_output().expect("its output");
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}):\n{stdout}{stderr}",
        program.display(),
        out.status
    );
    stdout
}

/// A raw Centrifugo client connected as `user`; its client id.
fn connect_as(addr: SocketAddr, user: &str) -> (CfClient, String) {
    let mut c = CfClient::open(addr);
    let token = tokens::hs256(&tokens::conn_claims(user, Some(3600)));
    let r = c.ok("connect", json!({"token": token}));
    (c, r["client"].as_str().expect("a client id").to_string())
}

fn presence_count(addr: SocketAddr, room: &str) -> usize {
    let body = json!({"channel": room}).to_string();
    let raw = format!(
        "POST /api/presence_stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: {KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = roomcast_tests::http_request(addr, raw.as_bytes());
    let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
    v["result"]["num_clients"].as_u64().unwrap_or(0) as usize
}

fn cent_drives_the_api(api: &Node, other: &Node, redis: Option<&RedisServer>) {
    let venv = ensure_api_clients();
    let (hist, plain, pres) = (
        format!("hist:{}", unique("cent")),
        unique("cent-plain"),
        format!("pres:{}", unique("cent")),
    );
    // Subscribers on the other node see what cent publishes.
    let mut h = CfClient::connect(other.addr());
    h.subscribe(&hist);
    let mut p = CfClient::connect(other.addr());
    p.subscribe(&plain);
    let (mut alice, alice_id) = connect_as(api.addr(), "alice");
    alice.subscribe(&pres);
    let (mut bob, bob_id) = connect_as(other.addr(), "bob");
    bob.subscribe(&pres);
    if let Some(r) = redis {
        r.wait_numsub(&hist, 1);
        r.wait_numsub(&plain, 1);
    }
    roomcast_tests::wait_until("both present", TIMEOUT, || {
        presence_count(api.addr(), &pres) == 2
    });
    let url = format!("http://{}/api", api.addr());
    let script = repo().join("tests/api-client/drive_cent.py");
    let script = script.to_str().expect("a UTF-8 path");
    let out = run(
        &venv.join("bin/python"),
        &[script, &url, KEY, &hist, &plain, &pres],
    );
    let seen: Value = serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("drive_cent printed no JSON ({e}): {out}"));
    assert_eq!(seen["history"], json!([{"n": 1}, {"n": 2}]), "{seen}");
    assert_eq!(
        seen["presence"],
        json!({alice_id: "alice", bob_id: "bob"}),
        "{seen}"
    );
    assert_eq!(
        seen["presence_stats"],
        json!({"num_clients": 2, "num_users": 2})
    );
    assert_eq!(seen["unknown_channel"], 102);
    assert_eq!(seen["wrong_key"], "unauthorized");
    let nodes = if redis.is_some() { 2 } else { 1 };
    assert_eq!(
        seen["nodes"].as_array().map(Vec::len),
        Some(nodes),
        "{seen}"
    );
    assert_eq!(h.recv_publication(&hist)["data"], json!({"n": 1}));
    assert_eq!(h.recv_publication(&hist)["data"], json!({"n": 2}));
    assert_eq!(p.recv_publication(&plain)["data"], json!({"n": 2}));
}

fn cent_drives_the_api_embedded(rt: Runtime) {
    let cfg = config();
    let n = Node::embedded(rt, &["--config", cfg.path(), "--api-key", KEY]);
    cent_drives_the_api(&n, &n, None);
}

fn cent_drives_the_api_on_two_nodes(rt: Runtime) {
    let cfg = config();
    let redis = RedisServer::start();
    let f = ["--config", cfg.path(), "--api-key", KEY];
    let n1 = Node::redis(rt, &redis, &f);
    let n2 = Node::redis(rt, &redis, &f);
    cent_drives_the_api(&n1, &n2, Some(&redis));
}

/// schemathesis against a live node (two on Redis, so the cross-node paths
/// answer too): every method with examples and generated bodies, every
/// answer checked against docs/openapi.yaml's schemas and status codes,
/// bounded in examples and time (20 s).
fn live_answers_match_the_openapi_description(rt: Runtime) {
    let venv = ensure_api_clients();
    let cfg = config();
    let redis = RedisServer::start();
    let f = ["--config", cfg.path(), "--api-key", KEY];
    let n1 = Node::redis(rt, &redis, &f);
    let _n2 = Node::redis(rt, &redis, &f);
    let url = format!("http://{}", n1.addr());
    let header = format!("X-API-Key: {KEY}");
    let spec = repo().join("docs/openapi.yaml");
    let spec = spec.to_str().expect("a UTF-8 path");
    let out = run(
        &venv.join("bin/schemathesis"),
        &[
            "run",
            spec,
            "--url",
            &url,
            "--header",
            &header,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "10",
            "--phases",
            "examples,fuzzing",
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
            "--max-time",
            "20",
        ],
    );
    // It tested every method (and failed above on any problem).
    assert!(
        out.contains("Tested: 11") && out.contains("No issues found"),
        "schemathesis did not test every method cleanly:\n{out}"
    );
}
