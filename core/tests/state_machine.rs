//! Model-based tests: random sequences of every input a runtime gives the
//! node (sockets, frames in both client protocols, writers, timers, and a
//! simulated broker task over a simulated Redis), run against a real `Node`
//! and the reference model in `roomcast_core::testing`, in remote and
//! embedded broker modes, with the invariants a–k checked after every step.
//!
//! 256 cases of up to 200 steps by default; `PROPTEST_CASES=N` changes it.

use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use roomcast_core::BrokerState;
use roomcast_core::testing::{Harness, Op, Proto, Setup};

/// Strategy over every operation, weighted so that sequences build up state
/// (connections, memberships, a live broker link) before tearing it down;
/// a shutdown comes in about one run in six.
fn op() -> impl Strategy<Value = Op> {
    let idx = any::<u8>();
    // Mostly two rooms, so that memberships overlap; mostly the long
    // message, so that outboxes fill.
    let room = || prop_oneof![6 => 0u8..2, 1 => 0u8..4, 2 => any::<u8>()];
    // Joins spread a little wider, so that room limits are reached.
    let join = prop_oneof![4 => 0u8..2, 2 => 0u8..4, 1 => any::<u8>()];
    let message = prop_oneof![1 => Just(4u8), 2 => any::<u8>()];
    let proto = prop_oneof![
        4 => Just(Proto::Seed),
        4 => Just(Proto::Centrifugo),
        1 => Just(Proto::CentrifugoLate),
    ];
    prop_oneof![
        40 => (prop_oneof![5 => Just(false), 1 => Just(true)], proto)
            .prop_map(|(raced, p)| Op::Open(raced, p)),
        80 => (idx, join).prop_map(|(c, r)| Op::Subscribe(c, r)),
        40 => (idx, room()).prop_map(|(c, r)| Op::Unsubscribe(c, r)),
        60 => (idx, room(), message.clone()).prop_map(|(c, r, m)| Op::Send(c, r, m)),
        15 => (idx, any::<u8>()).prop_map(|(c, k)| Op::Bad(c, k)),
        20 => idx.prop_map(Op::Pong),
        3 => idx.prop_map(Op::Connect),
        100 => idx.prop_map(Op::Drain),
        30 => (idx, any::<bool>()).prop_map(|(c, p)| Op::End(c, p)),
        10 => idx.prop_map(Op::OutboundFull),
        10 => any::<u8>().prop_map(Op::Http),
        20 => (room(), message).prop_map(|(r, m)| Op::Api(r, m)),
        10 => Just(Op::AcceptFailed),
        80 => Just(Op::BrokerPoll),
        80 => prop_oneof![4 => Just(true), 1 => Just(false)].prop_map(Op::BrokerStep),
        60 => Just(Op::Deliver),
        60 => Just(Op::BrokerRun),
        30 => (room(), any::<u8>()).prop_map(|(r, k)| Op::External(r, k)),
        10 => (any::<u8>(), any::<u8>()).prop_map(|(r, k)| Op::Stray(r, k)),
        10 => Just(Op::SubscriberLost),
        10 => any::<u8>().prop_map(Op::Stale),
        50 => (0u16..60).prop_map(Op::Advance),
        10 => (0u16..400).prop_map(Op::Advance),
        10 => (0u16..400).prop_map(Op::Late),
        1 => Just(Op::Shutdown),
    ]
}

/// The reference side only generates operations (the model itself lives in
/// the harness, so that the fuzz targets share it); its state is the setup.
struct Ops;

impl ReferenceStateMachine for Ops {
    type State = Setup;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Self::State> {
        (any::<bool>(), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(local, rate_limit, no_keepalive)| Setup {
                local,
                rate_limit,
                no_keepalive,
            })
            .boxed()
    }

    fn transitions(_: &Self::State) -> BoxedStrategy<Self::Transition> {
        op().boxed()
    }

    fn apply(state: Self::State, _: &Self::Transition) -> Self::State {
        state
    }
}

struct Sut;

impl StateMachineTest for Sut {
    type SystemUnderTest = Harness;
    type Reference = Ops;

