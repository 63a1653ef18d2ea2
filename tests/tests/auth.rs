//! Authentication and authorization end to end: JWT connection and
//! subscription tokens (HS256, RS256, ES256), their expiry, refresh and
//! claims (`aud`, `iss`), namespaces and every permission flag from a
//! `roomcast.toml` given with `--config`, the seed protocol's `?token=`, the
//! upgrade's Origin check, and the real binaries refusing a bad config file.
//!
//! Clients: the real Centrifugo SDKs (JS and Python agents, see tests/sdk),
//! raw Centrifugo clients (`roomcast_tests::centrifugo::CfClient`), seed
//! clients and raw HTTP upgrades. Nodes are embedded, or two on a Redis of
//! the test's own where a publisher's identity has to cross nodes. Tokens
//! are minted by `roomcast_tests::auth` with the node's own JWT crate; the
//! keys are test fixtures.
//!
//! What the node answers (core/src/auth/mod.rs):
//! - connect: no token (a key configured) or an invalid one: close 3500
//!   "invalid token"; an expired one: error 109 (the SDK fetches another).
//! - a connection whose token's `exp` passes is closed 3005 "connection
//!   expired" after `--token-expire-grace`, unless refreshed.
//! - subscribe: `$` room without token 103; expired token 109; a token that
//!   fails verification 103; a valid token for another room or user: close
//!   3500; unknown namespace 102; not allowed 103.
//! - seed protocol: no or bad `?token=`: HTTP 401; a room it may not use:
//!   close 1008 "permission denied".
//! - Origin refused: HTTP 403.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use roomcast_tests::auth::{
    ConfigFile, OTHER_SECRET, SECRET, TempDir, conn_claims, ec256_public_key_path, es256, hs256,
    hs256_keyed_with_rsa_public_key, hs256_with, instant_of, now, rs256, rs256_other,
    rsa_public_key_path, sub_claims, unsigned, upgrade,
};
use roomcast_tests::binary::{BinaryNode, Spawn};
use roomcast_tests::centrifugo::{CF_PATH, CfClient, cf_url};
use roomcast_tests::sdk::{Agent, Sdk, is, is_on};
use roomcast_tests::{Client, Node, RedisServer, Runtime, TIMEOUT, Value, json, scenarios, unique};

scenarios!(
    anonymous_connect_is_refused,
    anonymous_connect_allowed_by_config,
    tokens_name_the_publisher_across_two_nodes,
    key_families_are_kept_apart,
    expired_token_gets_a_new_one,
    bad_tokens_close_3500,
    audience_and_issuer_are_checked,
    sdk_refresh_keeps_the_connection,
    raw_refresh_and_expiry,
    subscription_tokens_across_two_nodes,
    sdk_subscription_tokens,
    permission_flags,
    sdk_permission_errors,
    seed_protocol_tokens,
    origin_check,
    config_file_drives_the_binary,
    bad_config_files_stop_the_binary,
);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Rooms without a namespace: users with a token may subscribe and publish.
const USERS_MAY_CHAT: &str = "[default_namespace]\n\
                              allow_subscribe_for_client = true\n\
                              allow_publish_for_client = true\n";

/// A TOML basic string holding `s` (the paths and secrets here are plain).
fn toml_str(s: &str) -> String {
    assert!(
        !s.contains(['"', '\\', '\n']),
        "not a plain TOML string: {s:?}"
    );
    format!("\"{s}\"")
}

/// A config with the HMAC secret, `top` (more top-level keys) and `tables`.
fn hmac_config(top: &str, tables: &str) -> ConfigFile {
    ConfigFile::new(&format!(
        "token_hmac_secret = {}\n{top}\n{tables}",
        toml_str(SECRET)
    ))
}

/// A raw client connected with `token`; the connect result.
fn cf_connect(addr: SocketAddr, token: &str) -> (CfClient, Value) {
    let mut c = CfClient::open(addr);
    let r = c
        .call("connect", json!({"token": token}))
        .unwrap_or_else(|e| panic!("connect with a valid token to {addr}: error {e}"));
    assert!(
        r["client"].as_str().is_some_and(|s| !s.is_empty()),
        "connect result without a client id: {r}"
    );
    (c, r)
}

/// A raw client connected as `user` (HS256, no `exp`).
fn cf_user(addr: SocketAddr, user: &str) -> CfClient {
    cf_connect(addr, &hs256(&json!({"sub": user}))).0
}

/// Sends connect with `body` and expects the close 3500 "invalid token".
fn expect_connect_refused(addr: SocketAddr, body: Value, what: &str) {
    eprintln!("connect refused? {what}");
    let mut c = CfClient::open(addr);
    c.command("connect", body);
    c.expect_close(3500, "invalid token");
}

/// The connect result's `ttl`, asserting `expires` and that it is within
/// `lo..=hi` seconds.
fn assert_ttl(result: &Value, lo: u64, hi: u64, what: &str) {
    assert_eq!(result["expires"], true, "{what}: {result}");
    let ttl = result["ttl"]
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: no ttl in {result}"));
    assert!(
        (lo..=hi).contains(&ttl),
        "{what}: ttl {ttl} not in {lo}..={hi}: {result}"
    );
}

/// Asserts an error reply's code (and Centrifugo's message for it).
fn assert_code(e: &Value, code: u64, what: &str) {
    let message = match code {
        102 => "unknown channel",
        103 => "permission denied",
        109 => "token expired",
        _ => panic!("no message known for {code}"),
    };
    assert_eq!(
        (e["code"].as_u64(), e["message"].as_str()),
        (Some(code), Some(message)),
        "{what}: {e}"
    );
}

/// An agent of `sdk` with `connect` sent to `addr` with `extra` fields
/// (`token`, `getToken`, `wait`).
fn agent_connect(sdk: Sdk, addr: SocketAddr, extra: Value) -> Agent {
    let mut a = Agent::spawn(sdk);
    let mut cmd = json!({"cmd": "connect", "url": cf_url(addr)});
    for (k, v) in extra.as_object().expect("an object of connect fields") {
        cmd[k] = v.clone();
    }
    a.ok(cmd);
    a
}

/// How many events named `name` the agent has printed so far.
fn count(a: &mut Agent, name: &str) -> usize {
    a.drain();
    a.events().iter().filter(|e| e["event"] == name).count()
}

/// Every event named `name` so far.
fn events(a: &mut Agent, name: &str) -> Vec<Value> {
    a.drain();
    a.events()
        .iter()
        .filter(|e| e["event"] == name)
        .cloned()
        .collect()
}

/// The agent's client was closed 3500 "invalid token" and, that being
/// terminal, does not try again within `watch`: one `connecting`, no
/// `connected`, no token asked for, one connection opened at the node.
fn assert_gave_up(a: &mut Agent, node: &Node, opened_before: u64, watch: Duration) {
    let sdk = a.sdk();
    let ev = a.wait_event(is("disconnected"), TIMEOUT);
    assert_eq!(
        (&ev["code"], &ev["reason"]),
        (&json!(3500), &json!("invalid token")),
        "{sdk}: {ev}"
    );
    std::thread::sleep(watch);
    assert_eq!(
        count(a, "connecting"),
        1,
        "{sdk} tried again: {:?}",
        a.events()
    );
    assert_eq!(count(a, "connected"), 0, "{sdk}: {:?}", a.events());
    assert_eq!(count(a, "disconnected"), 1, "{sdk}: {:?}", a.events());
    assert_eq!(count(a, "getToken"), 0, "{sdk}: {:?}", a.events());
    assert_eq!(
        node.metric("roomcast_connections_opened_total"),
        opened_before + 1,
        "{sdk} opened another connection"
    );
    let state = a.ok(json!({"cmd": "state"}));
    assert_eq!(state["client"], "disconnected", "{sdk}: {state}");
}

