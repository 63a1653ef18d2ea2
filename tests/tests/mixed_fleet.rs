//! A mixed fleet: one roomcast-tokio node and one roomcast-smol node on one
//! Redis serve one room. Needs the `smol` feature (see tests/Cargo.toml).
#![cfg(feature = "smol")]

use std::time::Duration;

use roomcast_tests::{Node, RedisServer, Runtime, json, seed_payload};

#[test]
fn tokio_and_smol_nodes_share_a_room() {
    roomcast_tests::run_scenario("tokio_and_smol_nodes_share_a_room", Runtime::Tokio, |_| {
        let redis = RedisServer::start();
        let t = Node::redis(Runtime::Tokio, &redis, &[]);
        let s = Node::redis(Runtime::Smol, &redis, &[]);
        let mut a = t.client();
        let mut b = s.client();
        let mut b2 = s.client();
        a.subscribe("fleet");
        b.subscribe("fleet");
        redis.wait_numsub("fleet", 2);
        b2.join("fleet");
        assert_eq!(redis.numsub("fleet"), 2);

        for i in 0..50 {
            a.send("fleet", format!("t{i}"));
            b.send("fleet", json!({"s": i}));
        }
        for c in [&mut a, &mut b, &mut b2] {
            let got = c.recv_n(100);
            let ts: Vec<String> = got.iter().filter(|m| m.starts_with('t')).cloned().collect();
            let ss: Vec<String> = got.iter().filter(|m| m.starts_with('{')).cloned().collect();
            assert_eq!(ts, (0..50).map(|i| format!("t{i}")).collect::<Vec<_>>());
            assert_eq!(
                ss,
                (0..50)
                    .map(|i| format!("{{\"s\":{i}}}"))
                    .collect::<Vec<_>>()
            );
        }

        redis.publish("fleet", &seed_payload("fleet", &json!("from the backend")));
        for c in [&mut a, &mut b, &mut b2] {
            assert_eq!(c.recv(), "from the backend");
        }

        // Each node drops its subscription when its last member leaves.
        b.close();
        b2.close();
        redis.wait_numsub("fleet", 1);
        a.send("fleet", "only tokio left");
        assert_eq!(a.recv(), "only tokio left");
        a.expect_silence(Duration::from_millis(100));
        drop(a);
        redis.wait_no_channels();
    });
}
