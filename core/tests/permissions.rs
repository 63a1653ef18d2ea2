//! The permission table as a model: random namespaces with random flags,
//! random users (anonymous or with a token), random subscribes and
//! publishes through a real `Node` speaking both protocols, and after
//! every operation a check that nothing succeeded that the table denies
//! (and that what it grants did succeed). The table is written here, from
//! the README's rules, independently of `roomcast_core::auth::policy`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use proptest::prelude::*;
use roomcast_core::auth::{Auth, AuthSettings, Namespace, NamespaceOptions};
use roomcast_core::{ClientProtocol, Conn, Inbound, Node, NodeConfig, Outgoing};

const SECRET: &str = "permission-model-secret-0123456789";
const T0: Duration = Duration::ZERO;
const USERS: [&str; 3] = ["", "42", "43"];
const ROOMS: [&str; 7] = [
    "lobby",
    "chat:1",
    "chat:2",
    "dm:x#42,43",
    "dm:y#43",
    "$chat:secret",
    "nope:1",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flags {
    sub_client: bool,
    sub_anon: bool,
    pub_client: bool,
    pub_subscriber: bool,
    pub_anon: bool,
    user_limited: bool,
}

impl Flags {
    fn options(self) -> NamespaceOptions {
        NamespaceOptions {
            allow_subscribe_for_client: self.sub_client,
            allow_subscribe_for_anonymous: self.sub_anon,
            allow_publish_for_client: self.pub_client,
            allow_publish_for_subscriber: self.pub_subscriber,
            allow_publish_for_anonymous: self.pub_anon,
            allow_user_limited_channels: self.user_limited,
            ..NamespaceOptions::default()
        }
    }
}

fn flags() -> impl Strategy<Value = Flags> {
    any::<[bool; 6]>().prop_map(|b| Flags {
        sub_client: b[0],
        sub_anon: b[1],
        pub_client: b[2],
        pub_subscriber: b[3],
        pub_anon: b[4],
        user_limited: b[5],
    })
}

/// The table: the namespaces' flags (`None`: the namespace is unknown).
#[derive(Debug, Clone)]
struct Table {
    default: Flags,
    chat: Flags,
    dm: Flags,
}

impl Table {
    fn flags(&self, room: &str) -> Option<Flags> {
        match room
            .split_once(':')
            .map(|(ns, _)| ns.trim_start_matches('$'))
        {
            None => Some(self.default),
            Some("chat") => Some(self.chat),
            Some("dm") => Some(self.dm),
            Some(_) => None,
        }
    }

    /// Subscribe without a subscription token.
    fn may_subscribe(&self, user: &str, room: &str) -> bool {
        let Some(f) = self.flags(room) else {
            return false;
        };
        if room.starts_with('$') {
            return false;
        }
        if f.user_limited && room.contains('#') {
            let listed = room.rsplit_once('#').map(|(_, l)| l).unwrap_or("");
            return !user.is_empty() && listed.split(',').any(|u| u == user);
        }
        f.sub_client && (!user.is_empty() || f.sub_anon)
    }

    fn may_publish(&self, user: &str, room: &str, member: bool) -> bool {
        let Some(f) = self.flags(room) else {
            return false;
        };
        let who = !user.is_empty() || f.pub_anon;
        (f.pub_client && who) || (f.pub_subscriber && member && who)
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Centrifugo: connection index, room index.
    Subscribe(usize, usize),
    Unsubscribe(usize, usize),
    Publish(usize, usize),
    /// Seed protocol: connection index, room index.
    SeedSubscribe(usize, usize),
    SeedPublish(usize, usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let i = 0..USERS.len();
    let r = 0..ROOMS.len();
    prop::collection::vec(
        prop_oneof![
            (i.clone(), r.clone()).prop_map(|(c, r)| Op::Subscribe(c, r)),
            (i.clone(), r.clone()).prop_map(|(c, r)| Op::Unsubscribe(c, r)),
            (i.clone(), r.clone()).prop_map(|(c, r)| Op::Publish(c, r)),
            (i.clone(), r.clone()).prop_map(|(c, r)| Op::SeedSubscribe(c, r)),
            (i, r).prop_map(|(c, r)| Op::SeedPublish(c, r)),
        ],
        1..40,
    )
}

fn token(user: &str) -> String {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let claims = serde_json::json!({ "sub": user });
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).expect("a key"),
    )
    .expect("a token")
}

fn take(node: &Node, conn: &Conn) -> Vec<String> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    while let Poll::Ready(Outgoing::Frames(frames)) = node.poll_outgoing(conn, &mut cx) {
        out.extend(
            frames
                .iter()
                .map(|f| String::from_utf8(f.to_vec()).unwrap()),
        );
    }
    out
}

