//! The chat page (`GET /`) in a real browser: headless Chromium, driven over
//! WebDriver (fantoccini → chromedriver), talks Centrifugo's JSON protocol
//! at `/connection/websocket` to two roomcast nodes that share one Redis:
//! node 1 on tokio, node 2 on smol (on tokio too without the `smol`
//! feature), so each runtime serves the page and a browser's WebSocket.
//! Page A on node 1 and page B on node 2 join the same room and chat both
//! ways, and list each other in the room's member list (presence with
//! join/leave pushes: B leaving and joining again, and C's browser going,
//! show on the other pages); page C joins later and is shown the room's history; page A's
//! socket is cut while B talks, and A comes back showing what it missed
//! (recovered), then, away for longer than node 1 recovers, says that some
//! messages may be missing and shows them from history; finally node 1
//! shuts down gracefully and page A shows "closed (3001 shutdown)" and its
//! reconnect countdown.
//!
//! Screenshots go to `target/browser/`: `page-a.png` and `page-b.png` after
//! the chat, `page-c-history.png`, `page-a-recovered.png`,
//! `page-a-not-recovered.png`, `page-a-closed.png` after the shutdown, and
//! `page-token.png` (the token test).
//!
//! A second test runs the page against a node that wants a token: it says
//! why it was refused, takes a token typed in or from `#token=`.
//!
//! A second test serves a page from another origin (a small HTTP server of
//! its own on another port) and checks that its `new WebSocket(…)` to a node
//! fails unless the node's `--allowed-origins` lets that origin in, on both
//! runtimes and both protocols' paths.
//!
//! The admin page (`GET /admin`, `--admin`) on two nodes: refused with a
//! wrong key, then live; it shows the nodes and rooms the API lists, its
//! numbers and charts move when messages flow, the search narrows the
//! rooms, a room shows its history and presence as the API answers them,
//! and a message published from it reaches both chat pages (`admin.png`,
//! `admin-chat-a.png`).
//!
//! The real `centrifuge` SDK (npm, its browser build, installed by
//! `tests/sdk/install.sh js` and served by the test from an origin of its
//! own, which the nodes allow with `--allowed-origins`) connects, subscribes,
//! publishes and receives across two nodes, asks presence, presence stats
//! and history, sees a join and a leave, and recovers what it missed while
//! its transport was down (`sdk.png`); a node that does not allow the origin
//! never lets it connect.
//!
//! Needs `chromium` and `chromedriver` on PATH (Debian packages `chromium`
//! and `chromium-driver`, which `.ci/run` installs); without them the test
//! says why and passes without running, except under CI, where it fails
//! (see [`skip_or_fail`]).

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use roomcast_tests::{
    Node, RedisServer, Runtime, Value, free_port, json, skip_or_fail, spawn_child, unique,
};

/// The longest any one wait (a page state, a WebDriver command) may take.
const WAIT: Duration = Duration::from_secs(15);

/// The longest the whole test may take.
const TEST_LIMIT: Duration = Duration::from_secs(90);

const ROOM: &str = "browser-room";
const FROM_A: &str = "Hello from node 1 — grüß dich!";
const FROM_B: &str = "Hi! Node 2 here, got it.";

#[test]
fn chat_page_between_two_nodes_in_chromium() {
    in_chromium("browser", chat);
}

#[test]
fn chat_page_asks_for_a_token() {
    in_chromium("token", token);
}

#[test]
fn cross_origin_page_needs_allowed_origins() {
    in_chromium("cross-origin", cross_origin);
}

#[test]
fn admin_page_shows_the_fleet_in_chromium() {
    in_chromium("admin", admin);
}

#[test]
fn centrifuge_sdk_in_chromium() {
    in_chromium("sdk", sdk_in_browser);
}