    fn init_test(setup: &Setup) -> Self::SystemUnderTest {
        Harness::new(*setup)
    }

    fn apply(mut sut: Harness, _: &Setup, op: Op) -> Harness {
        sut.apply(op);
        sut
    }

    fn check_invariants(sut: &Harness, _: &Setup) {
        // `apply` checks every invariant after each step.
        let _ = sut;
    }
}

prop_state_machine! {
    #![proptest_config(Config::default())]

    #[test]
    fn node_matches_the_model(sequential 1..200 => Sut);
}

/// Redis answers everything until the broker task is idle.
fn settle(h: &mut Harness) {
    h.apply(Op::BrokerRun);
}

/// Lets time pass up to the node's next deadline (the harness has checked
/// it against the model's prediction), and fires it.
fn to_deadline(h: &mut Harness) {
    let d = h.node().deadline().expect("a deadline");
    let ms = (d - h.now()).as_millis() as u16;
    h.apply(Op::Advance(ms));
}

/// Server API publishes on Redis: one held while the link is not up yet,
/// answered once Redis took it; one lost with a failing link, answered 100;
/// one held at shutdown, dropped and answered 100. Members get the
/// published ones like any publish (the harness checks every answer and
/// delivery against the model).
#[test]
fn scripted_remote_api_publishes() {
    use Op::*;
    use Proto::*;
    let mut h = Harness::new(Setup::REMOTE);
    h.run(&[Open(false, Seed), Subscribe(0, 0)]);
    // Before the link is up: held, and answered once it went out.
    h.run(&[Api(0, 0)]);
    assert_eq!(h.tally().api_published, 0);
    settle(&mut h);
    assert_eq!(h.tally().api_published, 1);
    assert!(h.tally().echoed_publishes >= 1);
    assert_eq!(h.node().queued_frames(h.conns()[0]).len(), 1);
    // Redis fails while the publish is out: its fate is unknown, and the
    // backend is told it failed.
    h.run(&[Api(0, 2), BrokerPoll, BrokerStep(false)]);
    assert_eq!((h.tally().api_published, h.tally().api_failed), (1, 1));
    // Held while the link is down, then the node shuts down: dropped.
    h.run(&[Api(0, 1), Shutdown]);
    assert_eq!((h.tally().api_published, h.tally().api_failed), (1, 2));
    settle(&mut h);
}

/// In embedded mode an API publish is delivered and answered at once.
#[test]
fn scripted_local_api_publishes() {
    use Op::*;
    use Proto::*;
    let mut h = Harness::new(Setup::LOCAL);
    h.run(&[
        Open(false, Centrifugo),
        Subscribe(0, 1),
        Api(1, 5),
        Api(1, 8),
    ]);
    assert_eq!((h.tally().api_published, h.tally().api_failed), (1, 1));
    assert_eq!(h.tally().cf_pushes, 1);
}