/// Subscribes through the agent (with `extra` subscription fields) and
/// waits for `subscribed`.
fn agent_subscribe(a: &mut Agent, channel: &str, extra: Value) {
    let mut cmd = json!({"cmd": "subscribe", "channel": channel, "wait": true});
    for (k, v) in extra.as_object().expect("an object of subscribe fields") {
        cmd[k] = v.clone();
    }
    let r = a.ok(cmd);
    assert_eq!(r["state"], "subscribed", "{}: {r}", a.sdk());
    a.wait_event(is_on("subscribed", channel), TIMEOUT);
}

/// Subscribes through the agent and expects the server's refusal `code`:
/// the subscription is given up with that code.
fn agent_subscribe_refused(a: &mut Agent, channel: &str, code: u64, reason: &str) {
    let sdk = a.sdk();
    a.ok(json!({"cmd": "subscribe", "channel": channel}));
    let ev = a.wait_event(is_on("unsubscribed", channel), TIMEOUT);
    assert_eq!(
        (&ev["code"], &ev["reason"]),
        (&json!(code), &json!(reason)),
        "{sdk} subscribe {channel}: {ev}"
    );
}

/// The user id of a raw client's publication `p`.
fn user_of(p: &Value) -> &str {
    p["info"]["user"]
        .as_str()
        .unwrap_or_else(|| panic!("a publication without info.user: {p}"))
}

// ---------------------------------------------------------------------------
// 1. Connection tokens
// ---------------------------------------------------------------------------

/// With a token key configured, a connect without a token is closed 3500,
/// and the SDKs, told so, stop: no reconnect loop.
fn anonymous_connect_is_refused(rt: Runtime) {
    let cfg = hmac_config("", USERS_MAY_CHAT);
    let node = Node::embedded(rt, &["--config", cfg.path()]);
    let addr = node.addr();
    expect_connect_refused(addr, json!({}), "no token");
    expect_connect_refused(addr, json!({"token": ""}), "an empty token");
    expect_connect_refused(
        addr,
        json!({"name": "anon", "data": {}}),
        "a name, no token",
    );
    assert_eq!(node.metric("roomcast_auth_refused_total"), 3);

    for sdk in Sdk::ALL {
        let opened = node.metric("roomcast_connections_opened_total");
        let mut a = agent_connect(sdk, addr, json!({}));
        assert_gave_up(&mut a, &node, opened, Duration::from_millis(1500));
        a.exit();
    }
    assert_eq!(node.metric("roomcast_auth_refused_total"), 5);
    // And a token lets one in.
    cf_user(addr, "someone");
}

/// `allow_anonymous_connect_without_token`: a key is set, yet a connect
/// without a token is anonymous (empty `info.user`), while a token still
/// names its user.
fn anonymous_connect_allowed_by_config(rt: Runtime) {
    let cfg = hmac_config(
        "allow_anonymous_connect_without_token = true",
        "[default_namespace]\n\
         allow_subscribe_for_client = true\n\
         allow_subscribe_for_anonymous = true\n\
         allow_publish_for_client = true\n\
         allow_publish_for_anonymous = true\n",
    );
    let node = Node::embedded(rt, &["--config", cfg.path()]);
    let room = unique("anon");
    let mut anon = CfClient::connect(node.addr());
    let mut named = cf_user(node.addr(), "nadia");
    anon.subscribe(&room);
    named.subscribe(&room);
    for sdk in Sdk::ALL {
        let mut a = agent_connect(sdk, node.addr(), json!({"wait": true}));
        a.wait_event(is("connected"), TIMEOUT);
        a.ok(json!({"cmd": "publish", "channel": room, "data": {"from": sdk.name()}}));
        for c in [&mut anon, &mut named] {
            let p = c.recv_publication(&room);
            assert_eq!(p["data"], json!({"from": sdk.name()}), "{p}");
            assert_eq!(user_of(&p), "", "{sdk}: anonymous: {p}");
        }
        a.exit();
    }
    named.publish(&room, json!("n"));
    assert_eq!(user_of(&anon.recv_publication(&room)), "nadia");
    // A bad token is still refused, anonymous connects notwithstanding.
    expect_connect_refused(
        node.addr(),
        json!({"token": hs256_with(OTHER_SECRET, &json!({"sub": "x"}))}),
        "a wrongly signed token",
    );
}

/// An HS256 and an RS256 token on one pair of nodes (both keys configured),
/// through the JS and Python SDKs and raw clients: each publication carries
/// its publisher's `sub` as `info.user` (and the token's `info` as
/// `conn_info`), across the two nodes.
fn tokens_name_the_publisher_across_two_nodes(rt: Runtime) {
    let redis = RedisServer::start();
    let key = rsa_public_key_path();
    let cfg = hmac_config(
        &format!(
            "token_public_key = {}",
            toml_str(key.to_str().expect("a UTF-8 path"))
        ),
        USERS_MAY_CHAT,
    );
    let n1 = Node::redis(rt, &redis, &["--config", cfg.path()]);
    let n2 = Node::redis(rt, &redis, &["--config", cfg.path()]);
    let room = unique("users");

    let alice = hs256(&json!({"sub": "alice", "info": {"name": "Alice"}}));
    let bob = rs256(&json!({"sub": "bob", "exp": now() + 600}));
    let mut js = agent_connect(Sdk::Js, n1.addr(), json!({"token": alice, "wait": true}));
    let mut py = agent_connect(Sdk::Py, n2.addr(), json!({"token": bob, "wait": true}));
    let (mut carol, r) = cf_connect(n1.addr(), &rs256(&json!({"sub": "carol"})));
    assert!(
        r.get("expires").is_none() && r.get("ttl").is_none(),
        "a token without exp: {r}"
    );
    let (mut dave, r) = cf_connect(n2.addr(), &hs256(&conn_claims("dave", Some(600))));
    assert_ttl(&r, 590, 600, "dave's connect");

    agent_subscribe(&mut js, &room, json!({}));
    agent_subscribe(&mut py, &room, json!({}));
    carol.subscribe(&room);
    dave.subscribe(&room);
    redis.wait_numsub(&room, 2);

    js.ok(json!({"cmd": "publish", "channel": room, "data": {"n": 1}}));
    let ev = py.wait_event(is_on("publication", &room), TIMEOUT);
    assert_eq!(ev["data"], json!({"n": 1}), "py: {ev}");
    assert_eq!(ev["info"]["user"], "alice", "py: {ev}");
    assert_eq!(ev["info"]["connInfo"], json!({"name": "Alice"}), "py: {ev}");
    for c in [&mut carol, &mut dave] {
        let p = c.recv_publication(&room);
        assert_eq!(p["data"], json!({"n": 1}), "{p}");
        assert_eq!(user_of(&p), "alice", "{p}");
        assert_eq!(p["info"]["conn_info"], json!({"name": "Alice"}), "{p}");
    }
    js.wait_event(is_on("publication", &room), TIMEOUT);

    py.ok(json!({"cmd": "publish", "channel": room, "data": {"n": 2}}));
    let ev = js.wait_event(is_on("publication", &room), TIMEOUT);
    assert_eq!(ev["info"]["user"], "bob", "js: {ev}");
    assert_eq!(ev["info"]["connInfo"], Value::Null, "js: {ev}");
    for c in [&mut carol, &mut dave] {
        assert_eq!(user_of(&c.recv_publication(&room)), "bob");
    }
    py.wait_event(is_on("publication", &room), TIMEOUT);

    carol.publish(&room, json!({"n": 3}));
    for a in [&mut js, &mut py] {
        let ev = a.wait_event(is_on("publication", &room), TIMEOUT);
        assert_eq!(ev["info"]["user"], "carol", "{}: {ev}", a.sdk());
    }
    for c in [&mut carol, &mut dave] {
        assert_eq!(user_of(&c.recv_publication(&room)), "carol");
    }
    js.exit();
    py.exit();
}

