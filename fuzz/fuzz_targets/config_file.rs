//! Arbitrary bytes as a `roomcast.toml`.
//!
//! - `settings::parse` never panics;
//! - a refusal is one line starting with the file's name, and its line
//!   number (when given) is a line of the text;
//! - an accepted file's flags render as command-line arguments, and
//!   `build_auth` (with no key bytes, an RSA public key, or junk) never
//!   panics and refuses in one line; a built `Auth` answers a few questions
//!   without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast_core::auth::User;
use roomcast_core::settings;

const RSA_PUBLIC: &[u8] = include_bytes!("../../core/tests/fixtures/rsa_public.pem");

fn one_line(s: &str) {
    assert!(
        !s.contains('\n') && !s.contains('\r'),
        "not one line: {s:?}"
    );
    assert!(s.starts_with("roomcast.toml"), "{s}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match settings::parse("roomcast.toml", text) {
        Err(e) => {
            one_line(&e.to_string());
            if let Some(line) = e.line {
                assert!(line >= 1 && line <= text.split('\n').count(), "line {line}");
            }
        }
        Ok(s) => {
            for f in &s.flags {
                if let Some(arg) = f.cli_arg() {
                    assert!(arg.starts_with("--"));
                }
            }
            for pem in [
                None,
                Some(RSA_PUBLIC),
                Some(b"-----BEGIN PUBLIC KEY-----\n".as_slice()),
            ] {
                match s.build_auth(pem) {
                    Err(e) => one_line(&e.to_string()),
                    Ok(auth) => {
                        let u = User::new("1");
                        let _ = auth.connect(Some("a.b.c"), 0);
                        let _ = auth.seed_upgrade(None, 0);
                        for room in ["lobby", "chat:x", "$p", "a#1", ":x"] {
                            let _ = auth.subscribe(&u, room, None, 0);
                            let _ = auth.publish(&User::anonymous(), room, true);
                        }
                        let _ = auth.origin_allowed(Some("https://x.example.com"), Some("h"));
                    }
                }
            }
            let _ = s.unreadable_public_key(&"gone");
        }
    }
});
