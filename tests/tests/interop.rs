//! Interop with the tutorial server (tests/seed-node, `node server.js`): a
//! roomcast node and the seed on one Redis serve one room, and messages flow
//! both ways. Skips, saying why, only where `node` or `npm` is missing, and
//! fails there instead under CI (see [`skip_or_fail`]).

use std::path::Path;

use roomcast_tests::{
    Node, RedisServer, Runtime, SeedNode, install_seed, json, scenarios, seed_payload,
    seed_unavailable, skip_or_fail,
};

scenarios!(roomcast_and_seed_share_a_room);

fn roomcast_and_seed_share_a_room(rt: Runtime) {
    if let Some(why) = seed_unavailable() {
        skip_or_fail(&format!(
            "interop with the seed needs Node.js and npm (Debian packages nodejs and npm): {why}"
        ));
        return;
    }
    let dir = install_seed(Path::new(env!("CARGO_TARGET_TMPDIR")));
    let redis = RedisServer::start();
    let node = Node::redis(rt, &redis, &[]);
    let seed = SeedNode::start(&dir, &redis.url());

    let mut r = node.client();
    let mut s = seed.client();
    let mut s2 = seed.client();
    r.subscribe("mixed");
    redis.wait_numsub("mixed", 1);
    // The seed subscribes in the background: wait for it before sending.
    s.send_json(&json!({"type": "SUBSCRIBE", "room": "mixed"}));
    redis.wait_numsub("mixed", 2);
    // The room is subscribed already, so nothing shows s2's join in Redis;
    // a second, new room does, and the seed handles a connection's frames
    // in order.
    s2.send_json(&json!({"type": "SUBSCRIBE", "room": "mixed"}));
    s2.send_json(&json!({"type": "SUBSCRIBE", "room": "s2-barrier"}));
    redis.wait_numsub("s2-barrier", 1);

    // roomcast → seed (and back to the roomcast member itself).
    r.send("mixed", "hello from roomcast");
    assert_eq!(r.recv(), "hello from roomcast");
    assert_eq!(s.recv(), "hello from roomcast");
    assert_eq!(s2.recv(), "hello from roomcast");

    // seed → roomcast.
    s.send("mixed", "hello from the seed");
    assert_eq!(s.recv(), "hello from the seed");
    assert_eq!(r.recv(), "hello from the seed");
    assert_eq!(s2.recv(), "hello from the seed");

    // Objects, both ways, as compact JSON.
    r.send("mixed", json!({"from": "roomcast", "n": [1, 2, 3]}));
    for c in [&mut r, &mut s, &mut s2] {
        assert_eq!(c.recv(), r#"{"from":"roomcast","n":[1,2,3]}"#);
    }
    s.send("mixed", json!({"from": "seed", "ok": true}));
    for c in [&mut r, &mut s, &mut s2] {
        assert_eq!(c.recv(), r#"{"from":"seed","ok":true}"#);
    }

    // Order per sender, both ways.
    for i in 0..20 {
        r.send("mixed", format!("r{i}"));
    }
    for i in 0..20 {
        s.send("mixed", format!("s{i}"));
    }
    for c in [&mut r, &mut s, &mut s2] {
        let got = c.recv_n(40);
        let rs: Vec<&String> = got.iter().filter(|m| m.starts_with('r')).collect();
        let ss: Vec<&String> = got.iter().filter(|m| m.starts_with('s')).collect();
        assert_eq!(
            rs,
            (0..20)
                .map(|i| format!("r{i}"))
                .collect::<Vec<_>>()
                .iter()
                .collect::<Vec<_>>()
        );
        assert_eq!(
            ss,
            (0..20)
                .map(|i| format!("s{i}"))
                .collect::<Vec<_>>()
                .iter()
                .collect::<Vec<_>>()
        );
    }

    // A backend's PUBLISH reaches both servers' members.
    redis.publish("mixed", &seed_payload("mixed", &json!("from the backend")));
    for c in [&mut r, &mut s, &mut s2] {
        assert_eq!(c.recv(), "from the backend");
    }
}