/// Runs `scenario` (on a tokio runtime of its own, on a thread of its own,
/// within [`TEST_LIMIT`]) with a chromedriver started for it, or skips if
/// Chromium or chromedriver is missing (see [`skip_or_fail`]).
fn in_chromium(name: &str, scenario: impl AsyncFnOnce(&str, &Path, &Path) + Send + 'static) {
    let (chromium, chromedriver) = match (which("chromium"), which("chromedriver")) {
        (Some(c), Some(d)) => (c, d),
        (c, _) => {
            let missing = if c.is_none() {
                "chromium"
            } else {
                "chromedriver"
            };
            skip_or_fail(&format!(
                "the browser test needs `chromium` and `chromedriver` on PATH \
                 (Debian packages chromium and chromium-driver); `{missing}` is not there"
            ));
            return;
        }
    };
    let started = Instant::now();
    // Started from this thread, which outlives everything that uses it; its
    // Drop kills chromedriver and every browser process under it.
    let driver = Driver::start(&chromedriver);
    let webdriver = driver.url();
    let profiles = driver.dir.clone();
    let scenario = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(scenario(&webdriver, &chromium, &profiles))
        })
        .expect("spawn the scenario thread");
    while !scenario.is_finished() {
        if started.elapsed() > TEST_LIMIT {
            eprintln!("{}", driver.log_tail());
            drop(driver);
            panic!("the browser test was still running after {TEST_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(panic) = scenario.join() {
        eprintln!("{}", driver.log_tail());
        drop(driver);
        std::panic::resume_unwind(panic);
    }
    drop(driver);
    eprintln!("browser test {name} passed in {:.1?}", started.elapsed());
}

/// Opens a WebSocket to `arguments[0]`, closes it with 1000 once open, and
/// answers with the CloseEvent's `wasClean` and `code`.
const CLEAN_CLOSE_JS: &str = r#"
const done = arguments[arguments.length - 1];
const ws = new WebSocket(arguments[0]);
ws.onopen = () => ws.close(1000, "bye");
ws.onclose = (e) => done({ wasClean: e.wasClean, code: e.code });
"#;

async fn chat(webdriver: &str, chromium: &Path, profiles: &Path) {
    let redis = RedisServer::start();
    // Node 1 recovers at most RECOVERY_MAX missed publications, so that a
    // longer absence is answered `recovered: false`.
    let max = RECOVERY_MAX.to_string();
    let n1 = Node::redis(
        Runtime::Tokio,
        &redis,
        &["--recovery-max-publications", &max],
    );
    let n2 = Node::redis(*Runtime::ALL.last().expect("a runtime"), &redis, &[]);

    let a = open_browser(webdriver, chromium, &profiles.join("a")).await;
    let b = open_browser(webdriver, chromium, &profiles.join("b")).await;
    bounded("open page A", a.goto(&format!("http://{}/", n1.addr()))).await;
    bounded("open page B", b.goto(&format!("http://{}/", n2.addr()))).await;
    assert_eq!(bounded("title of page A", a.title()).await, "roomcast");
    wait_page(&a, "page A is connected", |p| p.is_open()).await;
    wait_page(&b, "page B is connected", |p| p.is_open()).await;

    // Both join the same room, each through its own node.
    for (page, name) in [(&a, "alice"), (&b, "bob")] {
        fill(page, "name", name).await;
        fill(page, "room", ROOM).await;
        click(page, "join").await;
    }
    for (page, what) in [(&a, "page A is in the room"), (&b, "page B is in the room")] {
        let p = wait_page(page, what, |p| p.rooms == [ROOM] && p.subscribed).await;
        assert_eq!(p.current, ROOM, "the room joined last is the current one");
    }
    redis.wait_numsub(ROOM, 2);

    // A → B, across the two nodes.
    fill(&a, "text", FROM_A).await;
    click(&a, "send").await;
    let line_a = format!("[{ROOM}] alice: {FROM_A}");
    wait_page(&b, "page B shows A's message", |p| p.has(&line_a)).await;
    // The input is cleared once the message is sent.
    wait_page(&a, "page A's input is cleared", |p| p.text.is_empty()).await;

    // B → A, sent with Enter.
    fill(&b, "text", &format!("{FROM_B}\u{E007}")).await;
    let line_b = format!("[{ROOM}] bob: {FROM_B}");
    let shown_a = wait_page(&a, "page A shows B's reply", |p| p.messages.len() >= 2).await;
    let shown_b = wait_page(&b, "page B shows its own reply", |p| p.messages.len() >= 2).await;
    // Each page shows both lines once, in order, its own ones marked as such.
    assert_eq!(
        shown_a.messages,
        [(line_a.clone(), true), (line_b.clone(), false)],
        "page A"
    );
    assert_eq!(
        shown_b.messages,
        [(line_a.clone(), false), (line_b.clone(), true)],
        "page B"
    );
    // The member list (presence across the two nodes): each page lists
    // itself first, then the other, named from its messages.
    for (page, want) in [(&a, ["alice (you)", "bob"]), (&b, ["bob (you)", "alice"])] {
        let p = wait_page(page, "the member list shows both", |p| p.members == want).await;
        assert_eq!(p.members_title, format!("Members of {ROOM}"));
        assert_eq!(p.members_note, "", "{p:?}");
    }
    // B leaves the room (unsubscribe): A's list drops it at once (a leave
    // push from node 2 through Redis, which only a subscribe with
    // `join_leave: true` gets); B joins again: A's list has it back
    // (a join push), and B's log shows no line twice.
    click(&b, "leave").await;
    wait_page(&a, "page A's list drops B", |p| {
        p.members == ["alice (you)"]
    })
    .await;
    wait_page(&b, "page B is in no room", |p| p.rooms.is_empty()).await;
    fill(&b, "room", ROOM).await;
    click(&b, "join").await;
    wait_page(&a, "page A's list has B again", |p| {
        p.members == ["alice (you)", "bob"]
    })
    .await;
    let p = wait_page(&b, "page B is back in the room", |p| {
        p.subscribed && p.members == ["bob (you)", "alice"]
    })
    .await;
    assert_eq!(
        p.messages, shown_b.messages,
        "page B after leaving and joining again"
    );

    let shots = screenshot_dir();
    screenshot(&a, &shots.join("page-a.png")).await;
    screenshot(&b, &shots.join("page-b.png")).await;

    // A third page joins later, on node 2, and sees what was said.
    let c = open_browser(webdriver, chromium, &profiles.join("c")).await;
    bounded("open page C", c.goto(&format!("http://{}/", n2.addr()))).await;
    // The size of a phone.
    bounded("a phone-sized window", c.set_window_size(390, 760)).await;
    wait_page(&c, "page C is connected", |p| p.is_open()).await;
    fill(&c, "name", "carol").await;
    fill(&c, "room", ROOM).await;
    click(&c, "join").await;
    let shown_c = wait_page(&c, "page C shows the room's history", |p| {
        p.subscribed && p.messages.len() >= 2
    })
    .await;
    assert_eq!(
        shown_c.messages,
        [(line_a.clone(), false), (line_b.clone(), false)],
        "page C"
    );
    // C is listed on both other pages (no messages from it yet: by its
    // client id), and lists them.
    let guest = |m: &String| m.starts_with("guest (") && m.ends_with(')');
    for (page, what) in [(&a, "page A"), (&b, "page B")] {
        let p = wait_page(page, &format!("{what} lists C"), |p| p.members.len() == 3).await;
        assert!(guest(&p.members[2]), "{what}: {:?}", p.members);
    }
    wait_page(&c, "page C lists all three", |p| {
        p.members == ["carol (you)", "alice", "bob"]
    })
    .await;
    screenshot(&c, &shots.join("page-c-history.png")).await;
    assert_quiet_console(&c, "page C").await;
    // C's browser goes: its connection's end is a leave on both nodes.
    bounded("end session C", c.close()).await;
    wait_page(&a, "page A's list drops C", |p| {
        p.members == ["alice (you)", "bob"]
    })
    .await;
    wait_page(&b, "page B's list drops C", |p| {
        p.members == ["bob (you)", "alice"]
    })
    .await;

    // Page A loses its socket; B talks meanwhile; A comes back and shows
    // what it missed, recovered from the room's history.
    let mut said = vec![(line_a, true), (line_b, false)];
    let missed = absent(&a, &b, "missed while away", RECOVERY_MAX).await;
    let recovered = format!("[{ROOM}] {RECOVERY_MAX} missed messages recovered");
    let p = wait_page(&a, "page A shows what it missed", |p| {
        p.is_open() && p.subscribed && p.messages.len() >= said.len() + missed.len()
    })
    .await;
    said.extend(missed.iter().map(|l| (l.clone(), false)));
    assert_eq!(p.messages, said, "page A after recovery");
    assert_eq!(p.notes, std::slice::from_ref(&recovered), "page A's notes");
    screenshot(&a, &shots.join("page-a-recovered.png")).await;

    // Away longer than node 1 recovers: the page says some messages may be
    // missing, and shows the room's last messages from history instead.
    let missed = absent(&a, &b, "missed for longer", RECOVERY_MAX + 2).await;
    let p = wait_page(&a, "page A shows it could not recover", |p| {
        p.is_open() && p.subscribed && p.messages.len() >= said.len() + missed.len()
    })
    .await;
    said.extend(missed.iter().map(|l| (l.clone(), false)));
    assert_eq!(p.messages, said, "page A after a failed recovery");
    assert_eq!(
        p.notes,
        [
            recovered,
            format!("[{ROOM}] some messages may be missing: the server could not recover them")
        ],
        "page A's notes"
    );
    screenshot(&a, &shots.join("page-a-not-recovered.png")).await;

    // The room's stream is lost in Redis and made anew by the next
    // publication: its new epoch tells both nodes that their subscribers'
    // positions cannot continue (unsubscribe push 2500). Both pages
    // resubscribe, are told the old position cannot be recovered, and show
    // the new stream's message from history.
    let removed: i64 = redis::cmd("DEL")
        .arg(format!("__roomcast.history.{{{ROOM}}}"))
        .arg(format!("__roomcast.meta.{{{ROOM}}}"))
        .query(&mut redis.conn())
        .expect("DEL the room's stream");
    assert_eq!(removed, 2, "the room's stream and its meta were there");
    let anew = "after the stream was made anew";
    fill(&b, "text", anew).await;
    click(&b, "send").await;
    let line = format!("[{ROOM}] bob: {anew}");
    let missing =
        format!("[{ROOM}] some messages may be missing: the server could not recover them");
    for (page, what, own, notes) in [(&a, "page A", false, 3), (&b, "page B", true, 1)] {
        let p = wait_page(page, &format!("{what} shows the new stream"), |p| {
            p.subscribed && p.has(&line) && p.notes.len() >= notes
        })
        .await;
        assert_eq!(p.notes.last(), Some(&missing), "{what}: {p:?}");
        assert_eq!(p.messages.last(), Some(&(line.clone(), own)), "{what}");
        assert_eq!(
            p.messages.iter().filter(|(l, _)| *l == line).count(),
            1,
            "{what} shows it once"
        );
    }
    said.push((line, false));
    for (node, what) in [(&n1, "node 1"), (&n2, "node 2")] {
        assert_eq!(
            node.metric("roomcast_insufficient_state_total"),
            1,
            "{what} told its page 2500"
        );
    }

    for (page, what) in [(&a, "page A"), (&b, "page B")] {
        assert_quiet_console(page, what).await;
    }

    // A close the browser starts is echoed before the TCP stream ends:
    // Chromium reports it clean, with its code, on both runtimes' nodes.
    for (page, node) in [(&a, &n1), (&b, &n2)] {
        let url = format!("ws://{}/clean-close", node.addr());
        let got = bounded(
            "a clean close from the page",
            page.execute_async(CLEAN_CLOSE_JS, vec![serde_json::Value::String(url)]),
        )
        .await;
        assert_eq!(
            got,
            serde_json::json!({"wasClean": true, "code": 1000}),
            "the page's CloseEvent"
        );
    }

    // Record every change of page A's status line, so the short-lived
    // "closed" state is seen even though the page soon tries to reconnect.
    bounded("watch page A's status", a.execute(WATCH_STATUS_JS, vec![])).await;
    let n1_port = n1.addr().port();
    let pending = n1.shutdown_in_background();
    let closed = first_closed(&a).await;
    screenshot(&a, &shots.join("page-a-closed.png")).await;
    assert_eq!(
        closed["status"], "closed (3001 shutdown)",
        "page A's first close: {closed}"
    );
    let retry = closed["retry"].as_str().unwrap_or_default();
    assert!(
        retry.starts_with("reconnecting in "),
        "page A's retry line when closed: {closed}"
    );
    pending.wait(WAIT);

    // Page B, on node 2, is untouched.
    let p = page(&b).await;
    assert!(p.is_open(), "page B after node 1 shut down: {p:?}");

    // Bob talks while node 1 is down; node 1 comes back on its port, and
    // page A reconnects by itself and shows what it missed.
    let while_down = "said while node 1 was down";
    fill(&b, "text", while_down).await;
    click(&b, "send").await;
    let line_down = format!("[{ROOM}] bob: {while_down}");
    wait_page(&b, "page B shows its message", |p| p.has(&line_down)).await;
    let n1 = roomcast_tests::centrifugo::NodeOnPort::start(
        Runtime::Tokio,
        n1_port,
        Some(&redis.url()),
        &["--recovery-max-publications", &max],
    );
    wait_page(
        &a,
        "page A is back after the restart and shows what it missed",
        |p| p.is_open() && p.subscribed && p.has(&line_down),
    )
    .await;
    screenshot(&a, &shots.join("page-a-after-restart.png")).await;
    drop(n1);

    bounded("end session A", a.close()).await;
    bounded("end session B", b.close()).await;
    drop(n2);
    drop(redis);
}

/// How many missed publications node 1 recovers (`--recovery-max-publications`).
const RECOVERY_MAX: usize = 3;

/// Page `away`'s socket is cut (and stays cut) while page `talker` sends
/// `n` messages and sees them; then `away` reconnects. Answers the lines
/// `away` should show for them.
async fn absent(away: &Browser, talker: &Browser, what: &str, n: usize) -> Vec<String> {
    bounded("watch the status", away.execute(WATCH_STATUS_JS, vec![])).await;
    bounded(
        "cut the socket",
        away.execute("window.__roomcast.dropSocket(true);", vec![]),
    )
    .await;
    let closed = first_closed(away).await;
    assert_eq!(closed["status"], "closed (3000 connection closed)");
    let p = page(away).await;
    assert!(p.retry.is_empty(), "no countdown while held: {p:?}");
    let mut lines = Vec::new();
    for i in 1..=n {
        let text = format!("{what} #{i}");
        fill(talker, "text", &text).await;
        click(talker, "send").await;
        let line = format!("[{ROOM}] bob: {text}");
        wait_page(talker, "the talker shows its message", |p| p.has(&line)).await;
        lines.push(line);
    }
    bounded(
        "reconnect",
        away.execute("window.__roomcast.reconnect();", vec![]),
    )
    .await;
    lines
}

/// The first "closed" state in the page's status log (see
/// [`WATCH_STATUS_JS`]).
async fn first_closed(browser: &Browser) -> Value {
    wait_for("the page shows its connection closed", async || {
        let log = bounded(
            "read the status log",
            browser.execute(STATUS_LOG_JS, vec![]),
        )
        .await;
        let first = log
            .as_array()
            .expect("status log is an array")
            .iter()
            .find(|e| e["state"] == "closed")
            .cloned();
        (first, log)
    })
    .await
}

/// A node that wants a token: the page says why it was refused and asks
/// for one (no reconnecting meanwhile), says so again for an expired one,
/// connects with a good one typed in, and takes one from `#token=` in its
/// address (which it then drops from the address).
async fn token(webdriver: &str, chromium: &Path, profiles: &Path) {
    use roomcast_tests::auth::{SECRET, TempDir, conn_claims, hs256};
    let dir = TempDir::new("roomcast-browser-secret");
    let secret = dir.write("secret", &format!("{SECRET}\n"));
    let secret = secret.to_str().expect("a UTF-8 path");
    let node = Node::embedded(
        *Runtime::ALL.last().expect("a runtime"),
        &["--token-hmac-secret-file", secret],
    );
    let browser = open_browser(webdriver, chromium, &profiles.join("token")).await;
    let url = format!("http://{}/", node.addr());
    bounded("open the page", browser.goto(&url)).await;
    let p = wait_page(&browser, "the page is refused", |p| p.state == "refused").await;
    assert_eq!(p.status, "closed (3500 invalid token)");
    assert!(p.auth_shown, "the token field is shown: {p:?}");
    assert!(p.auth_error.contains("needs a token"), "{p:?}");
    assert!(p.retry.is_empty(), "no reconnecting when refused: {p:?}");
    screenshot(&browser, &screenshot_dir().join("page-token.png")).await;

    fill(
        &browser,
        "token",
        &hs256(&conn_claims("alice", Some(-3600))),
    )
    .await;
    click(&browser, "connect").await;
    let p = wait_page(&browser, "the page says the token expired", |p| {
        p.status == "refused (token expired)"
    })
    .await;
    assert!(p.auth_error.contains("the token has expired"), "{p:?}");

    let good = hs256(&conn_claims("alice", Some(3600)));
    fill(&browser, "token", &format!("{good}\u{E007}")).await;
    let p = wait_page(&browser, "the page connects with the token", |p| {
        p.is_open()
    })
    .await;
    assert!(!p.auth_shown, "the token field is hidden once open: {p:?}");

    bounded("leave the page", browser.goto("about:blank")).await;
    bounded(
        "open the page with #token=",
        browser.goto(&format!("{url}#token={good}")),
    )
    .await;
    wait_page(&browser, "the page connects with #token=", |p| p.is_open()).await;
    let left = bounded("its address", browser.current_url()).await;
    assert_eq!(left.fragment(), None, "the token is dropped from {left}");
    assert_quiet_console(&browser, "the token page").await;
    bounded("end the session", browser.close()).await;
}

/// A page served from `http://127.0.0.1:P` (another origin than any node's)
/// opens WebSockets to nodes: one without `--allowed-origins` refuses it
/// (the browser sees an error; the node counts an Origin refusal), one that
/// allows that origin, or `http://127.0.0.1:*`, lets it open; the node's own
/// page (same origin) opens on the strict node.
async fn cross_origin(webdriver: &str, chromium: &Path, profiles: &Path) {
    let pages = PageServer::start();
    let origin = pages.origin();
    let browser = open_browser(webdriver, chromium, &profiles.join("cross")).await;
    bounded(
        "open the other origin's page",
        browser.goto(&format!("{origin}/")),
    )
    .await;
    assert_eq!(bounded("its title", browser.title()).await, "elsewhere");
    let paths = ["/connection/websocket", "/"];
    for &rt in Runtime::ALL {
        let strict = Node::embedded(rt, &[]);
        let allowing = Node::embedded(rt, &["--allowed-origins", &origin]);
        let ports = Node::embedded(
            rt,
            &["--allowed-origins", "https://x.test,http://127.0.0.1:*"],
        );
        for path in paths {
            for (node, want, what) in [
                (&strict, "error", "no --allowed-origins"),
                (&allowing, "open", "--allowed-origins <the page's origin>"),
                (&ports, "open", "--allowed-origins http://127.0.0.1:*"),
            ] {
                let url = format!("ws://{}{path}", node.addr());
                let got = open_websocket(&browser, &url).await;
                assert_eq!(
                    got,
                    want,
                    "{} node, {what}: a page from {origin} opens {url}",
                    rt.name()
                );
            }
        }
        assert_eq!(
            strict.metric("roomcast_origin_refused_total"),
            paths.len() as u64,
            "{}: the strict node refused by Origin",
            rt.name()
        );
        for node in [&allowing, &ports] {
            assert_eq!(
                node.metric("roomcast_origin_refused_total"),
                0,
                "{}",
                rt.name()
            );
        }
    }
    // The same browser, on a node's own page: same origin, so it opens.
    let strict = Node::embedded(*Runtime::ALL.last().expect("a runtime"), &[]);
    bounded(
        "open the node's page",
        browser.goto(&format!("http://{}/", strict.addr())),
    )
    .await;
    for path in paths {
        let url = format!("ws://{}{path}", strict.addr());
        assert_eq!(
            open_websocket(&browser, &url).await,
            "open",
            "same origin: {url}"
        );
    }
    assert_eq!(strict.metric("roomcast_origin_refused_total"), 0);
    bounded("end the session", browser.close()).await;
    assert!(pages.served() >= 1, "the page server served nothing");
}

/// `new WebSocket(url)` in the page: "open", "error" or "timeout".
async fn open_websocket(browser: &Browser, url: &str) -> String {
    let v = bounded(
        "open a WebSocket from the page",
        browser.execute_async(OPEN_WEBSOCKET_JS, vec![json!(url)]),
    )
    .await;
    v.as_str()
        .unwrap_or_else(|| panic!("the page answered {v}"))
        .to_string()
}

const OPEN_WEBSOCKET_JS: &str = r#"
const [url, done] = arguments;
const ws = new WebSocket(url);
const timer = setTimeout(() => done("timeout"), 5000);
ws.onopen = () => { clearTimeout(timer); ws.close(); done("open"); };
ws.onerror = () => { clearTimeout(timer); done("error"); };
"#;

const ELSEWHERE_PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\">\
<title>elsewhere</title></head><body>a page of another origin</body></html>";

/// A tiny HTTP server on 127.0.0.1 (a port of its own) answering each of
/// its routes' paths with that route's body, and every other request with
/// [`ELSEWHERE_PAGE`]. Dropping it stops it.
struct PageServer {
    port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PageServer {
    fn start() -> PageServer {
        PageServer::with_routes(Vec::new())
    }

    /// `routes`: (path, content type, body).
    fn with_routes(routes: Vec<(&'static str, &'static str, Vec<u8>)>) -> PageServer {
        let routes = Arc::new(routes);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the page server");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("its address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let thread = {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            serve_page(s, &routes);
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        PageServer {
            port,
            stop,
            served,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`: what the page's `Origin` header says.
    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

/// Reads one request head (bounded) and answers with its route's body, or
/// the page.
fn serve_page(mut s: TcpStream, routes: &[(&'static str, &'static str, Vec<u8>)]) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("/");
    let (content_type, body) = routes.iter().find(|(p, _, _)| *p == path).map_or(
        ("text/html; charset=utf-8", ELSEWHERE_PAGE.as_bytes()),
        |(_, t, b)| (*t, b.as_slice()),
    );
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(response.as_bytes());
    let _ = s.write_all(body);
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// The admin page
// ---------------------------------------------------------------------------

const API_KEY: &str = "browser-admin-key-93e1";
const ADMIN_ROOM: &str = "admin-room";

/// `POST /api/<method>` with the key: the JSON answer (a result or an
/// error), as a script sees it.
fn api_call(addr: std::net::SocketAddr, method: &str, body: Value) -> Value {
    let body = body.to_string();
    let raw = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nX-API-Key: {API_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = roomcast_tests::http_request(addr, raw.as_bytes());
    assert_eq!(r.status, 200, "{method}: {r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{method}: {e}: {}", r.body))
}

/// Two nodes with the admin page; two chat pages in a room, one on each;
/// the admin page on node 1: refused with a wrong key, then live with the
/// right one; it shows the nodes and rooms the API lists, its numbers move
/// when messages flow, a search narrows the rooms, a room shows what the
/// API says of its presence and its last messages, and a message published
/// from the admin page reaches both chat pages. A node without `--admin`
/// answers `/admin` with 404.
async fn admin(webdriver: &str, chromium: &Path, profiles: &Path) {
    let plain = Node::embedded(Runtime::Tokio, &["--api-key", API_KEY]);
    for path in ["/admin", "/admin/"] {
        assert_eq!(plain.get(path).status, 404, "{path} without --admin");
    }
    drop(plain);

    let redis = RedisServer::start();
    let flags = ["--admin", "--api-key", API_KEY];
    let n1 = Node::redis(Runtime::Tokio, &redis, &flags);
    let n2 = Node::redis(*Runtime::ALL.last().expect("a runtime"), &redis, &flags);
    let r = n1.get("/admin");
    assert_eq!(r.status, 200);
    let head = r.head.to_ascii_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"), "{head}");

    // The chat: alice on node 1, bob on node 2, in one room.
    let a = open_browser(webdriver, chromium, &profiles.join("a")).await;
    let b = open_browser(webdriver, chromium, &profiles.join("b")).await;
    for (page, node, name) in [(&a, &n1, "alice"), (&b, &n2, "bob")] {
        bounded(
            "open a chat page",
            page.goto(&format!("http://{}/", node.addr())),
        )
        .await;
        wait_page(page, "the chat page is connected", |p| p.is_open()).await;
        fill(page, "name", name).await;
        fill(page, "room", ADMIN_ROOM).await;
        click(page, "join").await;
        wait_page(page, "the chat page is in the room", |p| p.subscribed).await;
    }
    redis.wait_numsub(ADMIN_ROOM, 2);

    let admin = open_browser(webdriver, chromium, &profiles.join("admin")).await;
    bounded("a wide window", admin.set_window_size(1280, 1000)).await;
    let url = format!("http://{}/admin", n1.addr());
    bounded("open the admin page", admin.goto(&url)).await;
    assert_eq!(bounded("its title", admin.title()).await, "roomcast admin");
    let v = admin_page(&admin).await;
    assert_eq!(v["status"], "enter the API key", "{v}");
    assert_eq!(v["polls"], 0, "nothing is asked without a key: {v}");

    // A wrong key: refused, said so, no polling.
    fill(&admin, "key", "not-the-key\u{E007}").await;
    let v = wait_admin(&admin, "the admin page says the key is wrong", |v| {
        v["status"] == "refused"
    })
    .await;
    assert!(v["keyerr"].as_str().unwrap_or("").contains("401"), "{v}");
    assert!(
        n1.metric("roomcast_api_unauthorized_total") > 0,
        "the node counted the refusal"
    );
    // (Chromium logs the 401s: read them away.)
    let _ = bounded("read the console log", admin.issue_cmd(BrowserLog)).await;

    fill(&admin, "key", &format!("{API_KEY}\u{E007}")).await;
    let v = wait_admin(&admin, "the admin page is live", |v| {
        v["status"] == "live" && v["polls"].as_u64() >= Some(2) && v["rate"] != ""
    })
    .await;
    assert_eq!(v["redis"], "up", "{v}");

    // The nodes are those the API lists (node 1's own answer, or the
    // fleet's), and node 1 is one of them: its id is the prefix of its
    // clients' ids.
    let info = api_call(n1.addr(), "info", json!({}));
    let mut listed: Vec<String> = info["result"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("info: {info}"))
        .iter()
        .map(|n| n["uid"].as_str().expect("a uid").to_string())
        .collect();
    listed.sort();
    let state = bounded(
        "page A's client",
        a.execute("return window.__roomcast.state();", vec![]),
    )
    .await;
    let client_a = state["client"].as_str().expect("a client id").to_string();
    let v = wait_admin(&admin, "the admin page shows the API's nodes", |v| {
        let mut shown: Vec<String> = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| n["uid"].as_str().unwrap_or("").to_string())
            .collect();
        shown.sort();
        shown == listed
    })
    .await;
    assert!(
        listed
            .iter()
            .any(|uid| client_a.starts_with(&format!("{uid}-"))),
        "node 1 ({client_a}) among {listed:?}"
    );
    assert_eq!(v["tiles"]["nodes"], listed.len().to_string(), "{v}");
    assert_eq!(
        listed.len(),
        2,
        "both nodes, from their announcements: {info}"
    );

    // The room, with the count the API gives it.
    let chans = api_call(n1.addr(), "channels", json!({}));
    let count = chans["result"]["channels"][ADMIN_ROOM]["num_clients"]
        .as_u64()
        .unwrap_or_else(|| panic!("channels: {chans}"));
    assert!(count >= 1, "{chans}");
    let v = wait_admin(&admin, "the admin page lists the room", |v| {
        v["rooms"].as_array().is_some_and(|rows| {
            rows.iter()
                .any(|r| r[0] == ADMIN_ROOM && number(&r[1]) == count)
        })
    })
    .await;
    assert!(
        v["roomsCount"].as_str().unwrap_or("").contains("1 rooms"),
        "{v}"
    );

    // Messages flow: this node's deliveries and their rate move.
    let before: u64 = number(&v["tiles"]["deliveries"]);
    for i in 1..=5 {
        let text = format!("flow #{i}");
        fill(&b, "text", &text).await;
        click(&b, "send").await;
        let line = format!("[{ADMIN_ROOM}] bob: {text}");
        wait_page(&a, "page A shows the flow", |p| p.has(&line)).await;
    }
    let v = wait_admin(&admin, "the admin page's numbers move", |v| {
        number(&v["tiles"]["deliveries"]) >= before + 5 && v["rateValue"].as_f64() > Some(0.0)
    })
    .await;
    assert!(
        v["ratePoints"].as_u64() >= Some(2),
        "the rate chart has points: {v}"
    );
    assert!(v["clientPoints"].as_u64() >= Some(3), "{v}");
    assert!(
        v["rateMax"].as_f64() > Some(0.0),
        "the rate chart rose: {v}"
    );

    // The search narrows the rooms.
    fill(&admin, "search", "zzz-none").await;
    wait_admin(&admin, "no room matches", |v| {
        v["rooms"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0][0] == "no room matches")
    })
    .await;
    fill(&admin, "search", "ADMIN-r").await;
    wait_admin(&admin, "the search finds the room", |v| {
        v["rooms"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0][0] == ADMIN_ROOM)
    })
    .await;

    // The room: its last messages (history) and its presence, as the API
    // answers them.
    click_room(&admin, ADMIN_ROOM).await;
    let v = wait_admin(&admin, "the admin page shows the room's history", |v| {
        v["history"].as_array().is_some_and(|h| h.len() == 5)
    })
    .await;
    assert_eq!(v["roomTitle"], format!("Room {ADMIN_ROOM}"));
    let newest = v["history"][0].as_str().unwrap_or("");
    assert!(newest.ends_with("bob: flow #5"), "newest first: {v}");
    let state_b = bounded(
        "page B's client",
        b.execute("return window.__roomcast.state();", vec![]),
    )
    .await;
    let client_b = state_b["client"].as_str().expect("a client id").to_string();
    let presence = api_call(n1.addr(), "presence", json!({"channel": ADMIN_ROOM}));
    assert!(
        presence["result"]["presence"][&client_b].is_object(),
        "the API lists bob on the other node: {presence}"
    );
    let v = match presence.get("result") {
        Some(r) => {
            let mut want: Vec<String> = r["presence"]
                .as_object()
                .unwrap_or_else(|| panic!("presence: {presence}"))
                .keys()
                .cloned()
                .collect();
            want.sort();
            assert!(want.contains(&client_a), "{presence}");
            wait_admin(&admin, "the admin page shows the room's presence", |v| {
                let mut got: Vec<String> = v["presence"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| c.as_str().unwrap_or("").to_string())
                    .collect();
                got.sort();
                got == want
            })
            .await
        }
        None => {
            let e = &presence["error"];
            let want = format!(
                "presence: {} ({})",
                e["message"].as_str().unwrap_or(""),
                e["code"]
            );
            wait_admin(&admin, "the admin page says why presence is missing", |v| {
                v["presenceErr"] == want.as_str()
            })
            .await
        }
    };
    let _ = v;

    // Published from the admin page: both chat pages show it.
    let text = "Hello from the admin page";
    fill(&admin, "pub-text", &format!("{text}\u{E007}")).await;
    let v = wait_admin(&admin, "the admin page published", |v| {
        v["pubResult"]
            .as_str()
            .is_some_and(|r| r.starts_with("published"))
    })
    .await;
    assert_eq!(v["pubErr"], "", "{v}");
    let line = format!("[{ADMIN_ROOM}] admin: {text}");
    for (page, what) in [(&a, "page A"), (&b, "page B")] {
        let p = wait_page(page, &format!("{what} shows the admin's message"), |p| {
            p.has(&line)
        })
        .await;
        assert_eq!(p.messages.last(), Some(&(line.clone(), false)), "{what}");
    }
    wait_admin(&admin, "the room's history has it", |v| {
        v["history"][0]
            .as_str()
            .is_some_and(|h| h.ends_with(&format!("admin: {text}")))
    })
    .await;
    let shots = screenshot_dir();
    bounded(
        "scroll to the top",
        admin.execute("window.scrollTo(0, 0);", vec![]),
    )
    .await;
    screenshot(&admin, &shots.join("admin.png")).await;
    screenshot(&a, &shots.join("admin-chat-a.png")).await;
    // Raw JSON that is not JSON is refused in the page.
    click(&admin, "pub-raw").await;
    fill(&admin, "pub-text", "{nope\u{E007}").await;
    wait_admin(&admin, "the page refuses bad JSON", |v| {
        v["pubErr"]
            .as_str()
            .is_some_and(|e| e.starts_with("not JSON"))
    })
    .await;

    assert_quiet_console(&admin, "the admin page").await;
    for (page, what) in [(&a, "page A"), (&b, "page B")] {
        assert_quiet_console(page, what).await;
    }
    for (browser, what) in [(admin, "admin"), (a, "A"), (b, "B")] {
        bounded(&format!("end session {what}"), browser.close()).await;
    }
    drop((n1, n2, redis));
}

/// A number as the page formats it (`1,234`).
fn number(v: &Value) -> u64 {
    v.as_str()
        .unwrap_or("")
        .replace([',', '\u{a0}', ' '], "")
        .parse()
        .unwrap_or(0)
}

async fn click_room(browser: &Browser, room: &str) {
    let button = bounded(
        "the room's button",
        browser.find(Locator::XPath(&format!(
            "//tbody[@id='rooms']//button[text()='{room}']"
        ))),
    )
    .await;
    bounded("click the room", button.click()).await;
}

const ADMIN_JS: &str = r##"
const $ = (id) => document.getElementById(id);
const st = window.__admin.state();
const texts = (sel) => Array.from(document.querySelectorAll(sel), (e) => e.textContent);
return {
  status: $("status").textContent,
  keyerr: $("keyerr").textContent,
  polls: st.polls,
  rateValue: st.rate,
  tiles: {
    nodes: $("t-nodes").textContent, clients: $("t-clients").textContent,
    rooms: $("t-rooms").textContent, rate: $("t-rate").textContent,
    deliveries: $("t-deliveries").textContent, redis: $("t-redis").textContent,
  },
  rate: $("t-rate").textContent === "–" ? "" : $("t-rate").textContent,
  redis: $("t-redis").textContent,
  nodes: Array.from($("nodes").querySelectorAll("tr[data-uid]"), (tr) => ({
    uid: tr.dataset.uid, clients: tr.querySelector(".clients").textContent,
  })),
  rooms: Array.from($("rooms").querySelectorAll("tr"), (tr) => Array.from(tr.cells, (c) => c.textContent)),
  roomsCount: $("rooms-count").textContent,
  ratePoints: Number($("c-rate").dataset.points || 0),
  rateMax: Number($("c-rate").dataset.max || 0),
  clientPoints: Number($("c-clients").dataset.points || 0),
  roomTitle: $("room-h").textContent,
  presence: Array.from($("presence").querySelectorAll("li[data-client]"), (li) => li.dataset.client),
  presenceErr: $("presence-err").textContent,
  history: texts("#history li"),
  historyErr: $("history-err").textContent,
  pubErr: $("pub-err").textContent,
  pubResult: $("pub-result").textContent,
};
"##;

async fn admin_page(browser: &Browser) -> Value {
    bounded("read the admin page", browser.execute(ADMIN_JS, vec![])).await
}

/// Polls the admin page until `cond` holds; panics after [`WAIT`].
async fn wait_admin(browser: &Browser, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, async || {
        let v = admin_page(browser).await;
        (cond(&v).then(|| v.clone()), v)
    })
    .await
}

// ---------------------------------------------------------------------------
// The centrifuge SDK in the browser
// ---------------------------------------------------------------------------

const SDK_ROOM: &str = "sdk-room";

/// The harness page: loads the SDK's browser build from its own origin and
/// keeps every client's events in `window.events` (and on the page).
const SDK_PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8">
<title>centrifuge in the browser</title><link rel="icon" href="data:,">
<style>body{font:13px/1.4 ui-monospace,monospace;margin:1rem}li{white-space:pre-wrap}</style>
<script src="/centrifuge.js"></script></head><body>
<h1 style="font:600 16px system-ui">centrifuge SDK (npm) in Chromium, against roomcast</h1>
<ol id="log"></ol>
<script>
window.events = []; window.hold = {}; window.sockets = {}; window.clients = {};
function ev(name, type, fields) {
  const e = Object.assign({ name, type }, fields || {});
  window.events.push(e);
  const li = document.createElement("li");
  li.textContent = name + " " + type + " " + JSON.stringify(fields || {});
  document.getElementById("log").appendChild(li);
}
// A WebSocket that the test can cut, and hold off (it then dials a closed
// port) until released.
function tracked(name) {
  return class extends WebSocket {
    constructor(url, protocols) {
      super(window.hold[name] ? "ws://127.0.0.1:9/held" : url, protocols);
      window.sockets[name] = this;
    }
  };
}
window.make = function (name, url) {
  const c = new Centrifuge(url, { websocket: tracked(name), minReconnectDelay: 100, maxReconnectDelay: 400, name: "browser-sdk" });
  c.on("connecting", (ctx) => ev(name, "connecting", { code: ctx.code, reason: ctx.reason }));
  c.on("connected", (ctx) => ev(name, "connected", { client: ctx.client }));
  c.on("disconnected", (ctx) => ev(name, "disconnected", { code: ctx.code, reason: ctx.reason }));
  window.clients[name] = c;
  c.connect();
};
window.sub = function (name, room) {
  const s = window.clients[name].newSubscription(room, { joinLeave: true, recoverable: true, positioned: true });
  s.on("subscribed", (ctx) => ev(name, "subscribed", { channel: room, recovered: !!ctx.recovered, wasRecovering: !!ctx.wasRecovering, offset: ctx.streamPosition ? ctx.streamPosition.offset : null }));
  s.on("subscribing", (ctx) => ev(name, "subscribing", { channel: room, code: ctx.code }));
  s.on("publication", (ctx) => ev(name, "publication", { channel: room, data: ctx.data, offset: ctx.offset, client: ctx.info ? ctx.info.client : null }));
  s.on("join", (ctx) => ev(name, "join", { channel: room, client: ctx.info.client }));
  s.on("leave", (ctx) => ev(name, "leave", { channel: room, client: ctx.info.client }));
  s.subscribe();
};
// Runs a promise-returning call on a client's subscription; done({ok}|{err}).
window.call = function (name, room, what, arg, done) {
  const s = window.clients[name].getSubscription(room);
  s[what](arg).then((r) => done({ ok: r === undefined ? null : r }), (e) => done({ err: String(e && (e.message || e.code) || e) }));
};
</script></body></html>"#;

/// The real `centrifuge` SDK (npm, its browser build, served by the test
/// from an origin of its own) in Chromium against two roomcast nodes that
/// allow that origin: connect, subscribe, publish and receive across the
/// nodes, presence and presence stats, join and leave, history, and
/// recovery of what was missed while its transport was down. A node that
/// does not allow the origin never lets it connect.
async fn sdk_in_browser(webdriver: &str, chromium: &Path, profiles: &Path) {
    let js = roomcast_tests::sdk::ensure_js();
    let build = js.join("node_modules/centrifuge/dist/centrifuge.js");
    let sdk = std::fs::read(&build).unwrap_or_else(|e| panic!("{}: {e}", build.display()));
    let pages = PageServer::with_routes(vec![
        (
            "/sdk.html",
            "text/html; charset=utf-8",
            SDK_PAGE.as_bytes().to_vec(),
        ),
        ("/centrifuge.js", "text/javascript; charset=utf-8", sdk),
    ]);
    let origin = pages.origin();
    let browser = open_browser(webdriver, chromium, &profiles.join("sdk")).await;
    bounded(
        "open the SDK page",
        browser.goto(&format!("{origin}/sdk.html")),
    )
    .await;
    let loaded = bounded(
        "the SDK is loaded",
        browser.execute("return typeof Centrifuge;", vec![]),
    )
    .await;
    assert_eq!(
        loaded, "function",
        "the SDK's browser build defines Centrifuge"
    );

    // Without --allowed-origins: refused at the upgrade, never connected.
    let strict = Node::embedded(Runtime::Tokio, &[]);
    let ws = |n: &Node| json!(format!("ws://{}/connection/websocket", n.addr()));
    js_run(
        &browser,
        "window.make('strict', arguments[0]);",
        vec![ws(&strict)],
    )
    .await;
    strict.wait_metric("roomcast_origin_refused_total", |n| n >= 2);
    assert!(
        sdk_events(&browser)
            .await
            .iter()
            .all(|e| e["type"] != "connected"),
        "connected through a node that does not allow the origin"
    );
    js_run(&browser, "window.clients.strict.disconnect();", vec![]).await;
    drop(strict);

    let redis = RedisServer::start();
    let allow = ["--allowed-origins", &origin];
    let n1 = Node::redis(Runtime::Tokio, &redis, &allow);
    let n2 = Node::redis(*Runtime::ALL.last().expect("a runtime"), &redis, &allow);
    js_run(&browser, "window.make('a', arguments[0]);", vec![ws(&n1)]).await;
    js_run(&browser, "window.make('b', arguments[0]);", vec![ws(&n2)]).await;
    let ca = sdk_wait(&browser, "a connects", |e| {
        e["name"] == "a" && e["type"] == "connected"
    })
    .await;
    let cb = sdk_wait(&browser, "b connects", |e| {
        e["name"] == "b" && e["type"] == "connected"
    })
    .await;
    let (client_a, client_b) = (ca["client"].clone(), cb["client"].clone());
    for name in ["a", "b"] {
        js_run(
            &browser,
            "window.sub(arguments[0], arguments[1]);",
            vec![json!(name), json!(SDK_ROOM)],
        )
        .await;
        sdk_wait(&browser, &format!("{name} subscribes"), |e| {
            e["name"] == name && e["type"] == "subscribed"
        })
        .await;
    }
    redis.wait_numsub(SDK_ROOM, 2);

    // b → a, across the nodes.
    let got = sdk_call(
        &browser,
        "b",
        "publish",
        json!({"text": "hello from the SDK"}),
    )
    .await;
    assert!(got.get("ok").is_some(), "publish: {got}");
    let p = sdk_wait(&browser, "a receives b's publication", |e| {
        e["name"] == "a" && e["type"] == "publication"
    })
    .await;
    assert_eq!(p["data"], json!({"text": "hello from the SDK"}));
    assert_eq!(p["client"], client_b, "the publisher's info");
    assert!(
        p["offset"].as_u64() > Some(0),
        "a positioned publication: {p}"
    );

    // Presence (both nodes' clients) and its stats.
    let got = sdk_call(&browser, "a", "presence", Value::Null).await;
    let mut ids: Vec<&String> = got["ok"]["clients"]
        .as_object()
        .unwrap_or_else(|| panic!("presence: {got}"))
        .keys()
        .collect();
    ids.sort();
    let mut want = [
        client_a.as_str().expect("a's id").to_string(),
        client_b.as_str().expect("b's id").to_string(),
    ];
    want.sort();
    assert_eq!(ids, want.iter().collect::<Vec<_>>(), "presence: {got}");
    let got = sdk_call(&browser, "b", "presenceStats", Value::Null).await;
    assert_eq!(got["ok"]["numClients"], 2, "presence stats: {got}");

    // A third client comes and goes: a sees it join and leave.
    js_run(&browser, "window.make('c', arguments[0]);", vec![ws(&n2)]).await;
    let cc = sdk_wait(&browser, "c connects", |e| {
        e["name"] == "c" && e["type"] == "connected"
    })
    .await;
    js_run(
        &browser,
        "window.sub('c', arguments[0]);",
        vec![json!(SDK_ROOM)],
    )
    .await;
    sdk_wait(&browser, "a sees c join", |e| {
        e["name"] == "a" && e["type"] == "join" && e["client"] == cc["client"]
    })
    .await;
    js_run(&browser, "window.clients.c.disconnect();", vec![]).await;
    sdk_wait(&browser, "a sees c leave", |e| {
        e["name"] == "a" && e["type"] == "leave" && e["client"] == cc["client"]
    })
    .await;

    // History.
    let got = sdk_call(&browser, "a", "history", json!({"limit": 10})).await;
    let pubs = got["ok"]["publications"]
        .as_array()
        .unwrap_or_else(|| panic!("history: {got}"));
    assert_eq!(pubs.len(), 1, "{got}");
    assert_eq!(pubs[0]["data"], json!({"text": "hello from the SDK"}));

    // a's transport drops (and stays away); b publishes; a comes back and
    // recovers what it missed, in order, once.
    js_run(
        &browser,
        "window.hold.a = true; window.sockets.a.close();",
        vec![],
    )
    .await;
    sdk_wait(&browser, "a is reconnecting", |e| {
        e["name"] == "a" && e["type"] == "connecting"
    })
    .await;
    let missed: Vec<Value> = (1..=3)
        .map(|i| json!({"text": format!("missed #{i}")}))
        .collect();
    for m in &missed {
        let got = sdk_call(&browser, "b", "publish", m.clone()).await;
        assert!(got.get("ok").is_some(), "publish: {got}");
    }
    js_run(&browser, "window.hold.a = false;", vec![]).await;
    let s = sdk_wait(&browser, "a resubscribes recovering", |e| {
        e["name"] == "a" && e["type"] == "subscribed" && e["wasRecovering"] == true
    })
    .await;
    assert_eq!(s["recovered"], true, "{s}");
    let got: Vec<Value> = wait_for("a shows what it missed", async || {
        let seen: Vec<Value> = sdk_events(&browser)
            .await
            .into_iter()
            .filter(|e| e["name"] == "a" && e["type"] == "publication")
            .map(|e| e["data"].clone())
            .collect();
        ((seen.len() > missed.len()).then(|| seen.clone()), seen)
    })
    .await;
    assert_eq!(got[1..], missed[..], "recovered in order, each once");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = sdk_events(&browser)
        .await
        .iter()
        .filter(|e| e["name"] == "a" && e["type"] == "publication")
        .count();
    assert_eq!(n, 1 + missed.len(), "no publication twice");
    assert!(
        n1.metric("roomcast_recovered_total") >= 1,
        "node 1 recovered it"
    );
    screenshot(&browser, &screenshot_dir().join("sdk.png")).await;
    bounded("end the session", browser.close()).await;
    drop((n1, n2, redis));
}

async fn js_run(browser: &Browser, script: &str, args: Vec<Value>) {
    bounded("run in the page", browser.execute(script, args)).await;
}

async fn sdk_events(browser: &Browser) -> Vec<Value> {
    let v = bounded(
        "read the events",
        browser.execute("return window.events;", vec![]),
    )
    .await;
    v.as_array().cloned().unwrap_or_default()
}

/// The first event that satisfies `cond`, waited for.
async fn sdk_wait(browser: &Browser, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, async || {
        let events = sdk_events(browser).await;
        (events.iter().find(|e| cond(e)).cloned(), events)
    })
    .await
}

/// `sub[what](arg)` on `name`'s subscription to [`SDK_ROOM`]: `{ok}` or `{err}`.
async fn sdk_call(browser: &Browser, name: &str, what: &str, arg: Value) -> Value {
    bounded(
        what,
        browser.execute_async(
            "const [n, r, w, a, done] = arguments; window.call(n, r, w, a, done);",
            vec![json!(name), json!(SDK_ROOM), json!(what), arg],
        ),
    )
    .await
}

// ---------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------

/// What a page shows, read in one round trip.
#[derive(Debug, Clone)]
struct Page {
    status: String,
    state: String,
    retry: String,
    /// The joined rooms' buttons, in order.
    rooms: Vec<String>,
    /// Whether every joined room is subscribed (none still on its way).
    subscribed: bool,
    /// The room selected to send to.
    current: String,
    /// The message input's value.
    text: String,
    /// Each `.msg` line without its time, and whether it is marked `own`.
    messages: Vec<(String, bool)>,
    /// The notes in the message log (`.note`), in order.
    notes: Vec<String>,
    /// The member list's heading, its entries and its note.
    members_title: String,
    members: Vec<String>,
    members_note: String,
    /// Whether the token form is shown, and what it says.
    auth_shown: bool,
    auth_error: String,
}

impl Page {
    fn is_open(&self) -> bool {
        self.status == "open" && self.state == "open" && self.retry.is_empty()
    }

    fn has(&self, line: &str) -> bool {
        self.messages.iter().any(|(l, _)| l == line)
    }
}

const PAGE_JS: &str = r#"
const $ = (id) => document.getElementById(id);
return {
  status: $("status").textContent,
  state: $("status").dataset.state || "",
  retry: $("retry").textContent,
  rooms: Array.from($("rooms").querySelectorAll("button"), (b) => b.textContent),
  subscribed: Array.from($("rooms").querySelectorAll("button"))
    .every((b) => b.dataset.state === "subscribed"),
  current: $("current").value,
  text: $("text").value,
  notes: Array.from($("messages").querySelectorAll("li.note"), (li) => li.textContent),
  members_title: $("members-h").textContent,
  members: Array.from($("members").querySelectorAll("li"), (li) => li.textContent),
  members_note: $("members-note").textContent,
  auth_shown: !$("authform").hidden,
  auth_error: $("autherror").textContent,
  messages: Array.from($("messages").querySelectorAll("li.msg"), (li) => [
    Array.from(li.childNodes)
      .filter((n) => n.nodeName !== "TIME")
      .map((n) => n.textContent)
      .join(""),
    li.classList.contains("own"),
  ]),
};
"#;

const WATCH_STATUS_JS: &str = r#"
const status = document.getElementById("status");
const retry = document.getElementById("retry");
window.statusLog = [];
const note = () => window.statusLog.push({
  status: status.textContent,
  state: status.dataset.state || "",
  retry: retry.textContent,
});
const watch = { childList: true, characterData: true, subtree: true, attributes: true };
const observer = new MutationObserver(note);
observer.observe(status, watch);
observer.observe(retry, watch);
"#;

const STATUS_LOG_JS: &str = "return window.statusLog;";

async fn page(browser: &Browser) -> Page {
    let v = bounded("read the page", browser.execute(PAGE_JS, vec![])).await;
    let s = |key: &str| {
        v[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} in {v}"))
            .to_string()
    };
    let list = |key: &str| -> &Vec<Value> { v[key].as_array().unwrap_or_else(|| panic!("{v}")) };
    let strings = |key: &str| -> Vec<String> {
        list(key)
            .iter()
            .map(|r| {
                r.as_str()
                    .unwrap_or_else(|| panic!("{key} in {v}"))
                    .to_string()
            })
            .collect()
    };
    let flag = |key: &str| v[key].as_bool().unwrap_or_else(|| panic!("{key} in {v}"));
    Page {
        status: s("status"),
        state: s("state"),
        retry: s("retry"),
        text: s("text"),
        rooms: strings("rooms"),
        subscribed: flag("subscribed"),
        current: s("current"),
        notes: strings("notes"),
        members_title: s("members_title"),
        members: strings("members"),
        members_note: s("members_note"),
        auth_shown: flag("auth_shown"),
        auth_error: s("auth_error"),
        messages: list("messages")
            .iter()
            .map(|m| {
                let text = m[0].as_str().expect("line text").to_string();
                (text, m[1].as_bool().expect("own flag"))
            })
            .collect(),
    }
}

/// Polls the page until `cond` holds; panics after [`WAIT`].
async fn wait_page(browser: &Browser, what: &str, cond: impl Fn(&Page) -> bool) -> Page {
    wait_for(what, async || {
        let p = page(browser).await;
        (cond(&p).then(|| p.clone()), p)
    })
    .await
}

/// Polls `probe` (which answers the value, once there is one, and what it
/// saw) until it answers a value; panics after [`WAIT`] with the last thing
/// it saw.
async fn wait_for<T, S: std::fmt::Debug>(
    what: &str,
    mut probe: impl AsyncFnMut() -> (Option<T>, S),
) -> T {
    let mut last = None;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let (value, seen) = probe().await;
            if let Some(v) = value {
                return v;
            }
            last = Some(seen);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!("timed out after {WAIT:?} waiting until {what}; last saw {last:#?}")
    })
}

/// Replaces an input's value by typing into it.
async fn fill(browser: &Browser, id: &str, value: &str) {
    let input = bounded(id, browser.find(Locator::Id(id))).await;
    bounded(id, input.clear()).await;
    bounded(id, input.send_keys(value)).await;
}

async fn click(browser: &Browser, id: &str) {
    let button = bounded(id, browser.find(Locator::Id(id))).await;
    bounded(id, button.click()).await;
}

/// chromedriver's `POST /session/{id}/se/log` for the `browser` log: the
/// console messages (and the browser's own errors, such as a failed
/// WebSocket or a missing resource) since the last time it was read.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or("")))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// Panics if the page logged a warning or an error to its console since the
/// last look.
async fn assert_quiet_console(browser: &Browser, what: &str) {
    let log = bounded("read the console log", browser.issue_cmd(BrowserLog)).await;
    let loud: Vec<&Value> = log
        .as_array()
        .unwrap_or_else(|| panic!("the console log: {log}"))
        .iter()
        .filter(|e| matches!(e["level"].as_str(), Some("SEVERE" | "WARNING")))
        .collect();
    assert!(loud.is_empty(), "{what}: the console says {loud:#?}");
}

async fn screenshot(browser: &Browser, path: &Path) {
    let png = bounded("screenshot", browser.screenshot()).await;
    std::fs::create_dir_all(path.parent().expect("a folder"))
        .unwrap_or_else(|e| panic!("create the folder of {}: {e}", path.display()));
    std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    eprintln!("screenshot: {}", path.display());
}

/// `target/browser`, in `CARGO_TARGET_DIR` if set, else in the workspace.
fn screenshot_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    target.join("browser")
}

/// Awaits a WebDriver command; panics if it fails or takes over [`WAIT`].
async fn bounded<T, E: Display>(what: &str, cmd: impl Future<Output = Result<T, E>>) -> T {
    match tokio::time::timeout(WAIT, cmd).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: no answer within {WAIT:?}"),
    }
}

// ---------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------

/// A new Chromium session with a profile of its own in `profile`.
async fn open_browser(webdriver: &str, chromium: &Path, profile: &Path) -> Browser {
    std::fs::create_dir_all(profile).expect("create the browser profile folder");
    let options = json!({
        "binary": chromium,
        "args": [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            format!("--user-data-dir={}", profile.display()),
            "--window-size=1000,700",
        ],
    });
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("goog:chromeOptions".into(), options);
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    bounded(
        "start a Chromium session",
        ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(webdriver),
    )
    .await
}

/// A `chromedriver` on a free port, with a temporary folder for its log and
/// the browsers' profiles. Dropping it kills chromedriver, every process
/// under it (the browsers) and removes the folder.
struct Driver {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl Driver {
    fn start(chromedriver: &Path) -> Driver {
        let dir = std::env::temp_dir().join(unique("roomcast-browser"));
        std::fs::create_dir_all(&dir).expect("create the browser test's folder");
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.join("chromedriver.log")).expect("log file");
            let mut cmd = Command::new(chromedriver);
            cmd.arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log file"))
                .stderr(log)
                // A group of its own, so the browsers can be killed with it.
                .process_group(0);
            let mut child = spawn_child(&mut cmd)
                .unwrap_or_else(|e| panic!("run {}: {e}", chromedriver.display()));
            let deadline = Instant::now() + WAIT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    // Its port was taken meanwhile? Try another.
                    last = format!("chromedriver exited ({status})\n{}", log_tail(&dir));
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Driver { port, dir, child };
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "chromedriver did not listen on {port} within {WAIT:?}\n{}",
                        log_tail(&dir)
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start chromedriver: {last}");
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_tail(&self) -> String {
        log_tail(&self.dir)
    }
}

fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("chromedriver.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    format!(
        "chromedriver log (last lines):\n{}",
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

impl Drop for Driver {
    fn drop(&mut self) {
        let root = self.child.id() as libc::pid_t;
        // Freeze chromedriver and everything under it first (a stopped
        // process starts no new ones and nothing gets re-parented), then
        // kill them all.
        let mut seen = HashSet::new();
        for _ in 0..20 {
            let new: Vec<_> = process_tree(root)
                .into_iter()
                .filter(|p| seen.insert(*p))
                .collect();
            if new.is_empty() {
                break;
            }
            for pid in new {
                // SAFETY: plain kill(2) on a process of this test's own tree.
                unsafe { libc::kill(pid, libc::SIGSTOP) };
            }
        }
        for &pid in &seen {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // And whatever else is left in chromedriver's process group.
        // SAFETY: as above; the group is chromedriver's own (process_group(0)).
        unsafe { libc::kill(-root, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `root` and its live descendants, from /proc.
fn process_tree(root: libc::pid_t) -> Vec<libc::pid_t> {
    let mut children: HashMap<libc::pid_t, Vec<libc::pid_t>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let Some(ppid) = fields.next().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if state != "Z" && state != "X" {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        if let Some(kids) = children.get(&tree[i]) {
            tree.extend(kids);
        }
        i += 1;
    }
    tree
}

/// The first `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}