#[test]
fn scripted_remote_chat_outage_and_recovery() {
    use Op::*;
    use Proto::*;
    let mut h = Harness::new(Setup::REMOTE);
    h.run(&[
        Open(false, Seed),
        Open(false, Seed),
        Subscribe(0, 0),
        Subscribe(1, 0),
        Subscribe(1, 1),
    ]);
    settle(&mut h);
    assert!(h.node().broker_up(), "{:?}", h.node().broker_state());
    // A message goes out, comes back from Redis, reaches both members.
    h.run(&[Send(0, 0, 0)]);
    settle(&mut h);
    assert!(h.tally().echoed_publishes >= 1);
    assert_eq!(h.node().queued_frames(h.conns()[1]).len(), 1);
    h.run(&[Drain(0), Drain(1)]);
    // The subscriber dies: sends are held, the fifth of five dropped.
    h.run(&[SubscriberLost]);
    assert!(!h.node().broker_up());
    for _ in 0..5 {
        h.apply(Send(0, 1, 1));
    }
    assert_eq!(h.node().snapshot().broker.buffer_dropped, 1);
    // The retry comes within the backoff; held publishes go out in order,
    // and every room is subscribed again.
    to_deadline(&mut h);
    settle(&mut h);
    assert!(h.node().broker_up());
    let s = h.node().snapshot();
    assert_eq!((s.broker.published, s.subscriptions), (5, 2));
    assert_eq!(
        h.node().queued_frames(h.conns()[1]).len(),
        4,
        "the four held, fed back to 1"
    );
    h.run(&[Drain(1)]);
    // Other publishers: JSON, info, oversized.
    h.run(&[
        Unsubscribe(1, 1),
        End(0, true),
        External(0, 1),
        External(0, 3),
        External(0, 9),
    ]);
    settle(&mut h);
    assert_eq!(h.node().snapshot().broker_payloads_too_large, 1);
    assert_eq!(h.node().queued_frames(h.conns()[0]).len(), 2);
    // Probes keep it up while Redis answers them.
    for _ in 0..10 {
        h.apply(Advance(60));
        settle(&mut h);
        assert!(h.node().broker_up());
    }
    h.run(&[
        Drain(0),
        Shutdown,
        BrokerPoll,
        BrokerPoll,
        Drain(0),
        Open(true, Seed),
        Drain(0),
    ]);
    let s = h.node().snapshot();
    assert_eq!((s.broker.connects, s.broker.failures), (2, 1));
    assert_eq!(h.node().broker_state(), BrokerState::Stopped);
    assert_eq!(s.sockets, 0);
}

/// Embedded mode: a publish reaches every member, the sender included,
/// with no broker session at all.
#[test]
fn scripted_local_chat_slow_consumer_and_shutdown() {
    use Op::*;
    use Proto::*;
    let mut h = Harness::new(Setup::LOCAL);
    assert!(h.node().broker_up());
    assert_eq!(h.node().deadline(), None);
    h.run(&[
        Open(false, Seed),
        Open(false, Seed),
        Open(false, Seed),
        Subscribe(0, 3),
        Subscribe(1, 3),
        Send(0, 3, 7),
    ]);
    for i in 0..2 {
        assert_eq!(h.node().queued_frames(h.conns()[i]), ["café \"q\""]);
    }
    assert!(h.node().queued_frames(h.conns()[2]).is_empty());
    // 1 does not read: four long messages fill it, the fifth closes it.
    for _ in 0..4 {
        h.run(&[Drain(0), Send(0, 3, 4)]);
    }
    assert!(!h.node().is_closing(h.conns()[1]));
    h.run(&[Drain(0), Send(0, 3, 4)]);
    let s = h.node().snapshot();
    assert_eq!(
        (s.slow_consumer_closes, s.deliveries, s.broker.published),
        (1, 12, 0)
    );
    h.run(&[
        BrokerPoll,
        Http(0),
        Shutdown,
        Drain(0),
        Drain(2),
        End(0, false),
        End(1, true),
    ]);
    h.run(&[Http(0), Open(false, Seed), Open(true, Seed), End(0, false)]);
    assert_eq!(h.node().snapshot().rejected_connections, 1);
}

/// A paused Redis: the links connect and answer their PING, the
/// subscriptions even complete, but the probe never comes back (or its
/// publish hangs until `--redis-timeout`). The session is never up, and
/// every attempt waits longer than the one before, up to the cap.
#[test]
fn a_link_whose_probe_never_returns_is_never_up_and_the_backoff_grows() {
    use Op::*;
    use Proto::*;
    let mut h = Harness::new(Setup::REMOTE);
    h.run(&[Open(false, Seed), Subscribe(0, 0), Send(0, 0, 0)]);
    for round in 0..8 {
        // Connect, then the subscriptions and the probe.
        h.run(&[BrokerPoll, BrokerStep(true), BrokerPoll, BrokerStep(true)]);
        if round % 2 == 0 {
            // The probe is published and lost.
            h.run(&[BrokerStep(true)]);
        }
        assert!(!h.node().broker_up());
        assert!(matches!(
            h.node().broker_state(),
            BrokerState::Verifying { .. }
        ));
        // Its deadline passes: the link is reset.
        for ms in [50, 50, 49] {
            h.apply(Advance(ms));
            assert!(!h.node().broker_up());
        }
        h.apply(Advance(1));
        assert!(matches!(h.node().broker_state(), BrokerState::Down { .. }));
        if round % 2 == 1 {
            // The hung probe times out in the broker task.
            h.apply(BrokerStep(false));
        }
        to_deadline(&mut h);
        assert!(matches!(
            h.node().broker_state(),
            BrokerState::Connecting { .. }
        ));
    }
    let nominal: Vec<u64> = h
        .backoffs()
        .iter()
        .map(|(n, _)| n.as_millis() as u64)
        .collect();
    assert_eq!(nominal, [10, 20, 40, 80, 160, 200, 200, 200]);
    for (n, d) in h.backoffs() {
        assert!(*d >= *n / 2 && d <= n, "{d:?} for {n:?}");
    }
    let s = h.node().snapshot();
    assert_eq!(
        (s.broker.connects, s.broker.failures, s.broker_up),
        (0, 8, false)
    );
    assert_eq!(s.publish_buffer_depth, 1, "the publish is held throughout");
}

