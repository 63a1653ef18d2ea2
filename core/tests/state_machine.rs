//! Model-based tests: random sequences of every hub input, run against a
//! real `Node` and the reference model in `roomcast_core::testing`, with the
//! invariants a–h checked after every step.
//!
//! 256 cases of up to 200 steps by default; `PROPTEST_CASES=N` raises it.

use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use roomcast_core::testing::{Harness, Op};

/// Strategy over every operation, weighted so that sequences build up state
/// (connections, memberships) before tearing it down.
fn op() -> impl Strategy<Value = Op> {
    let idx = any::<u8>();
    prop_oneof![
        6 => Just(Op::Open),
        2 => idx.prop_map(Op::Close),
        8 => (idx, 0u8..8).prop_map(|(c, r)| Op::Subscribe(c, r)),
        4 => (idx, 0u8..8).prop_map(|(c, r)| Op::Unsubscribe(c, r)),
        6 => (idx, 0u8..8, any::<u8>()).prop_map(|(c, r, m)| Op::Send(c, r, m)),
        1 => (idx, any::<u8>()).prop_map(|(c, k)| Op::BadFrame(c, k)),
        1 => idx.prop_map(Op::Binary),
        1 => idx.prop_map(Op::TooLarge),
        1 => idx.prop_map(Op::NotUtf8),
        1 => idx.prop_map(Op::ProtocolError),
        1 => idx.prop_map(Op::OutboundFull),
        6 => idx.prop_map(Op::Drain),
        6 => (0u8..8, any::<u8>()).prop_map(|(r, m)| Op::BrokerMessage(r, m)),
        1 => (0u8..8).prop_map(Op::BrokerJunk),
        4 => any::<bool>().prop_map(Op::BrokerConnected),
        2 => any::<bool>().prop_map(Op::BrokerDisconnected),
        2 => Just(Op::BrokerPong),
        4 => (0u16..400).prop_map(Op::Advance),
        1 => Just(Op::Shutdown).prop_filter("shutdown is rare", |_| true),
    ]
}

/// The reference side only generates operations: the model itself lives in
/// the harness so the fuzz targets share it.
struct Ops;

impl ReferenceStateMachine for Ops {
    type State = ();
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Self::State> {
        Just(()).boxed()
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

    fn init_test(_: &()) -> Self::SystemUnderTest {
        Harness::default()
    }

    fn apply(mut sut: Harness, _: &(), op: Op) -> Harness {
        sut.apply(op);
        sut
    }

    fn check_invariants(sut: &Harness, _: &()) {
        sut.check();
    }
}

prop_state_machine! {
    #![proptest_config(Config::default())]

    #[test]
    fn hub_invariants_hold(sequential 1..200 => Sut);
}

/// A fixed scenario that walks through every phase, so a regression shows up
/// even with PROPTEST_CASES=1.
#[test]
fn scripted_outage_and_recovery() {
    let mut h = Harness::default();
    use Op::*;
    for op in [
        Open,
        Open,
        Subscribe(0, 0),
        Subscribe(1, 0),
        Subscribe(1, 1),
        BrokerConnected(false),
        Send(0, 0, 0),
        BrokerMessage(0, 0),
        Drain(0),
        BrokerDisconnected(false),
        Send(0, 0, 1),
        Send(0, 1, 1),
        Send(0, 1, 1),
        Send(0, 1, 1),
        Send(0, 1, 1),
        Advance(300),
        BrokerConnected(false),
        Unsubscribe(1, 1),
        Close(0),
        BrokerMessage(0, 4),
        BrokerMessage(0, 4),
        Drain(1),
        Advance(150),
        Advance(200),
        Shutdown,
        Drain(1),
        Open,
    ] {
        h.apply(op);
    }
    assert!(h.pings() > 0, "the scenario exercised pings");
    let c = h.node().hub().counters();
    assert_eq!(
        c.publish_buffer_dropped, 1,
        "five sends while down, buffer of four"
    );
    assert!(c.broker_failures >= 2, "ping timeout counted: {c:?}");
}
