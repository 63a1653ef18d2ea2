//! The `Origin` check of WebSocket upgrades, against cross-site WebSocket
//! hijacking: a browser attaches cookies to a cross-site upgrade, and the
//! same-origin policy does not apply to WebSocket, so the server checks.
//!
//! - A request without `Origin` passes: non-browser clients send none, and
//!   are not the threat (as Centrifugo).
//! - With `allowed_origins` set: the Origin must match one of the glob
//!   patterns, compared case-insensitively. `*` matches any run of
//!   characters except `/` (so `https://*.example.com` matches
//!   `https://a.b.example.com` and `http://localhost:*` any port); `?`
//!   matches one such character; the pattern `*` alone allows every
//!   Origin. Every other character is literal.
//! - Without it (or with an empty list): the Origin (`http` or `https`) must name the host the
//!   request came to: its `host[:port]` equals the `Host` header's,
//!   case-insensitively, where a default port (80 for http, 443 for https)
//!   may be written or left out on either side. `Origin: null`, other
//!   schemes, or a missing `Host` are refused.
//!
//! A refused upgrade is answered 403.

/// An `allowed_origins` glob pattern (stored lowercased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern from its text.
    pub fn new(pattern: &str) -> Pattern {
        Pattern(pattern.to_ascii_lowercase())
    }

    /// The pattern's text (lowercased).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `origin` matches (case-insensitively).
    pub fn matches(&self, origin: &str) -> bool {
        if self.0 == "*" {
            return true;
        }
        let origin = origin.to_ascii_lowercase();
        glob(self.0.as_bytes(), origin.as_bytes())
    }
}

/// Glob match where `*` and `?` never match `/`: the pattern and the text
/// must have as many `/`-separated segments, each matching.
fn glob(pat: &[u8], text: &[u8]) -> bool {
    let mut ps = pat.split(|&b| b == b'/');
    let mut ts = text.split(|&b| b == b'/');
    loop {
        match (ps.next(), ts.next()) {
            (Some(p), Some(t)) if glob_segment(p, t) => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The classic linear glob match (`*` any run, `?` one byte), backtracking
/// only to the last `*`.
fn glob_segment(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() && pat[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pat.len() && (pat[p] == b'?' || pat[p] == text[t]) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            star = Some((sp, st + 1));
            p = sp + 1;
            t = st + 1;
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Whether an upgrade may proceed. `origin`: its `Origin` header; `host`:
/// its `Host` header; `allowed`: the `allowed_origins` patterns, empty when
/// the setting is absent (or an empty list): then the same-host rule applies.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &[Pattern]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let origin = origin.trim();
    if allowed.is_empty() {
        host.is_some_and(|h| same_host(origin, h.trim()))
    } else {
        allowed.iter().any(|p| p.matches(origin))
    }
}

/// `host[:port]` split, with IPv6 brackets kept on the host.
fn split_authority(a: &str) -> Option<(&str, Option<&str>)> {
    if a.is_empty() {
        return None;
    }
    if a.starts_with('[') {
        let end = a.find(']')?;
        let (h, rest) = a.split_at(end + 1);
        return match rest {
            "" => Some((h, None)),
            r => r.strip_prefix(':').map(|p| (h, Some(p))),
        };
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p))),
        Some(_) => None,
        None => Some((a, None)),
    }
}

fn port(p: Option<&str>, default: u16) -> Option<u16> {
    match p {
        None => Some(default),
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok(),
        Some(_) => None,
    }
}

fn same_host(origin: &str, host: &str) -> bool {
    let lower = origin.to_ascii_lowercase();
    let (default, authority) = if let Some(a) = lower.strip_prefix("https://") {
        (443, a)
    } else if let Some(a) = lower.strip_prefix("http://") {
        (80, a)
    } else {
        return false;
    };
    // An Origin is scheme://host[:port]; tolerate one trailing slash.
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains(['/', '?', '#', '@']) {
        return false;
    }
    let (Some((oh, op)), Some((hh, hp))) = (split_authority(authority), split_authority(host))
    else {
        return false;
    };
    let (Some(op), Some(hp)) = (port(op, default), port(hp, default)) else {
        return false;
    };
    !oh.is_empty() && oh.eq_ignore_ascii_case(hh) && op == hp
}