/// The backoff restarts from its base only once a link proved itself.
#[test]
fn the_backoff_restarts_only_after_a_proven_link() {
    use Op::*;
    let mut h = Harness::new(Setup::REMOTE);
    // Three attempts fail to connect at all.
    for _ in 0..3 {
        h.run(&[BrokerPoll, BrokerStep(false)]);
        to_deadline(&mut h);
    }
    // One connects and proves itself; then its subscriber dies.
    settle(&mut h);
    assert!(h.node().broker_up());
    h.run(&[SubscriberLost, BrokerPoll]);
    to_deadline(&mut h);
    // This one connects but never proves itself: no restart.
    h.run(&[BrokerPoll, BrokerStep(true), SubscriberLost]);
    to_deadline(&mut h);
    let nominal: Vec<u64> = h
        .backoffs()
        .iter()
        .map(|(n, _)| n.as_millis() as u64)
        .collect();
    assert_eq!(nominal, [10, 20, 40, 10, 20]);
    assert_eq!(h.node().snapshot().broker.connects, 1);
}

/// Every publish is published, unknown, held or dropped, and the model
/// tells which.
#[test]
fn publishes_are_accounted_for() {
    use Op::*;
    use Proto::*;
    let mut h = Harness::new(Setup::REMOTE);
    h.run(&[Open(false, Seed)]);
    settle(&mut h);
    // Five while up and the broker task busy: four queued, one dropped.
    for _ in 0..5 {
        h.apply(Send(0, 2, 0));
    }
    let s = h.node().snapshot();
    assert_eq!((s.publish_buffer_depth, s.broker.queue_dropped), (4, 1));
    // Their pipeline fails: fate unknown.
    h.run(&[BrokerPoll, BrokerStep(false)]);
    assert_eq!(h.node().snapshot().broker.unknown, 4);
    // Five while down: four held, one dropped.
    for _ in 0..5 {
        h.apply(Send(0, 2, 1));
    }
    let s = h.node().snapshot();
    assert_eq!((s.publish_buffer_depth, s.broker.buffer_dropped), (4, 1));
    // The next proven link takes the held ones, in order.
    to_deadline(&mut h);
    settle(&mut h);
    let s = h.node().snapshot();
    assert_eq!((s.broker.published, s.publish_buffer_depth), (4, 0));
    let b = s.broker;
    assert_eq!(
        b.published + b.unknown + b.queue_dropped + b.buffer_dropped,
        10
    );
    assert_eq!(h.tally().unreported, 0);
}

