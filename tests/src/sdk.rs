//! Real Centrifugo SDKs as test clients.
//!
//! roomcast speaks Centrifugo's bidirectional client protocol (JSON) at
//! `/connection/websocket`, so the SDKs that Centrifugo's users run are its
//! clients in the end-to-end tests: `centrifuge` from npm in Node.js (with
//! `ws` as its WebSocket) and `centrifuge-python` from PyPI. Each runs inside
//! an *agent* (`tests/sdk/js/agent.mjs`, `tests/sdk/py/agent.py`): a child
//! process driven by one JSON command per line on stdin, answering one JSON
//! object per line on stdout. The protocol (commands, replies, events) is
//! documented at the top of `tests/sdk/js/agent.mjs`; the Python agent lists
//! where its SDK differs.
//!
//! [`ensure_js`] / [`ensure_py`] install the SDKs (once per process, safely
//! across processes: `tests/sdk/install.sh` works under a file lock and keeps
//! an install whose stamp matches the lockfile or requirements), into
//! `<target>/sdk/js` and `<target>/sdk/py`. A missing `node`, `npm` or
//! `python3`, or a failed install, panics with the reason: these tests never
//! skip.
//!
//! [`Agent`] owns one agent process: [`Agent::call`] sends a command and waits
//! for its reply, [`Agent::wait_event`] waits for an event. Events are
//! buffered, so none is lost between calls. Every wait is bounded; a timeout
//! panics with what the agent printed on stderr. Dropping the agent kills it.
//!
//! ```no_run
//! use roomcast_tests::sdk::{Agent, is};
//! use roomcast_tests::json;
//! use std::time::Duration;
//!
//! let mut a = Agent::js();
//! a.ok(json!({"cmd": "connect", "url": "ws://127.0.0.1:8000/connection/websocket"}));
//! let ev = a.wait_event(is("connected"), Duration::from_secs(10));
//! println!("client id {}", ev["client"]);
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{TIMEOUT, spawn_child};

/// How long an install may take before it is killed and the test fails.
const INSTALL_LIMIT: Duration = Duration::from_secs(900);

/// How long an agent may take to start (load its SDK) and say `ready`.
const START_LIMIT: Duration = Duration::from_secs(30);

/// Lines of an agent's stderr kept for failure messages.
const STDERR_KEPT: usize = 200;

/// Which SDK an agent runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sdk {
    /// `centrifuge` (npm) in Node.js, `tests/sdk/js/agent.mjs`.
    Js,
    /// `centrifuge-python` (PyPI), `tests/sdk/py/agent.py`.
    Py,
}

impl Sdk {
    /// Both SDKs.
    pub const ALL: [Sdk; 2] = [Sdk::Js, Sdk::Py];

    /// `"js"` or `"py"`, as the agents name themselves in their `ready` event.
    pub fn name(self) -> &'static str {
        match self {
            Sdk::Js => "js",
            Sdk::Py => "py",
        }
    }
}

impl fmt::Display for Sdk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `tests/sdk`: the agents, their package pins and `install.sh`.
pub fn sdk_source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sdk")
}