/// Each key verifies its own algorithm family only: an ES256 node refuses
/// RS256 and HS256, an RSA node refuses the HS256 token keyed with its own
/// public key (algorithm confusion), an HMAC node (secret from a file, its
/// trailing newline dropped) refuses RS256.
fn key_families_are_kept_apart(rt: Runtime) {
    let claims = json!({"sub": "kim"});
    let ec = ec256_public_key_path();
    let node = Node::embedded(rt, &["--token-public-key", ec.to_str().unwrap()]);
    cf_connect(node.addr(), &es256(&claims));
    expect_connect_refused(
        node.addr(),
        json!({"token": rs256(&claims)}),
        "RS256 on an EC node",
    );
    expect_connect_refused(
        node.addr(),
        json!({"token": hs256(&claims)}),
        "HS256 without a secret",
    );

    let rsa = rsa_public_key_path();
    let node = Node::embedded(rt, &["--token-public-key", rsa.to_str().unwrap()]);
    cf_connect(node.addr(), &rs256(&claims));
    expect_connect_refused(
        node.addr(),
        json!({"token": hs256_keyed_with_rsa_public_key(&claims)}),
        "HS256 keyed with the RSA public key",
    );
    expect_connect_refused(
        node.addr(),
        json!({"token": es256(&claims)}),
        "ES256 on an RSA node",
    );

    let dir = TempDir::new("roomcast-secret");
    let secret = dir.write("secret", &format!("{SECRET}\n"));
    let node = Node::embedded(rt, &["--token-hmac-secret-file", secret.to_str().unwrap()]);
    cf_connect(node.addr(), &hs256(&claims));
    expect_connect_refused(
        node.addr(),
        json!({"token": rs256(&claims)}),
        "RS256 on an HMAC node",
    );
    assert_eq!(node.metric("roomcast_auth_refused_total"), 1);
}

/// An expired token: error 109 (the socket stays usable: a second connect
/// with a fresh token succeeds); the SDKs call getToken once and connect
/// with what it hands them.
fn expired_token_gets_a_new_one(rt: Runtime) {
    let cfg = hmac_config("", USERS_MAY_CHAT);
    let node = Node::embedded(rt, &["--config", cfg.path()]);
    let addr = node.addr();
    let expired = hs256(&conn_claims("late", Some(-5)));

    let mut c = CfClient::open(addr);
    let e = c.err("connect", json!({"token": expired}));
    assert_code(&e, 109, "connect with an expired token");
    let r = c.ok(
        "connect",
        json!({"token": hs256(&conn_claims("late", Some(60)))}),
    );
    assert_ttl(&r, 55, 60, "the second connect");
    assert_eq!(node.metric("roomcast_auth_refused_total"), 1);

    let room = unique("late");
    let mut watcher = cf_user(addr, "watcher");
    watcher.subscribe(&room);
    for sdk in Sdk::ALL {
        let user = format!("late-{sdk}");
        let fresh = hs256(&conn_claims(&user, Some(60)));
        let mut a = agent_connect(sdk, addr, json!({"token": expired, "getToken": [fresh]}));
        let ev = a.wait_event(is("getToken"), TIMEOUT);
        assert_eq!(
            (&ev["scope"], &ev["index"]),
            (&json!("connection"), &json!(0)),
            "{sdk}: {ev}"
        );
        a.wait_event(is("connected"), TIMEOUT);
        a.ok(json!({"cmd": "publish", "channel": room, "data": sdk.name()}));
        let p = watcher.recv_publication(&room);
        assert_eq!(
            (p["data"].as_str(), user_of(&p)),
            (Some(sdk.name()), user.as_str())
        );
        assert_eq!(count(&mut a, "getToken"), 1, "{sdk}: {:?}", a.events());
        assert_eq!(count(&mut a, "connected"), 1, "{sdk}: {:?}", a.events());
        let closes: Vec<Value> = events(&mut a, "disconnected");
        assert!(closes.is_empty(), "{sdk}: {closes:?}");
        a.exit();
    }
}

/// Tokens that fail verification close 3500, an expired one with a bad
/// signature or no signature included (the signature is checked first);
/// the SDKs do not retry, and never call getToken.
fn bad_tokens_close_3500(rt: Runtime) {
    let key = rsa_public_key_path();
    let cfg = hmac_config(
        &format!("token_public_key = {}", toml_str(key.to_str().unwrap())),
        USERS_MAY_CHAT,
    );
    let node = Node::embedded(rt, &["--config", cfg.path()]);
    let addr = node.addr();
    let claims = json!({"sub": "mallory"});
    let valid = hs256(&claims);
    let (head, rest) = valid.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let forged_claims = format!(
        "{head}.{}.{sig}",
        hs256(&json!({"sub": "admin"})).split('.').nth(1).unwrap()
    );
    let cases = [
        (
            "HS256 with another secret",
            hs256_with(OTHER_SECRET, &claims),
        ),
        ("RS256 with another key", rs256_other(&claims)),
        ("alg none", unsigned(&claims)),
        ("alg none, expired", unsigned(&conn_claims("m", Some(-5)))),
        (
            "expired, with another secret",
            hs256_with(OTHER_SECRET, &conn_claims("m", Some(-5))),
        ),
        (
            "HS256 keyed with the RSA public key",
            hs256_keyed_with_rsa_public_key(&claims),
        ),
        ("claims swapped under a valid signature", forged_claims),
        (
            "the signature cut short",
            valid[..valid.len() - 3].to_string(),
        ),
        ("not a JWT", "not-a-jwt".to_string()),
        ("sub not a string", hs256(&json!({"sub": 42}))),
        (
            "exp not a number",
            hs256(&json!({"sub": "m", "exp": "tomorrow"})),
        ),
        (
            "not valid before an hour from now",
            hs256(&json!({"sub": "m", "nbf": now() + 3600})),
        ),
    ];
    for (what, token) in &cases {
        expect_connect_refused(addr, json!({"token": token}), what);
    }
    assert_eq!(
        node.metric("roomcast_auth_refused_total"),
        cases.len() as u64
    );

    for sdk in Sdk::ALL {
        let opened = node.metric("roomcast_connections_opened_total");
        let good = hs256(&json!({"sub": "would-be"}));
        let mut a = agent_connect(
            sdk,
            addr,
            json!({"token": hs256_with(OTHER_SECRET, &claims), "getToken": [good]}),
        );
        assert_gave_up(&mut a, &node, opened, Duration::from_millis(1500));
        a.exit();
    }
}

/// `--token-audience` and `--token-issuer`: a token must carry both, equal
/// (`aud` may be a list holding it).
fn audience_and_issuer_are_checked(rt: Runtime) {
    let iss = "https://auth.test";
    let node = Node::embedded(
        rt,
        &[
            "--token-hmac-secret",
            SECRET,
            "--token-audience",
            "roomcast",
            "--token-issuer",
            iss,
        ],
    );
    let addr = node.addr();
    for claims in [
        json!({"sub": "u", "aud": "roomcast", "iss": iss}),
        json!({"sub": "u", "aud": ["other", "roomcast"], "iss": iss}),
    ] {
        cf_connect(addr, &hs256(&claims));
    }
    let refused = [
        (
            "another audience",
            json!({"sub": "u", "aud": "other", "iss": iss}),
        ),
        ("no audience", json!({"sub": "u", "iss": iss})),
        (
            "a list without it",
            json!({"sub": "u", "aud": ["other"], "iss": iss}),
        ),
        (
            "the audience in another case",
            json!({"sub": "u", "aud": "Roomcast", "iss": iss}),
        ),
        (
            "another issuer",
            json!({"sub": "u", "aud": "roomcast", "iss": "https://evil.test"}),
        ),
        ("no issuer", json!({"sub": "u", "aud": "roomcast"})),
        ("neither", json!({"sub": "u"})),
    ];
    for (what, claims) in &refused {
        expect_connect_refused(addr, json!({"token": hs256(claims)}), what);
    }
    assert_eq!(
        node.metric("roomcast_auth_refused_total"),
        refused.len() as u64
    );
    for sdk in Sdk::ALL {
        let token = hs256(&json!({"sub": "v", "aud": "roomcast", "iss": iss}));
        let mut a = agent_connect(sdk, addr, json!({"token": token, "wait": true}));
        a.wait_event(is("connected"), TIMEOUT);
        let opened = node.metric("roomcast_connections_opened_total");
        a.exit();
        let token = hs256(&json!({"sub": "v", "aud": "roomcast", "iss": "https://evil.test"}));
        let mut a = agent_connect(sdk, addr, json!({"token": token}));
        assert_gave_up(&mut a, &node, opened, Duration::from_millis(500));
        a.exit();
    }
}