/// Subscription changes coalesce per channel until the broker task polls.
#[test]
fn subscription_changes_coalesce() {
    use Op::*;
    use Proto::*;
    let mut h = Harness::new(Setup::REMOTE);
    h.run(&[Open(false, Seed), Open(false, Seed)]);
    settle(&mut h);
    // A join and a leave before the poll cancel out.
    h.run(&[Subscribe(0, 0), Unsubscribe(0, 0)]);
    assert_eq!(h.node().snapshot().pending_subscription_changes, 0);
    h.run(&[
        Subscribe(0, 0),
        Subscribe(1, 0),
        Subscribe(0, 1),
        Subscribe(0, 2),
    ]);
    assert_eq!(h.node().snapshot().pending_subscription_changes, 3);
    // Two batches of at most two (the model checks the poll).
    settle(&mut h);
    assert_eq!(h.node().snapshot().subscriptions, 3);
    // A leave and a join of a held room cancel out too.
    h.run(&[
        Unsubscribe(0, 1),
        Subscribe(1, 1),
        Unsubscribe(0, 2),
        Unsubscribe(0, 0),
    ]);
    assert_eq!(h.node().snapshot().pending_subscription_changes, 1);
    settle(&mut h);
    assert_eq!(h.node().snapshot().subscriptions, 2);
}

/// The generated sequences are not vacuous: across a fixed sample, they
/// bring links up, feed publishes back, lose links, fill outboxes, time
/// peers out, refuse bad input and shut down, in both broker modes and
/// both client protocols (Centrifugo clients connect, get pushes, error
/// replies and pings, and are closed with Centrifugo's codes).
#[test]
fn random_sequences_reach_every_phase() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let seqs = (Ops::init_state(), prop::collection::vec(op(), 100..200));
    let mut total = roomcast_core::metrics::Snapshot::default();
    let mut cf_bad = std::collections::BTreeMap::new();
    let mut tally = roomcast_core::testing::Tally::default();
    let (mut local_runs, mut up_runs, mut backoffs) = (0, 0, 0);
    for _ in 0..128 {
        let (setup, ops) = seqs.new_tree(&mut runner).unwrap().current();
        let mut h = Harness::new(setup);
        let mut was_up = false;
        for op in ops {
            h.apply(op);
            was_up |= !setup.local && h.node().broker_up();
        }
        local_runs += usize::from(setup.local);
        up_runs += usize::from(was_up);
        backoffs += h.backoffs().len();
        let s = h.node().snapshot();
        total.broker.connects += s.broker.connects;
        total.broker.failures += s.broker.failures;
        total.broker.published += s.broker.published;
        total.broker.unknown += s.broker.unknown;
        total.broker.buffer_dropped += s.broker.buffer_dropped;
        total.broker.queue_dropped += s.broker.queue_dropped;
        total.deliveries += s.deliveries;
        total.slow_consumer_closes += s.slow_consumer_closes;
        total.no_pong_closes += s.no_pong_closes;
        total.rate_limited += s.rate_limited;
        total.broker_payloads_dropped += s.broker_payloads_dropped;
        total.broker_payloads_too_large += s.broker_payloads_too_large;
        total.rejected_connections += s.rejected_connections;
        total.pending_subscription_changes += s.pending_subscription_changes;
        for (label, n) in s.cf_bad_commands {
            *cf_bad.entry(label).or_insert(0) += n;
        }
        tally.add(&h.tally());
    }
    eprintln!(
        "{local_runs} local, {up_runs} remote runs up, {backoffs} backoffs\n{tally:?}\n{total:?}\n{cf_bad:?}"
    );
    assert!(local_runs > 20 && local_runs < 108);
    assert!(up_runs > 20, "links came up in {up_runs} runs");
    assert!(backoffs > 40);
    let b = total.broker;
    let error = |code| tally.cf_errors.get(&code).copied().unwrap_or(0);
    let closes = |code| tally.closes.get(&code).copied().unwrap_or(0);
    for (what, n) in [
        ("connects", b.connects),
        ("failures", b.failures),
        ("published", b.published),
        ("unknown", b.unknown),
        ("buffer drops", b.buffer_dropped),
        ("deliveries", total.deliveries),
        ("slow consumers", total.slow_consumer_closes),
        ("no-pong closes", total.no_pong_closes),
        ("rate limited", total.rate_limited),
        ("junk payloads", total.broker_payloads_dropped),
        ("oversized payloads", total.broker_payloads_too_large),
        ("rejected sockets", total.rejected_connections),
        ("probe echoes", tally.probes_echoed),
        ("publishes fed back", tally.echoed_publishes),
        ("keepalive pings", tally.keepalive_pings),
        // The Centrifugo protocol's phases.
        ("Centrifugo connects", tally.cf_connects),
        ("pushes", tally.cf_pushes),
        ("pushes with info", tally.cf_pushes_with_info),
        (
            "Centrifugo messages to seed members",
            tally.seed_deliveries_with_info,
        ),
        ("Centrifugo publishes fed back", tally.echoed_cf_publishes),
        ("Centrifugo pings", tally.cf_pings),
        ("105 already subscribed", error(105)),
        ("106 limit exceeded", error(106)),
        ("107 bad request", error(107)),
        ("111 too many requests", error(111)),
        ("3501 bad request closes", closes(3501)),
        ("3502 stale closes", closes(3502)),
        ("3012 no pong closes", closes(3012)),
        ("3013 too many requests closes", closes(3013)),
        ("3008 slow closes", closes(3008)),
        ("3001 shutdown closes", closes(3001)),
        ("1008 closes", closes(1008)),
        ("bad commands counted", cf_bad.values().sum()),
        // The server API's publishes, both ways.
        ("API publishes published", tally.api_published),
        ("API publishes failed", tally.api_failed),
    ] {
        assert!(n > 0, "no {what} in the sample");
    }
}

