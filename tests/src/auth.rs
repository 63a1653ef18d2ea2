//! Helpers for the auth end-to-end tests (`tests/auth.rs`): JWTs minted with
//! the same crate and backend the node verifies them with (`jsonwebtoken`,
//! RustCrypto), the test key fixtures, `roomcast.toml` files in temporary
//! folders, and raw WebSocket upgrades with headers of the test's choosing.
//!
//! The keys are core's test fixtures (`core/tests/fixtures/*.pem`: 2048-bit
//! RSA and EC P-256 pairs made once with `openssl genpkey`), test keys only;
//! the HMAC secret is [`SECRET`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

use crate::{TIMEOUT, unique};

/// The HMAC secret the auth tests configure (`--token-hmac-secret`).
pub const SECRET: &str = "roomcast-e2e-hmac-secret-for-tests-only";

/// Another secret: tokens signed with it have a wrong signature.
pub const OTHER_SECRET: &str = "not-the-secret-the-node-knows";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures")
}

/// The RSA public key (PEM, SubjectPublicKeyInfo) matching [`rs256`]'s
/// private key: give it to `--token-public-key`.
pub fn rsa_public_key_path() -> PathBuf {
    fixtures().join("rsa_public.pem")
}

/// The EC P-256 public key matching [`es256`]'s private key.
pub fn ec256_public_key_path() -> PathBuf {
    fixtures().join("ec256_public.pem")
}

const RSA_PRIVATE: &[u8] = include_bytes!("../../core/tests/fixtures/rsa_private.pem");
const RSA_OTHER_PRIVATE: &[u8] = include_bytes!("../../core/tests/fixtures/rsa_other_private.pem");
const EC256_PRIVATE: &[u8] = include_bytes!("../../core/tests/fixtures/ec256_private.pem");

/// Wall-clock seconds since the Unix epoch (what `exp` is measured in).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// The wall-clock instant `exp` (seconds since the epoch), as an
/// [`Instant`] of this process (in the past if `exp` has passed).
pub fn instant_of(exp: u64) -> Instant {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    let at = Duration::from_secs(exp);
    let now = Instant::now();
    if at >= wall {
        now + (at - wall)
    } else {
        now - (wall - at)
    }
}

fn provider() {
    use jsonwebtoken::crypto::CryptoProvider;
    if CryptoProvider::try_get_default().is_none() {
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    }
}

fn b64(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        other => panic!("no test signs with {other:?}"),
    }
}

/// A JWT with exactly this header and these claims, signed with `key` for
/// `alg` (the header need not name `alg`: that is how a confused token is
/// made).
pub fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    provider();
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg)
        .unwrap_or_else(|e| panic!("sign a test token with {alg:?}: {e}"));
    format!("{message}.{sig}")
}

/// A JWT for `alg` with `{"alg":…,"typ":"JWT"}`.
pub fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    sign_raw(
        &json!({"alg": alg_name(alg), "typ": "JWT"}),
        claims,
        key,
        alg,
    )
}

/// HS256 with [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    hs256_with(SECRET, claims)
}

/// HS256 with another secret.
pub fn hs256_with(secret: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).expect("an HMAC key");
    sign(Algorithm::HS256, &key, claims)
}

/// RS256 with the fixture's RSA private key (see [`rsa_public_key_path`]).
pub fn rs256(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE).expect("the RSA fixture");
    sign(Algorithm::RS256, &key, claims)
}

/// RS256 with another RSA key than the node's.
pub fn rs256_other(claims: &Value) -> String {
    let key = EncodingKey::from_rsa_pem(RSA_OTHER_PRIVATE).expect("the other RSA fixture");
    sign(Algorithm::RS256, &key, claims)
}

/// ES256 with the fixture's P-256 private key (see [`ec256_public_key_path`]).
pub fn es256(claims: &Value) -> String {
    let key = EncodingKey::from_ec_pem(EC256_PRIVATE).expect("the P-256 fixture");
    sign(Algorithm::ES256, &key, claims)
}