// ---------------------------------------------------------------------------
// 2. Expiry and refresh
// ---------------------------------------------------------------------------

/// A token that expires in about 2 s, a grace of 1 s, and a getToken that
/// hands out fresh tokens (each good for 2 s more): the SDKs refresh and
/// stay connected well past the first token's exp + grace, and their
/// publications still carry the user.
fn sdk_refresh_keeps_the_connection(rt: Runtime) {
    let cfg = hmac_config("", USERS_MAY_CHAT);
    let node = Node::embedded(rt, &["--config", cfg.path(), "--token-expire-grace", "1s"]);
    let mut agents = Vec::new();
    let mut first_exp = u64::MAX;
    for sdk in Sdk::ALL {
        let user = format!("erin-{sdk}");
        let exp = now() + 2;
        first_exp = first_exp.min(exp);
        let fresh: Vec<String> = (1..=6)
            .map(|k| hs256(&json!({"sub": user, "exp": exp + 2 * k})))
            .collect();
        let token = hs256(&json!({"sub": user, "exp": exp}));
        let a = agent_connect(
            sdk,
            node.addr(),
            json!({"token": token, "getToken": fresh, "wait": true}),
        );
        agents.push((a, user));
    }
    // Two more token lifetimes past the first exp + grace.
    let until = instant_of(first_exp) + Duration::from_secs(1 + 4);
    std::thread::sleep(until.saturating_duration_since(Instant::now()));

    let room = unique("refreshed");
    let mut watcher = cf_user(node.addr(), "watcher");
    watcher.subscribe(&room);
    for (a, user) in &mut agents {
        let sdk = a.sdk();
        assert_eq!(count(a, "connected"), 1, "{sdk}: {:?}", a.events());
        assert_eq!(count(a, "disconnected"), 0, "{sdk}: {:?}", a.events());
        assert_eq!(count(a, "connecting"), 1, "{sdk}: {:?}", a.events());
        let asked = events(a, "getToken");
        assert!(
            asked.len() >= 2,
            "{sdk} refreshed {} times: {:?}",
            asked.len(),
            a.events()
        );
        assert!(
            asked
                .iter()
                .all(|e| e["scope"] == "connection" && e["exhausted"].is_null()),
            "{sdk}: {asked:?}"
        );
        a.ok(json!({"cmd": "publish", "channel": room, "data": sdk.name()}));
        assert_eq!(user_of(&watcher.recv_publication(&room)), user.as_str());
    }
    for (a, _) in agents {
        a.exit();
    }
}

/// Raw clients: a connection never refreshed is closed 3005 "connection
/// expired" once its token's exp + grace has passed (not before); one that
/// refreshes lives on until its new token's exp + grace; a refresh as
/// another user closes 3500; an expired refresh token is error 109.
fn raw_refresh_and_expiry(rt: Runtime) {
    let cfg = hmac_config("", USERS_MAY_CHAT);
    let node = Node::embedded(rt, &["--config", cfg.path(), "--token-expire-grace", "1s"]);
    let addr = node.addr();
    let grace = Duration::from_secs(1);
    let early = Duration::from_millis(100);

    // Most of a second into the node's clock, so that a ttl rounded from
    // the node's whole seconds would show.
    std::thread::sleep(Duration::from_millis(600));
    let exp = now() + 2;
    let (mut never, r) = cf_connect(addr, &hs256(&json!({"sub": "frank", "exp": exp})));
    let told_at = Instant::now();
    assert_ttl(&r, 1, 2, "connect");
    let ttl = Duration::from_secs(r["ttl"].as_u64().unwrap());
    let (mut refreshes, r) = cf_connect(addr, &hs256(&json!({"sub": "frank", "exp": exp})));
    let client = r["client"].clone();
    let exp2 = exp + 3;
    let r = refreshes.ok(
        "refresh",
        json!({"token": hs256(&json!({"sub": "frank", "exp": exp2}))}),
    );
    assert_eq!(r["client"], client, "refresh result: {r}");
    assert!(r["version"].is_string(), "refresh result: {r}");
    assert_ttl(&r, 3, 5, "refresh");

    never.expect_close_within(3005, "connection expired", Duration::from_secs(8));
    let closed = Instant::now();
    assert!(
        closed + early >= instant_of(exp) + grace,
        "closed {:?} before exp + grace",
        (instant_of(exp) + grace).saturating_duration_since(closed)
    );
    // The ttl is a promise: a client that refreshes when it says (as the
    // SDKs do) has the whole grace left.
    assert!(
        closed + early >= told_at + ttl + grace,
        "closed {:?} before the ttl it was told ({ttl:?}) + grace",
        (told_at + ttl + grace).saturating_duration_since(closed)
    );
    // The refreshed one is alive past the old deadline.
    refreshes.idle(Duration::from_millis(1200));
    let room = unique("alive");
    refreshes.subscribe(&room);
    refreshes.publish(&room, json!("still here"));
    assert_eq!(refreshes.recv_publication(&room)["data"], "still here");
    refreshes.expect_close_within(3005, "connection expired", Duration::from_secs(8));
    let closed = Instant::now();
    assert!(
        closed + early >= instant_of(exp2) + grace,
        "closed {:?} before the new exp + grace",
        (instant_of(exp2) + grace).saturating_duration_since(closed)
    );

    // Another user's token.
    let (mut c, _) = cf_connect(addr, &hs256(&conn_claims("frank", Some(60))));
    c.command(
        "refresh",
        json!({"token": hs256(&conn_claims("mallory", Some(60)))}),
    );
    c.expect_close(3500, "invalid token");
    // A wrongly signed one.
    let (mut c, _) = cf_connect(addr, &hs256(&conn_claims("frank", Some(60))));
    c.command(
        "refresh",
        json!({"token": hs256_with(OTHER_SECRET, &conn_claims("frank", Some(60)))}),
    );
    c.expect_close(3500, "invalid token");
    // An expired one: 109, and the connection is not closed for it.
    let (mut c, _) = cf_connect(addr, &hs256(&conn_claims("frank", Some(60))));
    let e = c.err(
        "refresh",
        json!({"token": hs256(&conn_claims("frank", Some(-5)))}),
    );
    assert_code(&e, 109, "refresh with an expired token");
    let room = unique("after-109");
    c.subscribe(&room);
    c.publish(&room, json!(1));
    assert_eq!(c.recv_publication(&room)["data"], 1);
}

// ---------------------------------------------------------------------------
// 3. Subscription tokens
// ---------------------------------------------------------------------------