/// Where the SDKs are installed: `$ROOMCAST_SDK_ROOT` if set, else `sdk/`
/// in the Cargo target directory this test binary was built into (the
/// nearest ancestor holding Cargo's `CACHEDIR.TAG`, else the folder above
/// `<profile>/deps/`), else `<workspace>/target/sdk`. `tests/sdk/install.sh`
/// without a root picks the same folder, so a CI step that runs it leaves
/// nothing for the tests to install.
pub fn sdk_root() -> PathBuf {
    if let Some(root) = std::env::var_os("ROOMCAST_SDK_ROOT") {
        return PathBuf::from(root);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(target) = exe.ancestors().find(|d| d.join("CACHEDIR.TAG").is_file()) {
            return target.join("sdk");
        }
        let deps = exe.parent().filter(|d| d.ends_with("deps"));
        if let Some(target) = deps.and_then(Path::parent).and_then(Path::parent) {
            return target.join("sdk");
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sdk")
}

/// Installs the JS SDK agent's packages (`npm ci` from the committed
/// lockfile) unless installed and up to date; returns the install folder
/// (`<root>/js`, holding `node_modules`). Panics if it cannot.
pub fn ensure_js() -> PathBuf {
    ensure(Sdk::Js)
}

/// Installs the Python SDK agent's virtualenv (`pip install
/// --require-hashes`) unless installed and up to date; returns the
/// virtualenv (`<root>/py`). Panics if it cannot.
pub fn ensure_py() -> PathBuf {
    ensure(Sdk::Py)
}

/// [`ensure_js`] or [`ensure_py`].
pub fn ensure(sdk: Sdk) -> PathBuf {
    static JS: OnceLock<PathBuf> = OnceLock::new();
    static PY: OnceLock<PathBuf> = OnceLock::new();
    let cell = match sdk {
        Sdk::Js => &JS,
        Sdk::Py => &PY,
    };
    // OnceLock makes the other threads of this process wait for the first
    // install; install.sh's lock covers other processes.
    cell.get_or_init(|| install(sdk)).clone()
}

/// Installs the HTTP API clients' virtualenv (`cent` and schemathesis,
/// tests/api-client/requirements.txt, `pip install --require-hashes`)
/// unless installed and up to date; returns it (`<root>/api`). Panics if
/// it cannot.
pub fn ensure_api_clients() -> PathBuf {
    static API: OnceLock<PathBuf> = OnceLock::new();
    API.get_or_init(|| {
        install_named(
            "api",
            &[(
                "python3",
                "Python 3.10+ with venv (Debian: apt-get install python3 python3-venv)",
            )],
        )
    })
    .clone()
}

/// Builds a Redis 8 `redis-server` (per-field expiry) from Debian 13's
/// source tarball, pinned by sha256, unless built and up to date; returns
/// its folder (`<root>/redis8`, holding `redis-server`). Panics if it
/// cannot.
pub fn ensure_redis8() -> PathBuf {
    static REDIS8: OnceLock<PathBuf> = OnceLock::new();
    REDIS8
        .get_or_init(|| {
            install_named(
                "redis8",
                &[
                    ("curl", "curl (Debian: apt-get install curl)"),
                    ("make", "make (Debian: apt-get install build-essential)"),
                    ("gcc", "gcc (Debian: apt-get install build-essential)"),
                ],
            )
        })
        .clone()
}

fn install(sdk: Sdk) -> PathBuf {
    let tools: &[(&str, &str)] = match sdk {
        Sdk::Js => &[
            ("node", "Node.js 18+ (Debian: apt-get install nodejs npm)"),
            ("npm", "npm (Debian: apt-get install npm)"),
        ],
        Sdk::Py => &[(
            "python3",
            "Python 3.10+ with venv (Debian: apt-get install python3 python3-venv)",
        )],
    };
    install_named(sdk.name(), tools)
}

/// Runs `install.sh <sdk>` once `tools` are found.
fn install_named(sdk: &str, tools: &[(&str, &str)]) -> PathBuf {
    for (tool, what) in tools {
        let found = Command::new(tool)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            found,
            "installing {sdk} needs `{tool}` on PATH: install {what} (.ci/run does)"
        );
    }
    let root = sdk_root();
    let script = sdk_source_dir().join("install.sh");
    let started = Instant::now();
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .arg(sdk)
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_child(&mut cmd)
        .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", script.display()));
    let stdout = collect(child.stdout.take().expect("piped stdout"));
    let stderr = collect(child.stderr.take().expect("piped stderr"));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < INSTALL_LIMIT => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "installing the {sdk} SDK took over {INSTALL_LIMIT:?}; it printed:\n{}",
                    String::from_utf8_lossy(&stderr.join().unwrap_or_default())
                );
            }
            Err(e) => panic!("waiting for {}: {e}", script.display()),
        }
    };
    let out = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
    assert!(
        status.success(),
        "installing the {sdk} SDK failed ({status}): bash {} {} {}\n{err}{out}",
        script.display(),
        sdk,
        root.display()
    );
    let dir = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    assert!(
        dir.is_dir(),
        "install.sh printed no install folder for the {sdk} SDK: {out:?}\n{err}"
    );
    if !err.is_empty() {
        eprintln!(
            "[sdk] {sdk} installed in {:.1?} into {}:\n{err}",
            started.elapsed(),
            dir.display()
        );
    }
    dir
}

fn collect(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// A predicate for [`Agent::wait_event`]: the event named `name`.
pub fn is(name: &str) -> impl Fn(&Value) -> bool + '_ {
    move |ev| ev["event"] == name
}

/// A predicate for [`Agent::wait_event`]: the event named `name` about
/// `channel` (of a client-side or a server-side subscription).
pub fn is_on<'a>(name: &'a str, channel: &'a str) -> impl Fn(&Value) -> bool + 'a {
    move |ev| ev["event"] == name && ev["channel"] == channel
}

enum Line {
    Text(String),
    End,
}

/// One SDK agent process. See the module docs.
pub struct Agent {
    sdk: Sdk,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Line>,
    stdout_ended: bool,
    /// Every event received, in order (also those taken by `wait_event`).
    seen: Vec<Value>,
    /// Events not yet taken by `wait_event`, in order.
    unclaimed: VecDeque<Value>,
    /// Replies received and not yet asked for, by reqId.
    replies: HashMap<u64, Value>,
    /// Replies with `reqId: null` (to lines that were no command).
    orphans: VecDeque<Value>,
    next_req: u64,
    call_timeout: Duration,
    stderr: Arc<Mutex<VecDeque<String>>>,
    ready: Value,
}

