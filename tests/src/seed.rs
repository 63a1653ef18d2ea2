//! The seed (tutorial) Node.js server, `tests/seed-node`.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Client, free_port, spawn_child, unique};

/// The seed's payload for a message to `room`.
pub fn seed_payload(room: &str, message: &Value) -> String {
    json!({"type": "sendMessage", "roomId": room, "message": message}).to_string()
}

/// `tests/seed-node`, the reconstructed tutorial server.
pub fn seed_source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("seed-node")
}

/// Why the seed cannot run here (`node` or `npm` missing), if so.
pub fn seed_unavailable() -> Option<String> {
    for tool in ["node", "npm"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("`{tool}` is not on PATH"));
        }
    }
    None
}

/// Installs the seed's npm packages (once per content of package.json and
/// server.js) into a folder under `cache_root` and returns that folder.
pub fn install_seed(cache_root: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    static INSTALLED: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut guard = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = &*guard {
        return dir.clone();
    }
    let src = seed_source_dir();
    let package = std::fs::read(src.join("package.json")).expect("seed-node/package.json");
    let server = std::fs::read(src.join("server.js")).expect("seed-node/server.js");
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&package, &server).hash(&mut h);
    let dir = cache_root.join(format!("seed-node-{:016x}", h.finish()));
    if !dir.join("node_modules/ws").is_dir() || !dir.join("node_modules/redis").is_dir() {
        let staging = cache_root.join(unique("seed-node-staging"));
        std::fs::create_dir_all(&staging).expect("create seed staging folder");
        std::fs::write(staging.join("package.json"), &package).unwrap();
        std::fs::write(staging.join("server.js"), &server).unwrap();
        let out = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&staging)
            .stdin(Stdio::null())
            .output()
            .expect("run npm install");
        assert!(
            out.status.success(),
            "npm install --prefix {} failed: {}\n{}",
            staging.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if std::fs::rename(&staging, &dir).is_err() {
            // Another process installed it first.
            let _ = std::fs::remove_dir_all(&staging);
        }
    }
    *guard = Some(dir.clone());
    dir
}

/// The tutorial server, `node server.js`, on a free port.
pub struct SeedNode {
    child: Child,
    port: u16,
}

impl SeedNode {
    /// Runs the installed seed with `PORT` and `REDIS_URL` and waits for its
    /// `seed listening on` line.
    pub fn start(install_dir: &Path, redis_url: &str) -> SeedNode {
        let port = free_port();
        let mut cmd = Command::new("node");
        cmd.arg("server.js")
            .current_dir(install_dir)
            .env("PORT", port.to_string())
            .env("REDIS_URL", redis_url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_child(&mut cmd).expect("run node server.js");
        let (tx, rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for pipe in [Box::new(stdout) as Box<dyn Read + Send>, Box::new(stderr)] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in io::BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("[seed] {line}");
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) if line.contains("seed listening on") => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the seed never said `seed listening on`; it printed {seen:?}");
                }
            }
        }
        SeedNode { child, port }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr())
    }
}

impl Drop for SeedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