/// `$` rooms on two nodes sharing Redis (raw clients): no token 103; a
/// valid one admits (with its ttl) and publications cross the nodes;
/// sub_refresh extends it; expired 109; a token that fails verification, or
/// one without `channel`, 103; a valid token for another room or another
/// user closes the connection 3500.
fn subscription_tokens_across_two_nodes(rt: Runtime) {
    let redis = RedisServer::start();
    let cfg = hmac_config("", "[default_namespace]\nallow_publish_for_client = true\n");
    let n1 = Node::redis(rt, &redis, &["--config", cfg.path()]);
    let n2 = Node::redis(rt, &redis, &["--config", cfg.path()]);
    let room = format!("${}", unique("private"));
    let other = format!("${}", unique("other"));
    let mut bob = cf_user(n1.addr(), "bob");
    let mut alice = cf_user(n2.addr(), "alice");

    let e = alice.err("subscribe", json!({"channel": room}));
    assert_code(&e, 103, "a $ room without a token");
    let token = hs256(&sub_claims("alice", &room, Some(60)));
    let r = alice.ok("subscribe", json!({"channel": room, "token": token}));
    assert_ttl(&r, 55, 60, "subscribe");
    redis.wait_numsub(&room, 1);
    bob.publish(&room, json!({"n": 1}));
    let p = alice.recv_publication(&room);
    assert_eq!((&p["data"], user_of(&p)), (&json!({"n": 1}), "bob"));

    let fresh = hs256(&sub_claims("alice", &room, Some(120)));
    let r = alice.ok("sub_refresh", json!({"channel": room, "token": fresh}));
    assert_ttl(&r, 115, 120, "sub_refresh");
    let fresh = hs256(&sub_claims("alice", &other, Some(120)));
    let e = alice.err("sub_refresh", json!({"channel": other, "token": fresh}));
    assert_code(&e, 103, "sub_refresh of a room not subscribed");

    let expired = hs256(&sub_claims("alice", &other, Some(-5)));
    let e = alice.err("subscribe", json!({"channel": other, "token": expired}));
    assert_code(&e, 109, "an expired subscription token");
    let bad = hs256_with(OTHER_SECRET, &sub_claims("alice", &other, Some(60)));
    let e = alice.err("subscribe", json!({"channel": other, "token": bad}));
    assert_code(&e, 103, "a wrongly signed subscription token");
    let bad = unsigned(&sub_claims("alice", &other, Some(60)));
    let e = alice.err("subscribe", json!({"channel": other, "token": bad}));
    assert_code(&e, 103, "an unsigned subscription token");
    let conn_token = hs256(&conn_claims("alice", Some(60)));
    let e = alice.err("subscribe", json!({"channel": other, "token": conn_token}));
    assert_code(&e, 103, "a token without channel");
    // Alice is still subscribed and connected.
    bob.publish(&room, json!({"n": 2}));
    assert_eq!(alice.recv_publication(&room)["data"], json!({"n": 2}));

    let mut c = cf_user(n2.addr(), "alice");
    let for_room = hs256(&sub_claims("alice", &room, Some(60)));
    c.command("subscribe", json!({"channel": other, "token": for_room}));
    c.expect_close(3500, "invalid token");
    let mut c = cf_user(n2.addr(), "alice");
    let for_bob = hs256(&sub_claims("bob", &room, Some(60)));
    c.command("subscribe", json!({"channel": room, "token": for_bob}));
    c.expect_close(3500, "invalid token");
    let mut c = CfClient::open(n1.addr());
    c.ok("connect", json!({"token": hs256(&json!({"sub": "carol"}))}));
    let token = hs256(&sub_claims("carol", &room, Some(60)));
    c.ok("subscribe", json!({"channel": room, "token": token}));
    let for_bob = hs256(&sub_claims("bob", &room, Some(60)));
    c.command("sub_refresh", json!({"channel": room, "token": for_bob}));
    c.expect_close(3500, "invalid token");

    // Alice never noticed.
    bob.publish(&room, json!({"n": 3}));
    assert_eq!(alice.recv_publication(&room)["data"], json!({"n": 3}));
}

/// Subscription tokens through the SDKs: a token admits; an expired one
/// makes the SDK call the subscription's getToken and subscribe with what
/// it hands; a token about to expire is refreshed (sub_refresh) from
/// getToken with no error; no token gives up with 103; a token for another
/// user closes the connection 3500 and the SDK stops.
fn sdk_subscription_tokens(rt: Runtime) {
    let cfg = hmac_config("", "[default_namespace]\nallow_publish_for_client = true\n");
    let node = Node::embedded(rt, &["--config", cfg.path()]);
    let mut publisher = cf_user(node.addr(), "pub");
    let mut agents = Vec::new();
    for sdk in Sdk::ALL {
        let user = format!("gina-{sdk}");
        let token = hs256(&json!({"sub": user}));
        let a = agent_connect(sdk, node.addr(), json!({"token": token, "wait": true}));
        agents.push((a, user));
    }
    let mut short = Vec::new();
    for (a, user) in &mut agents {
        let sdk = a.sdk();
        let room = format!("${}", unique(&format!("sdk-{sdk}")));
        let token = hs256(&sub_claims(user, &room, Some(60)));
        agent_subscribe(a, &room, json!({"token": token}));
        publisher.publish(&room, json!({"k": 1}));
        let ev = a.wait_event(is_on("publication", &room), TIMEOUT);
        assert_eq!(
            (&ev["data"], &ev["info"]["user"]),
            (&json!({"k": 1}), &json!("pub"))
        );

        let room = format!("${}", unique(&format!("sdk-expired-{sdk}")));
        let expired = hs256(&sub_claims(user, &room, Some(-5)));
        let fresh = hs256(&sub_claims(user, &room, Some(60)));
        a.ok(json!({"cmd": "subscribe", "channel": room, "token": expired, "getToken": [fresh]}));
        let ev = a.wait_event(is("getToken"), TIMEOUT);
        assert_eq!(
            (&ev["scope"], &ev["channel"], &ev["index"]),
            (&json!("subscription"), &json!(room), &json!(0)),
            "{sdk}: {ev}"
        );
        a.wait_event(is_on("subscribed", &room), TIMEOUT);
        publisher.publish(&room, json!({"k": 2}));
        let ev = a.wait_event(is_on("publication", &room), TIMEOUT);
        assert_eq!(ev["data"], json!({"k": 2}), "{sdk}: {ev}");

        let room = format!("${}", unique(&format!("sdk-short-{sdk}")));
        let exp = now() + 2;
        let token = hs256(&json!({"sub": user, "channel": room, "exp": exp}));
        let fresh: Vec<String> = (1..=4)
            .map(|k| hs256(&json!({"sub": user, "channel": room, "exp": exp + 30 * k})))
            .collect();
        agent_subscribe(a, &room, json!({"token": token, "getToken": fresh}));
        short.push((room, exp));
    }
    for ((a, _), (room, exp)) in agents.iter_mut().zip(&short) {
        let sdk = a.sdk();
        let left =
            (instant_of(*exp) + Duration::from_secs(3)).saturating_duration_since(Instant::now());
        let ev = a.wait_event(
            |e| e["event"] == "getToken" && e["channel"] == room.as_str(),
            left,
        );
        assert_eq!(ev["index"], 0, "{sdk}: {ev}");
        publisher.publish(room, json!({"k": 3}));
        let ev = a.wait_event(is_on("publication", room), TIMEOUT);
        assert_eq!(ev["data"], json!({"k": 3}), "{sdk}: {ev}");
        // (The expired room's 109 is reported as a subscriptionError before
        // the SDK retries with getToken; this room has none.)
        let errors: Vec<Value> = events(a, "subscriptionError")
            .into_iter()
            .filter(|e| e["channel"] == room.as_str())
            .collect();
        assert!(errors.is_empty(), "{sdk}: {errors:?}");
        let gone = events(a, "unsubscribed");
        assert!(gone.is_empty(), "{sdk}: {gone:?}");
    }
    for (a, user) in &mut agents {
        let room = format!("${}", unique("sdk-none"));
        agent_subscribe_refused(a, &room, 103, "permission denied");
        let room = format!("${}", unique("sdk-theirs"));
        let theirs = hs256(&sub_claims(&format!("not-{user}"), &room, Some(60)));
        let opened = node.metric("roomcast_connections_opened_total");
        a.ok(json!({"cmd": "subscribe", "channel": room, "token": theirs}));
        let sdk = a.sdk();
        let ev = a.wait_event(is("disconnected"), TIMEOUT);
        assert_eq!(
            (&ev["code"], &ev["reason"]),
            (&json!(3500), &json!("invalid token")),
            "{sdk}: {ev}"
        );
        std::thread::sleep(Duration::from_millis(1000));
        assert_eq!(
            count(a, "connected"),
            1,
            "{sdk} reconnected: {:?}",
            a.events()
        );
        assert_eq!(
            node.metric("roomcast_connections_opened_total"),
            opened,
            "{sdk}"
        );
    }
    for (a, _) in agents {
        a.exit();
    }
}