/// HS256 whose HMAC key is the node's RSA *public* key file: the classic
/// algorithm-confusion forgery.
pub fn hs256_keyed_with_rsa_public_key(claims: &Value) -> String {
    let public = std::fs::read(rsa_public_key_path()).expect("read the RSA public key fixture");
    let key = EncodingKey::from_secret(&public).expect("an HMAC key");
    sign(Algorithm::HS256, &key, claims)
}

/// An unsigned token: header `{"alg":"none"}` and an empty signature.
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// A connection token's claims: `sub`, and `exp` `exp_in` seconds from now
/// (negative: in the past; `None`: no `exp`).
pub fn conn_claims(user: &str, exp_in: Option<i64>) -> Value {
    let mut c = json!({"sub": user});
    if let Some(d) = exp_in {
        c["exp"] = json!(now().saturating_add_signed(d));
    }
    c
}

/// A subscription token's claims: `sub`, `channel`, optional `exp`.
pub fn sub_claims(user: &str, channel: &str, exp_in: Option<i64>) -> Value {
    let mut c = conn_claims(user, exp_in);
    c["channel"] = json!(channel);
    c
}

/// A folder under the system's temporary folder, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` in this folder; returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `roomcast.toml` with `text` in a temporary folder of its own, for
/// `--config`. Keep it alive while the node reads it (at start).
/// Open mode's permissions without its history and presence: plain
/// Pub/Sub rooms.
pub fn plain_config() -> ConfigFile {
    ConfigFile::new(
        "allow_anonymous_connect_without_token = true\n\
         [default_namespace]\n\
         allow_subscribe_for_client = true\n\
         allow_subscribe_for_anonymous = true\n\
         allow_publish_for_client = true\n\
         allow_publish_for_subscriber = true\n\
         allow_publish_for_anonymous = true\n",
    )
}

pub struct ConfigFile {
    dir: TempDir,
    path: PathBuf,
}

impl ConfigFile {
    pub fn new(text: &str) -> ConfigFile {
        let dir = TempDir::new("roomcast-config");
        let path = dir.write("roomcast.toml", text);
        ConfigFile { dir, path }
    }

    /// The file's path, as a string for a flag.
    pub fn path(&self) -> &str {
        self.path.to_str().expect("a UTF-8 temporary path")
    }

    /// Its folder (for files a relative path in it names).
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }
}

/// The head of an upgrade response: its status and headers.
#[derive(Debug, Clone)]
pub struct UpgradeResponse {
    pub status: u16,
    pub head: String,
    /// What came after the head before the read stopped (a refusal's body).
    pub body: String,
}

/// Sends a WebSocket upgrade for `path` (with `Host: addr`, and `Origin`
/// when given) over raw TCP, and reads the response's head: a `101` is read
/// up to its blank line (the socket is then dropped), a refusal until the
/// server closes. Bounded by [`TIMEOUT`].
pub fn upgrade(addr: SocketAddr, path: &str, origin: Option<&str>) -> UpgradeResponse {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    if let Some(o) = origin {
        req.push_str(&format!("Origin: {o}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect for an upgrade");
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(req.as_bytes())
        .expect("write the upgrade request");
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no status in {head:?}"));
            if status == 101 {
                return UpgradeResponse {
                    status,
                    head: head.to_string(),
                    body: String::new(),
                };
            }
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if rest.len() >= len {
                return UpgradeResponse {
                    status,
                    head: head.to_string(),
                    body: rest.to_string(),
                };
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no complete upgrade response from {addr} within {TIMEOUT:?}: {text:?}"
        );
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut chunk) {
            Ok(0) => panic!("{addr} closed before a complete response: {text:?}"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("read the upgrade response from {addr}: {e} (so far {text:?})"),
        }
    }
}