struct World {
    node: Node,
    table: Table,
    /// One Centrifugo and one seed connection per user.
    cf: Vec<Conn>,
    seed: Vec<Conn>,
    /// The model: which connection is in which room.
    members: BTreeMap<(bool, usize), BTreeSet<&'static str>>,
    next_id: u32,
}

impl World {
    fn new(table: Table) -> World {
        let settings = AuthSettings {
            token_hmac_secret: Some(SECRET.into()),
            default_namespace: Some(table.default.options()),
            namespaces: vec![
                Namespace {
                    name: "chat".into(),
                    options: table.chat.options(),
                },
                Namespace {
                    name: "dm".into(),
                    options: table.dm.options(),
                },
            ],
            ..AuthSettings::default()
        };
        let auth = Auth::new(&settings, None).expect("auth");
        let node = Node::with_auth(NodeConfig::default(), Arc::new(auth), T0);
        let mut cf = Vec::new();
        let mut seed = Vec::new();
        for (i, user) in USERS.iter().enumerate() {
            let c = node.open(ClientProtocol::Centrifugo, None, T0);
            let connect = if user.is_empty() {
                // Anonymous: a token with an empty sub.
                format!(r#"{{"id":1,"connect":{{"token":"{}"}}}}"#, token(""))
            } else {
                format!(r#"{{"id":1,"connect":{{"token":"{}"}}}}"#, token(user))
            };
            assert!(node.frame(&c, Inbound::Text(connect.as_bytes()), T0));
            let reply = take(&node, &c);
            assert!(
                reply[0].contains(r#""connect":{"client""#),
                "{i}: {reply:?}"
            );
            cf.push(c);
            let claims = node
                .auth()
                .seed_upgrade(Some(&token(user)), 0)
                .expect("seed token");
            seed.push(node.open(ClientProtocol::Seed, Some(claims), T0));
        }
        World {
            node,
            table,
            cf,
            seed,
            members: BTreeMap::new(),
            next_id: 2,
        }
    }

    fn id(&mut self) -> u32 {
        self.next_id += 1;
        self.next_id
    }

    fn member(&self, seed: bool, c: usize, room: &str) -> bool {
        self.members
            .get(&(seed, c))
            .is_some_and(|rooms| rooms.contains(room))
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Subscribe(c, r) => {
                let room = ROOMS[r];
                let id = self.id();
                let conn = self.cf[c].clone();
                let cmd = format!(r#"{{"id":{id},"subscribe":{{"channel":"{room}"}}}}"#);
                self.node.frame(&conn, Inbound::Text(cmd.as_bytes()), T0);
                let reply = take(&self.node, &conn);
                let ok = reply
                    .iter()
                    .any(|l| l == &format!(r#"{{"id":{id},"subscribe":{{}}}}"#));
                let already = self.member(false, c, room);
                let want = self.table.may_subscribe(USERS[c], room) && !already;
                assert_eq!(ok, want, "subscribe {room:?} as {:?}: {reply:?}", USERS[c]);
                if ok {
                    self.members.entry((false, c)).or_default().insert(room);
                }
            }
            Op::Unsubscribe(c, r) => {
                let room = ROOMS[r];
                let id = self.id();
                let conn = self.cf[c].clone();
                let cmd = format!(r#"{{"id":{id},"unsubscribe":{{"channel":"{room}"}}}}"#);
                self.node.frame(&conn, Inbound::Text(cmd.as_bytes()), T0);
                let _ = take(&self.node, &conn);
                if let Some(rooms) = self.members.get_mut(&(false, c)) {
                    rooms.remove(room);
                }
            }
            Op::Publish(c, r) => {
                let room = ROOMS[r];
                let id = self.id();
                let conn = self.cf[c].clone();
                let member = self.member(false, c, room);
                let cmd = format!(r#"{{"id":{id},"publish":{{"channel":"{room}","data":{id}}}}}"#);
                self.node.frame(&conn, Inbound::Text(cmd.as_bytes()), T0);
                let reply = take(&self.node, &conn);
                let ok = reply
                    .iter()
                    .any(|l| l == &format!(r#"{{"id":{id},"publish":{{}}}}"#));
                let want = self.table.may_publish(USERS[c], room, member);
                assert_eq!(
                    ok, want,
                    "publish {room:?} as {:?} (member {member}): {reply:?}",
                    USERS[c]
                );
                self.check_delivery(room, ok, &id.to_string(), Some((c, reply)));
            }
            Op::SeedSubscribe(c, r) => {
                let room = ROOMS[r];
                let conn = self.seed[c].clone();
                if self.node.is_closing(&conn) {
                    return;
                }
                let cmd = format!(r#"{{"type":"SUBSCRIBE","room":"{room}"}}"#);
                let open = self.node.frame(&conn, Inbound::Text(cmd.as_bytes()), T0);
                let want = self.table.may_subscribe(USERS[c], room);
                assert_eq!(open, want, "seed subscribe {room:?} as {:?}", USERS[c]);
                if open {
                    self.members.entry((true, c)).or_default().insert(room);
                } else {
                    assert_eq!(
                        self.node.queued_close(&conn),
                        Some((1008, "permission denied".into()))
                    );
                    self.members.remove(&(true, c));
                }
            }
            Op::SeedPublish(c, r) => {
                let room = ROOMS[r];
                let conn = self.seed[c].clone();
                if self.node.is_closing(&conn) {
                    return;
                }
                let member = self.member(true, c, room);
                let id = self.id();
                let cmd = format!(r#"{{"type":"sendMessage","roomId":"{room}","message":{id}}}"#);
                let open = self.node.frame(&conn, Inbound::Text(cmd.as_bytes()), T0);
                let want = self.table.may_publish(USERS[c], room, member);
                assert_eq!(
                    open, want,
                    "seed publish {room:?} as {:?} (member {member})",
                    USERS[c]
                );
                if !open {
                    self.members.remove(&(true, c));
                }
                self.check_delivery(room, open, &id.to_string(), None);
            }
        }
    }

    /// A publication reached the room's members iff it was allowed, and no
    /// one else.
    /// `taken`: a Centrifugo publisher's frames, already taken with its reply.
    fn check_delivery(
        &mut self,
        room: &str,
        allowed: bool,
        text: &str,
        taken: Option<(usize, Vec<String>)>,
    ) {
        let mut taken = taken;
        for (i, conn) in self.cf.clone().iter().enumerate() {
            let mut got = take(&self.node, conn);
            if let Some((c, frames)) = &mut taken
                && *c == i
            {
                got.append(frames);
            }
            let pushed = got.iter().any(|l| {
                l.contains(r#""pub":{"data":"#) && l.contains(&format!(r#""data":{text}"#))
            });
            assert_eq!(
                pushed,
                allowed && self.member(false, i, room),
                "cf {i} in {room:?}: {got:?}"
            );
        }
        for (i, conn) in self.seed.clone().iter().enumerate() {
            let got = take(&self.node, conn);
            let delivered = got.iter().any(|l| l == text);
            assert_eq!(
                delivered,
                allowed && self.member(true, i, room),
                "seed {i} in {room:?}: {got:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn nothing_succeeds_that_the_table_denies(
        default in flags(),
        chat in flags(),
        dm in flags(),
        ops in ops(),
    ) {
        let mut world = World::new(Table { default, chat, dm });
        for op in &ops {
            world.apply(op);
        }
    }
}