// ---------------------------------------------------------------------------
// 4. Namespaces and permissions
// ---------------------------------------------------------------------------

/// One namespace per permission flag (and the combinations that matter);
/// anonymous connections allowed so both kinds of client can be refused.
const PERMISSIONS: &str = r#"
allow_anonymous_connect_without_token = true

# Rooms without a namespace: nothing granted.
[default_namespace]

[[namespace]]
name = "members"
allow_subscribe_for_client = true

[[namespace]]
name = "anonflag"
allow_subscribe_for_anonymous = true

[[namespace]]
name = "everyone"
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true

[[namespace]]
name = "pubclient"
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_client = true

[[namespace]]
name = "pubsub"
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true

[[namespace]]
name = "pubanon"
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_client = true
allow_publish_for_anonymous = true

[[namespace]]
name = "pubsubanon"
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_subscriber = true
allow_publish_for_anonymous = true

[[namespace]]
name = "dialog"
allow_user_limited_channels = true
allow_publish_for_subscriber = true
"#;

fn permissions_node(rt: Runtime) -> (Node, ConfigFile) {
    let cfg = ConfigFile::new(&format!(
        "token_hmac_secret = {}\n{PERMISSIONS}",
        toml_str(SECRET)
    ));
    (Node::embedded(rt, &["--config", cfg.path()]), cfg)
}

/// `Ok` or the error code of subscribing `c` to `room`.
fn try_subscribe(c: &mut CfClient, room: &str) -> Result<(), u64> {
    match c.call("subscribe", json!({"channel": room})) {
        Ok(_) => Ok(()),
        Err(e) => Err(e["code"].as_u64().unwrap_or_else(|| panic!("{e}"))),
    }
}

/// `Ok` or the error code of publishing `data` from `c` in `room`.
fn try_publish(c: &mut CfClient, room: &str, data: &Value) -> Result<(), u64> {
    match c.call("publish", json!({"channel": room, "data": data})) {
        Ok(_) => Ok(()),
        Err(e) => Err(e["code"].as_u64().unwrap_or_else(|| panic!("{e}"))),
    }
}

/// Every flag, allowed and denied, for a user and an anonymous connection,
/// through raw clients; an allowed publication is delivered, a refused one
/// is not.
fn permission_flags(rt: Runtime) {
    let (node, _cfg) = permissions_node(rt);
    let addr = node.addr();
    let mut u42 = cf_user(addr, "42");
    let mut u7 = cf_user(addr, "7");
    let mut u43 = cf_user(addr, "43");
    let mut anon = CfClient::connect(addr);

    let subs: &[(&str, &str, Result<(), u64>)] = &[
        ("42", "lobby", Err(103)),
        ("anon", "lobby", Err(103)),
        ("42", "nope:x", Err(102)),
        ("anon", "nope:x", Err(102)),
        ("42", ":x", Err(102)),
        ("42", "$members:x", Err(103)),
        ("42", "members:x", Ok(())),
        ("anon", "members:x", Err(103)),
        ("42", "anonflag:x", Err(103)),
        ("anon", "anonflag:x", Err(103)),
        ("42", "everyone:x", Ok(())),
        ("anon", "everyone:x", Ok(())),
        // `#` lists users only in a namespace that says so.
        ("42", "members:x#7", Ok(())),
        ("42", "dialog:chat#42,43", Ok(())),
        ("43", "dialog:chat#42,43", Ok(())),
        ("7", "dialog:chat#42,43", Err(103)),
        ("anon", "dialog:chat#42,43", Err(103)),
        ("7", "dialog:chat#7", Ok(())),
        ("42", "dialog:chat#7", Err(103)),
        ("42", "dialog:chat", Err(103)),
    ];
    for (who, room, want) in subs {
        let c = match *who {
            "42" => &mut u42,
            "7" => &mut u7,
            "43" => &mut u43,
            _ => &mut anon,
        };
        assert_eq!(try_subscribe(c, room), *want, "{who} subscribes to {room}");
    }

    // Publish. The watcher (user 7) is in every room it may join.
    let mut watcher = cf_user(addr, "7");
    for room in [
        "everyone:p",
        "pubclient:p",
        "pubsub:p",
        "pubanon:p",
        "pubsubanon:p",
    ] {
        watcher.subscribe(room);
    }
    // (who, room, subscribe first, outcome)
    let pubs: &[(&str, &str, bool, Result<(), u64>)] = &[
        ("42", "lobby", false, Err(103)),
        ("anon", "lobby", false, Err(103)),
        ("42", "nope:p", false, Err(102)),
        ("42", "everyone:p", true, Err(103)),
        ("anon", "everyone:p", true, Err(103)),
        ("42", "pubclient:p", false, Ok(())),
        ("anon", "pubclient:p", false, Err(103)),
        ("anon", "pubclient:p", true, Err(103)),
        ("42", "pubsub:p", false, Err(103)),
        ("42", "pubsub:p", true, Ok(())),
        ("anon", "pubsub:p", true, Err(103)),
        ("42", "pubanon:p", false, Ok(())),
        ("anon", "pubanon:p", false, Ok(())),
        ("anon", "pubsubanon:p", false, Err(103)),
        ("anon", "pubsubanon:p", true, Ok(())),
        ("7", "dialog:chat#42,43", false, Err(103)),
        ("42", "dialog:chat#42,43", true, Ok(())),
    ];
    let mut n = 0;
    for (who, room, subscribe_first, want) in pubs {
        let mut c = match *who {
            "42" => cf_user(addr, "42"),
            "7" => cf_user(addr, "7"),
            _ => CfClient::connect(addr),
        };
        if *subscribe_first {
            c.subscribe(room);
        }
        n += 1;
        let data = json!({"n": n, "who": who, "room": room});
        assert_eq!(
            try_publish(&mut c, room, &data),
            *want,
            "{who} publishes in {room} (subscribed first: {subscribe_first})"
        );
        let listener = if room.starts_with("dialog:") {
            &mut u43
        } else {
            &mut watcher
        };
        match want {
            Ok(()) => {
                let p = listener.recv_publication(room);
                assert_eq!(p["data"], data, "{p}");
                let user = if *who == "anon" { "" } else { who };
                assert_eq!(user_of(&p), user, "{p}");
            }
            Err(_) => listener.expect_no_push(Duration::from_millis(50)),
        }
    }
    watcher.expect_no_push(Duration::from_millis(200));
    u43.expect_no_push(Duration::from_millis(50));
}