/// Every limit at its exact boundary, in embedded mode: an outbox filled to
/// exactly its limit takes no more; the rooms-per-connection limit; frames
/// and broker payloads of exactly the limit and one byte over.
#[test]
fn scripted_local_limits_at_their_boundaries() {
    use Op::*;
    use Proto::*;
    let mut h = Harness::new(Setup::LOCAL);
    h.run(&[
        Open(false, Seed),
        Open(false, Seed),
        Subscribe(0, 0),
        Subscribe(1, 0),
    ]);
    // Four 60-byte messages fill 1's outbox exactly; 0 drains each time.
    for _ in 0..4 {
        h.run(&[Send(0, 0, 4), Drain(0)]);
    }
    assert_eq!(h.node().queued_bytes(h.conns()[1]), 240);
    assert!(!h.node().is_closing(h.conns()[1]));
    h.run(&[Send(0, 0, 3)]);
    assert_eq!(
        h.node().snapshot().slow_consumer_closes,
        1,
        "a full outbox takes nothing more"
    );
    h.run(&[End(1, false)]);
    // Three rooms, and a fourth refused.
    h.run(&[Subscribe(0, 1), Subscribe(0, 2), Subscribe(0, 2)]);
    assert!(!h.node().is_closing(h.conns()[0]));
    h.run(&[Subscribe(0, 3)]);
    assert_eq!(
        h.node().queued_close(h.conns()[0]),
        Some((1008, "more than 3 rooms on one connection".into()))
    );
    h.run(&[Drain(0)]);
    // Broker payloads of exactly the limit pass, one byte more does not.
    h.run(&[
        Open(false, Seed),
        Subscribe(0, 5),
        External(5, 10),
        External(5, 9),
        Drain(0),
    ]);
    let s = h.node().snapshot();
    assert_eq!((s.broker_payloads_too_large, s.deliveries), (1, 11));
    // A frame one byte over the limit.
    h.run(&[Bad(0, 12)]);
    assert_eq!(h.node().queued_close(h.conns()[0]).map(|c| c.0), Some(1009));
}

/// The frames queued for connection `i` (oldest first), as text.
fn frames(h: &Harness, i: usize) -> Vec<String> {
    h.node()
        .queued_frames(h.conns()[i])
        .iter()
        .map(|f| String::from_utf8(f.to_vec()).unwrap())
        .collect()
}