impl Agent {
    /// An agent running the JS SDK (installed first if needed).
    pub fn js() -> Agent {
        Agent::spawn(Sdk::Js)
    }

    /// An agent running the Python SDK (installed first if needed).
    pub fn py() -> Agent {
        Agent::spawn(Sdk::Py)
    }

    /// Starts an agent and waits for its `ready` event. Spawn it from the
    /// test's own thread: the agent is killed when that thread ends.
    pub fn spawn(sdk: Sdk) -> Agent {
        let installed = ensure(sdk);
        let src = sdk_source_dir();
        let mut cmd = match sdk {
            Sdk::Js => {
                let mut c = Command::new("node");
                c.arg(src.join("js/agent.mjs"))
                    .env("ROOMCAST_SDK_JS_DIR", &installed);
                c
            }
            Sdk::Py => {
                let mut c = Command::new(installed.join("bin/python"));
                c.arg("-u")
                    .arg(src.join("py/agent.py"))
                    .env("PYTHONUNBUFFERED", "1")
                    .env("PYTHONDONTWRITEBYTECODE", "1");
                c
            }
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child =
            spawn_child(&mut cmd).unwrap_or_else(|e| panic!("cannot start the {sdk} agent: {e}"));
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");

        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf).trim_end().to_owned();
                        if tx.send(Line::Text(text)).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(Line::End);
        });
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let kept = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                eprintln!("[agent-{sdk} {pid}] {line}");
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                if kept.len() == STDERR_KEPT {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });

        let mut agent = Agent {
            sdk,
            child,
            stdin,
            lines,
            stdout_ended: false,
            seen: Vec::new(),
            unclaimed: VecDeque::new(),
            replies: HashMap::new(),
            orphans: VecDeque::new(),
            next_req: 1,
            call_timeout: TIMEOUT,
            stderr,
            ready: Value::Null,
        };
        let ready = agent.wait_event(is("ready"), START_LIMIT);
        assert_eq!(
            ready["sdk"],
            sdk.name(),
            "the {sdk} agent introduced itself as {ready}"
        );
        agent.ready = ready;
        agent
    }

    /// Which SDK this agent runs.
    pub fn sdk(&self) -> Sdk {
        self.sdk
    }

    /// The agent's `ready` event: `{"event":"ready","sdk","version",...}`.
    pub fn ready(&self) -> &Value {
        &self.ready
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sets how long [`Agent::call`] waits for a reply (default [`TIMEOUT`]).
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.call_timeout = timeout;
    }

    /// Sends a command (an object with `"cmd"`; `reqId` is added) and waits
    /// for its reply: `Ok(result)` or `Err(error)`, the error being
    /// `{"code","message"}`. Panics if no reply comes in time.
    pub fn call(&mut self, cmd: Value) -> Result<Value, Value> {
        let timeout = self.call_timeout;
        self.call_timeout(cmd, timeout)
    }

    /// [`Agent::call`] with its own timeout.
    pub fn call_timeout(&mut self, mut cmd: Value, timeout: Duration) -> Result<Value, Value> {
        let id = self.next_req;
        self.next_req += 1;
        let Some(obj) = cmd.as_object_mut() else {
            panic!("an agent command is a JSON object, not {cmd}");
        };
        obj.insert("reqId".into(), Value::from(id));
        let line = cmd.to_string();
        self.send_line(&line);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(reply) = self.replies.remove(&id) {
                return if reply["ok"] == true {
                    Ok(reply["result"].clone())
                } else {
                    Err(reply["error"].clone())
                };
            }
            if !self.pump_until(deadline) {
                self.fail(&format!("no reply within {timeout:?} to {line}"));
            }
        }
    }

    /// [`Agent::call`], panicking if the reply is an error.
    pub fn ok(&mut self, cmd: Value) -> Value {
        let shown = cmd.to_string();
        match self.call(cmd) {
            Ok(result) => result,
            Err(e) => self.fail(&format!("{shown} failed: {e}")),
        }
    }

    /// [`Agent::call`], panicking unless the reply is an error; returns it.
    pub fn err(&mut self, cmd: Value) -> Value {
        let shown = cmd.to_string();
        match self.call(cmd) {
            Ok(result) => self.fail(&format!("{shown} succeeded ({result}), expected an error")),
            Err(e) => e,
        }
    }

    /// Writes `line` as it is (it need not be JSON) and waits for the next
    /// reply that carries `reqId: null`, as the agents answer a line that is
    /// no command; returns that whole reply.
    pub fn call_raw(&mut self, line: &str) -> Value {
        assert!(!line.contains('\n'), "one line at a time");
        self.send_line(line);
        let deadline = Instant::now() + self.call_timeout;
        loop {
            if let Some(reply) = self.orphans.pop_front() {
                return reply;
            }
            if !self.pump_until(deadline) {
                self.fail(&format!("no reply to the raw line {line:?}"));
            }
        }
    }

    /// Waits for the first event matching `pred` that no earlier
    /// `wait_event` took (events that arrived before this call included) and
    /// takes it. Panics after `timeout`.
    pub fn wait_event(&mut self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        match self.try_wait_event(&pred, timeout) {
            Some(ev) => ev,
            None => {
                let seen: Vec<String> = self.seen.iter().map(Value::to_string).collect();
                self.fail(&format!(
                    "no matching event within {timeout:?}; events so far:\n  {}",
                    seen.join("\n  ")
                ))
            }
        }
    }

    /// [`Agent::wait_event`] that returns `None` on timeout.
    pub fn try_wait_event(
        &mut self,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            if let Some(i) = self.unclaimed.iter().skip(checked).position(&pred) {
                return self.unclaimed.remove(checked + i);
            }
            checked = self.unclaimed.len();
            if !self.pump_until(deadline) {
                return None;
            }
        }
    }

    /// Panics if an event matching `pred` arrives within `period` (or
    /// arrived already and was not taken).
    pub fn expect_no_event(&mut self, pred: impl Fn(&Value) -> bool, period: Duration) {
        if let Some(ev) = self.try_wait_event(&pred, period) {
            self.fail(&format!("unexpected event {ev}"));
        }
    }

    /// Every event received so far, in order, including those taken by
    /// [`Agent::wait_event`]. [`Agent::drain`] first to include what the
    /// agent printed since the last call.
    pub fn events(&self) -> &[Value] {
        &self.seen
    }

    /// Takes in every line the agent has printed so far, without waiting.
    pub fn drain(&mut self) {
        self.pump_until(Instant::now());
    }

    /// The last lines the agent wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let kept = self.stderr.lock().unwrap_or_else(|e| e.into_inner());
        let skip = kept.len().saturating_sub(40);
        kept.iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Sends `exit` and waits for the process to end; panics unless it
    /// replied and exited with status 0 in time.
    pub fn exit(mut self) {
        self.ok(serde_json::json!({"cmd": "exit"}));
        let deadline = Instant::now() + self.call_timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    assert!(
                        status.success(),
                        "the {} agent exited with {status}",
                        self.sdk
                    );
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => self.fail("still running after `exit`"),
                Err(e) => panic!("waiting for the {} agent: {e}", self.sdk),
            }
        }
    }

    fn send_line(&mut self, line: &str) {
        let sdk = self.sdk;
        let Some(stdin) = self.stdin.as_mut() else {
            panic!("the {sdk} agent's stdin is closed");
        };
        if let Err(e) = stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.write_all(b"\n"))
            .and_then(|()| stdin.flush())
        {
            self.fail(&format!("cannot write to the agent ({e}): {line}"));
        }
    }

    /// Takes in lines until one arrives or `deadline` passes; then takes in
    /// whatever else is already there without waiting. False if nothing
    /// arrived before the deadline.
    fn pump_until(&mut self, deadline: Instant) -> bool {
        let mut got = false;
        loop {
            let line = if got {
                match self.lines.try_recv() {
                    Ok(line) => line,
                    Err(_) => return true,
                }
            } else {
                if self.stdout_ended {
                    self.fail("the agent's stdout ended (it exited)");
                }
                let left = deadline.saturating_duration_since(Instant::now());
                match self.lines.recv_timeout(left) {
                    Ok(line) => line,
                    Err(mpsc::RecvTimeoutError::Timeout) => return false,
                    Err(mpsc::RecvTimeoutError::Disconnected) => Line::End,
                }
            };
            got = true;
            match line {
                Line::Text(text) => self.take_line(&text),
                Line::End => {
                    self.stdout_ended = true;
                    return true;
                }
            }
        }
    }

    fn take_line(&mut self, text: &str) {
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => self.fail(&format!(
                "the agent printed a line that is not JSON ({e}): {text:?}"
            )),
        };
        if value.get("event").is_some_and(Value::is_string) {
            self.seen.push(value.clone());
            self.unclaimed.push_back(value);
        } else if value.get("ok").is_some_and(Value::is_boolean) {
            match &value["reqId"] {
                Value::Null => self.orphans.push_back(value),
                id => match id.as_u64() {
                    Some(id) => {
                        self.replies.insert(id, value);
                    }
                    None => self.fail(&format!("a reply with a strange reqId: {text}")),
                },
            }
        } else {
            self.fail(&format!(
                "the agent printed JSON that is neither an event nor a reply: {text}"
            ));
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{} agent (pid {}): {what}\n--- its stderr, last lines ---\n{}",
            self.sdk,
            self.child.id(),
            self.stderr_tail()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