/// The same refusals as the SDKs see them: a refused subscription is given
/// up with 102 or 103, a refused publish is an error 102 or 103, and the
/// connection stays up.
fn sdk_permission_errors(rt: Runtime) {
    let (node, _cfg) = permissions_node(rt);
    let addr = node.addr();
    let mut watcher = cf_user(addr, "7");
    for room in ["pubclient:s", "pubanon:s"] {
        watcher.subscribe(room);
    }
    for sdk in Sdk::ALL {
        let token = hs256(&json!({"sub": "42"}));
        let mut a = agent_connect(sdk, addr, json!({"token": token, "wait": true}));
        agent_subscribe(&mut a, "members:s", json!({}));
        agent_subscribe(&mut a, "dialog:s#42", json!({}));
        agent_subscribe_refused(&mut a, "anonflag:s", 103, "permission denied");
        agent_subscribe_refused(&mut a, "dialog:s#43", 103, "permission denied");
        agent_subscribe_refused(&mut a, "nope:s", 102, "unknown channel");
        agent_subscribe_refused(&mut a, "lobby", 103, "permission denied");
        let e = a.err(json!({"cmd": "publish", "channel": "everyone:s", "data": 1}));
        assert_code(&e, 103, &format!("{sdk} publish in everyone:s"));
        let e = a.err(json!({"cmd": "publish", "channel": "nope:s", "data": 1}));
        assert_code(&e, 102, &format!("{sdk} publish in nope:s"));
        a.ok(json!({"cmd": "publish", "channel": "pubclient:s", "data": sdk.name()}));
        let p = watcher.recv_publication("pubclient:s");
        assert_eq!((p["data"].as_str(), user_of(&p)), (Some(sdk.name()), "42"));
        assert_eq!(count(&mut a, "disconnected"), 0, "{sdk}: {:?}", a.events());
        a.exit();

        // Anonymous.
        let mut a = agent_connect(sdk, addr, json!({"wait": true}));
        agent_subscribe(&mut a, "everyone:s", json!({}));
        agent_subscribe_refused(&mut a, "members:s", 103, "permission denied");
        let e = a.err(json!({"cmd": "publish", "channel": "pubclient:s", "data": 1}));
        assert_code(&e, 103, &format!("{sdk} anonymous publish in pubclient:s"));
        a.ok(json!({"cmd": "publish", "channel": "pubanon:s", "data": sdk.name()}));
        let p = watcher.recv_publication("pubanon:s");
        assert_eq!((p["data"].as_str(), user_of(&p)), (Some(sdk.name()), ""));
        assert_eq!(count(&mut a, "disconnected"), 0, "{sdk}: {:?}", a.events());
        a.exit();
    }
    watcher.expect_no_push(Duration::from_millis(200));
}

// ---------------------------------------------------------------------------
// 5. The seed protocol
// ---------------------------------------------------------------------------

/// `?token=` on a seed upgrade: required (401 without, or with a bad or
/// expired one; the body does not say what is wrong with a bad one), and
/// the user it names is the one the rules see; a room the connection may
/// not use closes it 1008 "permission denied"; `--seed-protocol off`
/// answers 404 whatever the token.
fn seed_protocol_tokens(rt: Runtime) {
    let cfg = hmac_config(
        "",
        "[default_namespace]\n\
         allow_subscribe_for_client = true\n\
         allow_publish_for_subscriber = true\n\
         [[namespace]]\n\
         name = \"ro\"\n\
         allow_subscribe_for_client = true\n\
         [[namespace]]\n\
         name = \"dialog\"\n\
         allow_user_limited_channels = true\n\
         allow_publish_for_subscriber = true\n",
    );
    let node = Node::embedded(rt, &["--config", cfg.path()]);
    let addr = node.addr();
    let token = |user: &str| hs256(&json!({"sub": user}));

    let r = upgrade(addr, "/", None);
    assert_eq!(
        (r.status, r.body.as_str()),
        (401, "a token is required\n"),
        "{r:?}"
    );
    let r = upgrade(addr, "/chat?token=", None);
    assert_eq!(
        (r.status, r.body.as_str()),
        (401, "a token is required\n"),
        "{r:?}"
    );
    let expired = hs256(&conn_claims("u", Some(-5)));
    let r = upgrade(addr, &format!("/?token={expired}"), None);
    assert_eq!(
        (r.status, r.body.as_str()),
        (401, "token expired\n"),
        "{r:?}"
    );
    for bad in [
        hs256_with(OTHER_SECRET, &json!({"sub": "u"})),
        unsigned(&json!({"sub": "u"})),
        "garbage".to_string(),
    ] {
        let r = upgrade(addr, &format!("/?token={bad}"), None);
        assert_eq!(
            (r.status, r.body.as_str()),
            (401, "invalid token\n"),
            "{bad}: {r:?}"
        );
    }
    assert_eq!(node.metric("roomcast_auth_refused_total"), 6);
    assert_eq!(
        upgrade(addr, &format!("/?token={}", token("u")), None).status,
        101
    );
    // Percent-escaped, and after another parameter.
    let escaped = token("u").replace('.', "%2E");
    assert_eq!(
        upgrade(addr, &format!("/x?a=1&token={escaped}"), None).status,
        101
    );

    // A seed client and a Centrifugo client chat, each as its user.
    let mut cf = cf_user(addr, "bob");
    cf.subscribe("lobby");
    let mut seed = Client::connect_path(addr, &format!("/?token={}", token("alice")));
    seed.join("lobby");
    seed.send("lobby", "hello from seed");
    assert_eq!(cf.recv_publication("lobby")["data"], "hello from seed");
    assert_eq!(seed.recv(), "hello from seed");
    cf.publish("lobby", json!("hello from cf"));
    assert_eq!(seed.recv(), "hello from cf");
    assert_eq!(cf.recv_publication("lobby")["data"], "hello from cf");
    // The token's user is who the user-limited room admits.
    let mut s42 = Client::connect_path(addr, &format!("/?token={}", token("42")));
    s42.join("dialog:d#42");
    s42.send("dialog:d#42", "mine");
    assert_eq!(s42.recv(), "mine");

    let denied: &[(&str, &[&str])] = &[
        ("7", &["SUBSCRIBE dialog:d#42"]),
        ("alice", &["SUBSCRIBE $secret"]),
        ("alice", &["SUBSCRIBE nope:x"]),
        ("alice", &["SUBSCRIBE ro:x", "SEND ro:x"]),
        ("alice", &["SEND lobby"]),
    ];
    for (user, steps) in denied {
        let mut c = Client::connect_path(addr, &format!("/?token={}", token(user)));
        for step in *steps {
            match step.split_once(' ').unwrap() {
                ("SUBSCRIBE", room) => c.subscribe(room),
                (_, room) => c.send(room, "x"),
            }
        }
        eprintln!("seed {user}: {steps:?} closes 1008?");
        c.expect_close(1008, "permission denied");
    }
    cf.expect_no_push(Duration::from_millis(100));

    let off = Node::embedded(rt, &["--config", cfg.path(), "--seed-protocol", "off"]);
    let r = upgrade(off.addr(), &format!("/?token={}", token("u")), None);
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(upgrade(off.addr(), "/", None).status, 404);
    assert_eq!(upgrade(off.addr(), CF_PATH, None).status, 101);
}

// ---------------------------------------------------------------------------
// 6. Origin
// ---------------------------------------------------------------------------