/// Embedded mode, a room with a member of each protocol: each gets the
/// other's messages in its own protocol, the Centrifugo client its replies
/// in order between the pushes; then its errors and its close.
#[test]
fn scripted_local_mixed_room_both_codecs() {
    use Op::*;
    use Proto::*;
    let mut h = Harness::new(Setup::LOCAL);
    // 0 is Centrifugo's client n-1 (its connect reply read), 1 a seed one.
    h.run(&[
        Open(false, Centrifugo),
        Open(false, Seed),
        Subscribe(0, 0),
        Subscribe(1, 0),
        Send(1, 0, 0),
        Send(0, 0, 2),
    ]);
    let info = r#""info":{"user":"","client":"n-1"}"#;
    assert_eq!(
        frames(&h, 0),
        [
            r#"{"id":2,"subscribe":{}}"#.to_string(),
            r#"{"push":{"channel":"lobby","pub":{"data":"hi"}}}"#.into(),
            format!(r#"{{"push":{{"channel":"lobby","pub":{{"data":{{"k":[1,2]}},{info}}}}}}}"#),
            r#"{"id":3,"publish":{}}"#.into(),
        ]
    );
    h.run(&[Drain(0), Send(0, 0, 7)]);
    assert_eq!(
        frames(&h, 0),
        [
            format!(r#"{{"push":{{"channel":"lobby","pub":{{"data":"café \"q\"",{info}}}}}}}"#),
            r#"{"id":4,"publish":{}}"#.into(),
        ]
    );
    assert_eq!(frames(&h, 1), ["hi", r#"{"k":[1,2]}"#, "café \"q\""]);
    h.run(&[Drain(0), Drain(1)]);
    // 105 for a room it is in, 106 past three rooms; an unsubscribe is
    // answered even for a room it is not in; a command with an id and no
    // method is 104.
    h.run(&[
        Subscribe(0, 0),
        Subscribe(0, 1),
        Subscribe(0, 2),
        Subscribe(0, 3),
        Unsubscribe(0, 4),
        Bad(0, 6),
    ]);
    assert_eq!(
        frames(&h, 0),
        [
            r#"{"id":5,"error":{"code":105,"message":"already subscribed"}}"#,
            r#"{"id":6,"subscribe":{}}"#,
            r#"{"id":7,"subscribe":{}}"#,
            r#"{"id":8,"error":{"code":106,"message":"limit exceeded"}}"#,
            r#"{"id":9,"unsubscribe":{}}"#,
            r#"{"id":10,"error":{"code":104,"message":"method not found"}}"#,
        ]
    );
    // A line that is not JSON: 3501, counted.
    h.run(&[Bad(0, 0)]);
    assert_eq!(
        h.node().queued_close(h.conns()[0]),
        Some((3501, "bad request".into()))
    );
    let s = h.node().snapshot();
    let bad: std::collections::BTreeMap<_, _> = s.cf_bad_commands.into_iter().collect();
    assert_eq!((bad["not_json"], bad["unknown_method"]), (1, 1));
    h.run(&[Shutdown]);
    assert_eq!(
        h.node().queued_close(h.conns()[1]),
        Some((1001, "going away".into()))
    );
    let t = h.tally();
    assert_eq!((t.cf_pushes, t.cf_pushes_with_info), (3, 2));
    assert_eq!(t.seed_deliveries_with_info, 2);
}

/// Remote mode: a Centrifugo client's publish goes to Redis with its
/// `info` and comes back to both members; held while the link is down, it
/// is answered at once all the same; another publisher's `info` reaches
/// the Centrifugo member.
#[test]
fn scripted_remote_mixed_room_through_redis() {
    use Op::*;
    use Proto::*;
    let mut h = Harness::new(Setup::REMOTE);
    h.run(&[
        Open(false, Centrifugo),
        Open(false, Seed),
        Subscribe(0, 1),
        Subscribe(1, 1),
    ]);
    settle(&mut h);
    assert!(h.node().broker_up());
    h.run(&[Send(0, 1, 0), Drain(0)]);
    settle(&mut h);
    assert_eq!(h.tally().echoed_cf_publishes, 1);
    assert_eq!(
        frames(&h, 0),
        [r#"{"push":{"channel":"r1","pub":{"data":"hi","info":{"user":"","client":"n-1"}}}}"#]
    );
    assert_eq!(frames(&h, 1), ["hi"]);
    h.run(&[Drain(0), Drain(1), SubscriberLost, Send(0, 1, 8)]);
    assert_eq!(frames(&h, 0), [r#"{"id":4,"publish":{}}"#]);
    assert_eq!(h.node().snapshot().publish_buffer_depth, 1);
    to_deadline(&mut h);
    settle(&mut h);
    assert_eq!(frames(&h, 1), ["null"]);
    h.run(&[Drain(0), Drain(1), External(1, 2)]);
    settle(&mut h);
    assert_eq!(
        frames(&h, 0),
        [r#"{"push":{"channel":"r1","pub":{"data":"from c","info":{"user":"u1"}}}}"#]
    );
    assert_eq!(frames(&h, 1), ["from c"]);
}

/// Centrifugo's timers and rate limit: 3502 without a connect, `{}` pings
/// at the interval whether answered or not, 3012 once the oldest
/// unanswered one times out; 111 under the rate limit (a `send` is dropped
/// unanswered), then 3013; a command before connect, or a second connect,
/// is 3501.
#[test]
fn scripted_centrifugo_timers_rate_limit_and_connect() {
    use Op::*;
    use Proto::*;
    let mut h = Harness::new(Setup {
        rate_limit: true,
        ..Setup::LOCAL
    });
    h.run(&[Open(false, CentrifugoLate), Open(false, Centrifugo)]);
    assert_eq!(h.node().conn_deadline(h.conns()[0]), Some(ms(150)));
    h.run(&[Advance(150)]);
    assert_eq!(
        h.node().queued_close(h.conns()[0]),
        Some((3502, "stale".into()))
    );
    h.run(&[Drain(0), Advance(50)]);
    assert_eq!(frames(&h, 0), ["{}"]);
    // The pong clears the deadline; the next pings go unanswered.
    h.run(&[Pong(0), Drain(0), Advance(200), Advance(200)]);
    assert_eq!(frames(&h, 0), ["{}", "{}"]);
    assert_eq!(h.node().conn_deadline(h.conns()[0]), Some(ms(650)));
    h.run(&[Advance(50)]);
    assert_eq!(
        h.node().queued_close(h.conns()[0]),
        Some((3012, "no pong".into()))
    );
    h.run(&[Drain(0)]);
    // Four commands a second: the connect and three subscribes take them.
    h.run(&[
        Open(false, Centrifugo),
        Subscribe(0, 0),
        Subscribe(0, 1),
        Subscribe(0, 2),
        Drain(0),
        Bad(0, 17),
        Subscribe(0, 3),
        Subscribe(0, 3),
        Subscribe(0, 3),
    ]);
    let refused = r#"{"error":{"code":111,"message":"too many requests","temporary":true}}"#;
    // (The `send` took ids 5 and 6: a Bad entry reserves two.)
    let want: Vec<String> = (7..10)
        .map(|id| format!(r#"{{"id":{id},{}"#, &refused[1..]))
        .collect();
    assert_eq!(frames(&h, 0), want);
    h.run(&[Subscribe(0, 3)]);
    assert_eq!(
        h.node().queued_close(h.conns()[0]),
        Some((3013, "too many requests".into()))
    );
    assert_eq!(h.node().snapshot().rate_limited, 5);
    h.run(&[Drain(0), Advance(1000)]);
    // Connect later; a second connect is a bad request, and so is any
    // command before the first.
    h.run(&[Open(false, CentrifugoLate), Connect(0)]);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        frames(&h, 0),
        [format!(
            r#"{{"id":1,"connect":{{"client":"n-4","version":"roomcast {version}","pong":true,"node":"n"}}}}"#
        )]
    );
    h.run(&[Connect(0)]);
    assert_eq!(
        h.node().queued_close(h.conns()[0]),
        Some((3501, "bad request".into()))
    );
    h.run(&[Drain(0), Open(false, CentrifugoLate), Subscribe(0, 0)]);
    assert_eq!(
        h.node().queued_close(h.conns()[0]),
        Some((3501, "bad request".into()))
    );
    let closes = h.tally().closes;
    for code in [3012, 3013, 3501, 3502] {
        assert!(closes[&code] >= 1, "{code}: {closes:?}");
    }
}

fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}