/// The Origin check on both protocols' upgrades: without `allowed_origins`
/// an Origin must name the Host; with patterns it must match one (and the
/// same-host rule no longer applies); `*` allows all; no Origin always
/// passes. The flag wins over the file.
fn origin_check(rt: Runtime) {
    let cases = |addr: SocketAddr, rules: &[(Option<&str>, u16)], what: &str| {
        for path in ["/", CF_PATH] {
            for (origin, want) in rules {
                let r = upgrade(addr, path, *origin);
                assert_eq!(
                    r.status, *want,
                    "{what}: {path} with Origin {origin:?}: {r:?}"
                );
                if *want == 403 {
                    assert_eq!(r.body, "origin not allowed (see --allowed-origins)\n");
                }
            }
        }
    };
    let node = Node::embedded(rt, &[]);
    let same = format!("http://{}", node.addr());
    let same_https = format!("https://{}", node.addr());
    let localhost = format!("http://localhost:{}", node.addr().port());
    let other_port = format!("http://127.0.0.1:{}", node.addr().port() ^ 1);
    cases(
        node.addr(),
        &[
            (None, 101),
            (Some(&same), 101),
            (Some(&same.to_uppercase()), 101),
            (Some(&same_https), 101),
            (Some(&localhost), 403),
            (Some(&other_port), 403),
            (Some("https://evil.test"), 403),
            (Some("null"), 403),
        ],
        "the same-host rule",
    );
    assert_eq!(node.metric("roomcast_origin_refused_total"), 8);

    let node = Node::embedded(rt, &["--allowed-origins", "https://*.example.com"]);
    let same = format!("http://{}", node.addr());
    cases(
        node.addr(),
        &[
            (None, 101),
            (Some("https://a.example.com"), 101),
            (Some("https://A.b.Example.com"), 101),
            (Some("https://example.com"), 403),
            (Some("http://a.example.com"), 403),
            (Some("https://a.example.com.evil.test"), 403),
            (Some("https://evil.test"), 403),
            (Some(&same), 403),
        ],
        "--allowed-origins https://*.example.com",
    );

    let node = Node::embedded(rt, &["--allowed-origins", "*"]);
    cases(
        node.addr(),
        &[
            (None, 101),
            (Some("https://evil.test"), 101),
            (Some("null"), 101),
        ],
        "--allowed-origins *",
    );
    assert_eq!(node.metric("roomcast_origin_refused_total"), 0);

    let cfg = ConfigFile::new("allowed_origins = [\"https://app.test\", \"http://localhost:*\"]\n");
    let node = Node::embedded(rt, &["--config", cfg.path()]);
    cases(
        node.addr(),
        &[
            (Some("https://app.test"), 101),
            (Some("http://localhost:3000"), 101),
            (Some("https://flag.test"), 403),
        ],
        "allowed_origins in the file",
    );
    let node = Node::embedded(
        rt,
        &[
            "--config",
            cfg.path(),
            "--allowed-origins",
            "https://flag.test,https://two.test",
        ],
    );
    cases(
        node.addr(),
        &[
            (Some("https://flag.test"), 101),
            (Some("https://two.test"), 101),
            (Some("https://app.test"), 403),
        ],
        "--allowed-origins over the file",
    );
}

// ---------------------------------------------------------------------------
// 7. The real binary and its config file
// ---------------------------------------------------------------------------

/// The real binary with `--config`: the file's token key, namespaces,
/// origins and a scalar flag (`seed_protocol = "off"`) all apply.
fn config_file_drives_the_binary(rt: Runtime) {
    let cfg = hmac_config(
        "seed_protocol = \"off\"\nallowed_origins = [\"https://app.test\"]\n",
        USERS_MAY_CHAT,
    );
    let bin = BinaryNode::start(rt, &["--config", cfg.path()], Spawn::default());
    let addr = bin.addr();
    let log = bin.log();
    assert!(
        !log.iter().any(|l| l.contains("OPEN MODE")),
        "a configured node logged open mode: {log:?}"
    );
    expect_connect_refused(addr, json!({}), "no token at the binary");
    let mut c = cf_user(addr, "bin-user");
    let room = unique("bin");
    c.subscribe(&room);
    c.publish(&room, json!("x"));
    assert_eq!(user_of(&c.recv_publication(&room)), "bin-user");
    let token = hs256(&json!({"sub": "u"}));
    assert_eq!(upgrade(addr, &format!("/?token={token}"), None).status, 404);
    assert_eq!(upgrade(addr, CF_PATH, Some("https://app.test")).status, 101);
    assert_eq!(
        upgrade(addr, CF_PATH, Some("https://evil.test")).status,
        403
    );
    assert_eq!(bin.metric("roomcast_auth_refused_total"), 1);
}

/// A bad `roomcast.toml` makes the real binary exit non-zero before it
/// listens, with one line naming the file, the line and the key.
fn bad_config_files_stop_the_binary(rt: Runtime) {
    let secret = format!("token_hmac_secret = {}\n", toml_str(SECRET));
    // (what, file text, line, key, a piece of the message)
    let cases: Vec<(&str, String, usize, &str, &str)> = vec![
        (
            "an unknown key",
            "max_frame_bytes = 4096\nlisten_address = \"127.0.0.1:0\"\n".into(),
            2,
            "listen_address",
            "unknown key",
        ),
        (
            "an unknown namespace option",
            format!("{secret}[[namespace]]\nname = \"chat\"\nallow_everything = true\n"),
            4,
            "namespace[chat].allow_everything",
            "unknown namespace option",
        ),
        (
            "a flag of the wrong type",
            "client_ping_interval = \"25s\"\nmax_frame_bytes = \"big\"\n".into(),
            2,
            "max_frame_bytes",
            "expected an integer, found string",
        ),
        (
            "a permission of the wrong type",
            format!("{secret}\n[default_namespace]\nallow_subscribe_for_client = \"yes\"\n"),
            4,
            "default_namespace.allow_subscribe_for_client",
            "expected true or false, found string",
        ),
        (
            "a grace that is not a duration",
            format!("{secret}token_expire_grace = 5\n"),
            2,
            "token_expire_grace",
            "expected a duration string",
        ),
        (
            "an unknown algorithm",
            format!("{secret}token_algorithms = [\"HS256\", \"XY999\"]\n"),
            2,
            "token_algorithms",
            "unknown algorithm \"XY999\"",
        ),
        (
            "an algorithm without its key",
            format!("{secret}token_algorithms = [\"RS256\"]\n"),
            2,
            "token_algorithms",
            "algorithm RS256 needs an RSA token_public_key",
        ),
        (
            "an unreadable key file",
            "# keys\ntoken_public_key = \"missing.pem\"\n".into(),
            2,
            "token_public_key",
            "cannot read",
        ),
        (
            "a key file that is no key",
            "token_public_key = \"junk.pem\"\n".into(),
            1,
            "token_public_key",
            "not a PEM file",
        ),
        (
            "a flag's value out of its range",
            "max_frame_bytes = 1\n".into(),
            1,
            "max_frame_bytes",
            "1 is not in 64..=16777216",
        ),
        (
            "a TOML syntax error",
            "token_audience = \"roomcast\"\ntoken_issuer = \"https://auth.test\n".into(),
            2,
            "token_issuer",
            "invalid TOML",
        ),
        (
            "a namespace defined twice",
            format!("{secret}[[namespace]]\nname = \"chat\"\n[[namespace]]\nname = \"chat\"\n"),
            5,
            "namespace[#2].name",
            "namespace \"chat\" is defined twice",
        ),
    ];
    for (what, text, line, key, message) in &cases {
        let cfg = ConfigFile::new(text);
        cfg.dir().write("junk.pem", "this is not a key\n");
        let bin = BinaryNode::spawn(
            rt,
            &["--listen", "127.0.0.1:0", "--config", cfg.path()],
            Spawn::default(),
        );
        let (code, log) = bin.wait_exit(TIMEOUT);
        let lines: Vec<&String> = log.iter().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            code.is_some_and(|c| c != 0),
            "{what}: exit code {code:?}, log {log:?}"
        );
        assert_eq!(lines.len(), 1, "{what}: not one line: {log:?}");
        let l = lines[0];
        let at = format!("error: {}:{line}: {key}: ", cfg.path());
        assert!(
            l.starts_with(&at),
            "{what}: {l:?} does not start with {at:?}"
        );
        assert!(
            l.contains(message),
            "{what}: {l:?} does not say {message:?}"
        );
        assert!(!l.contains(SECRET), "{what}: the secret is echoed: {l:?}");
        if *key == "token_public_key" {
            let file = if message.contains("cannot") {
                "missing.pem"
            } else {
                "junk.pem"
            };
            assert!(l.contains(file), "{what}: {l:?} does not name {file}");
        }
    }
    // The file itself missing.
    let dir = TempDir::new("roomcast-noconfig");
    let path = dir.path().join("roomcast.toml");
    let path = path.to_str().unwrap();
    let bin = BinaryNode::spawn(
        rt,
        &["--listen", "127.0.0.1:0", "--config", path],
        Spawn::default(),
    );
    let (code, log) = bin.wait_exit(TIMEOUT);
    assert!(
        code.is_some_and(|c| c != 0),
        "exit code {code:?}, log {log:?}"
    );
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(
        log[0].starts_with(&format!("error: {path}: cannot read the config file")),
        "{log:?}"
    );
}
