//! Centrifugo's bidirectional client protocol (JSON encoding) as
//! `roomcast-load --protocol centrifugo` speaks it: the commands it sends
//! (`connect`, `subscribe`, `publish`, the pong `{}`) and a reader for what a
//! server sends back (replies, error replies, pushes and pings), one JSON
//! object per line, several lines per WebSocket frame allowed.
//!
//! Reading has two paths that give the same answers. [`parse_line`] first
//! tries an exact match of the compact shapes a server writes
//! (`{"push":{"channel":"R","pub":{"data":"D","info":{…}}}}`,
//! `{"id":N,"method":{…}}`, `{}`) that borrows the strings from the frame
//! and decodes no JSON escapes; whatever it does not take (white space,
//! escapes, other field orders, error replies, other pushes) goes to a
//! general reader built on `serde_json`.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::Value;

/// The WebSocket path of the protocol.
pub const PATH: &str = "/connection/websocket";
/// The subprotocol the client offers.
pub const SUBPROTOCOL: &str = "centrifuge-json";
/// The client's answer to a server ping (itself `{}`).
pub const PONG: &str = "{}";

/// `{"id":N,"connect":{}}`.
pub fn connect_command(id: u32) -> String {
    format!(r#"{{"id":{id},"connect":{{}}}}"#)
}

/// `{"id":N,"subscribe":{"channel":R}}`.
pub fn subscribe_command(id: u32, channel: &str) -> String {
    let mut s = String::with_capacity(channel.len() + 48);
    let _ = write!(s, r#"{{"id":{id},"subscribe":{{"channel":"#);
    write_json_string(channel, &mut s);
    s.push_str("}}");
    s
}

/// `{"id":N,"publish":{"channel":R,"data":"MESSAGE"}}`: the message is sent
/// as a JSON string, so that a member's push carries it back as one.
pub fn publish_command(id: u32, channel: &str, message: &str) -> String {
    let mut s = String::with_capacity(channel.len() + message.len() + 48);
    let _ = write!(s, r#"{{"id":{id},"publish":{{"channel":"#);
    write_json_string(channel, &mut s);
    s.push_str(r#","data":"#);
    write_json_string(message, &mut s);
    s.push_str("}}");
    s
}

/// Appends `s` as a JSON string.
fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
    } else {
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

/// One line of a server frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// `{}`: the server's ping, to be answered with [`PONG`].
    Ping,
    /// A publication pushed to a member: `data` is the string it carried,
    /// `None` when the data was JSON other than a string.
    Publication {
        channel: Cow<'a, str>,
        data: Option<Cow<'a, str>>,
    },
    /// Any other push (`unsubscribe`, `disconnect`, `join`, …): `kind` is
    /// its field name.
    OtherPush { channel: String, kind: String },
    /// A successful reply to command `id`.
    Reply { id: u32 },
    /// An error reply to command `id`.
    Error { id: u32, code: u64, message: String },
}

/// The non-empty lines of a frame (`\n`-separated, white space around each
/// line ignored).
pub fn lines(frame: &str) -> impl Iterator<Item = &str> {
    frame
        .split('\n')
        .map(str::trim_ascii)
        .filter(|l| !l.is_empty())
}

/// Reads one line; `Err` says why it is not something a server sends.
pub fn parse_line(line: &str) -> Result<Line<'_>, String> {
    match fast(line) {
        Some(l) => Ok(l),
        None => general(line),
    }
}

/// The exact compact shapes, or `None` to leave the line to [`general`].
fn fast(line: &str) -> Option<Line<'_>> {
    if line == "{}" {
        return Some(Line::Ping);
    }
    if let Some(rest) = line.strip_prefix(r#"{"push":{"channel":""#) {
        let (channel, rest) = plain_string(rest)?;
        let rest = rest.strip_prefix(r#","pub":{"data":""#)?;
        let (data, rest) = plain_string(rest)?;
        let rest = match rest.strip_prefix(r#","info":"#) {
            Some(info) => {
                if !info.starts_with('{') {
                    return None;
                }
                &info[skip_value(info.as_bytes(), 0, 0)?..]
            }
            None => rest,
        };
        return (rest == "}}}").then_some(Line::Publication {
            channel: Cow::Borrowed(channel),
            data: Some(Cow::Borrowed(data)),
        });
    }
    let rest = line.strip_prefix(r#"{"id":"#)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 10 || rest.starts_with('0') {
        return None;
    }
    let id: u32 = rest[..digits].parse().ok()?;
    let rest = rest[digits..].strip_prefix(r#",""#)?;
    let (key, rest) = plain_string(rest)?;
    if matches!(key, "id" | "push" | "error") {
        return None;
    }
    let value = rest.strip_prefix(':')?.as_bytes();
    if value.first() != Some(&b'{') {
        return None;
    }
    let end = skip_value(value, 0, 0)?;
    (&value[end..] == b"}").then_some(Line::Reply { id })
}

/// The characters up to the next `"` and what follows that quote, when
/// there is no escape and no control character before it.
fn plain_string(s: &str) -> Option<(&str, &str)> {
    let end = s
        .bytes()
        .position(|b| b == b'"' || b == b'\\' || b < 0x20)?;
    (s.as_bytes()[end] == b'"').then(|| (&s[..end], &s[end + 1..]))
}

/// Where the JSON value starting at `i` ends, for values without string
/// escapes and without white space, at most 32 levels deep; `None` for
/// anything else (which the general reader then judges).
fn skip_value(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    if depth > 32 {
        return None;
    }
    match *b.get(i)? {
        b'{' => {
            let mut i = i + 1;
            if b.get(i) == Some(&b'}') {
                return Some(i + 1);
            }
            loop {
                if b.get(i) != Some(&b'"') {
                    return None;
                }
                i = skip_string(b, i)?;
                if b.get(i) != Some(&b':') {
                    return None;
                }
                i = skip_value(b, i + 1, depth + 1)?;
                match b.get(i)? {
                    b',' => i += 1,
                    b'}' => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b'[' => {
            let mut i = i + 1;
            if b.get(i) == Some(&b']') {
                return Some(i + 1);
            }
            loop {
                i = skip_value(b, i, depth + 1)?;
                match b.get(i)? {
                    b',' => i += 1,
                    b']' => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b'"' => skip_string(b, i),
        b't' => b[i..].starts_with(b"true").then_some(i + 4),
        b'f' => b[i..].starts_with(b"false").then_some(i + 5),
        b'n' => b[i..].starts_with(b"null").then_some(i + 4),
        b'-' | b'0'..=b'9' => skip_number(b, i),
        _ => None,
    }
}

fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let len = b[i + 1..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    (b[i + 1 + len] == b'"').then_some(i + len + 2)
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn skip_number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |b: &[u8], i: usize| b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match digits(b, i) {
        0 => return None,
        n if n > 1 && b[i] == b'0' => return None,
        n => i += n,
    }
    if b.get(i) == Some(&b'.') {
        match digits(b, i + 1) {
            0 => return None,
            n => i += 1 + n,
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        match digits(b, i) {
            0 => return None,
            n => i += n,
        }
    }
    Some(i)
}

/// Any line, through `serde_json`.
fn general(line: &str) -> Result<Line<'static>, String> {
    let v: Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line:.200}"))?;
    let Value::Object(obj) = v else {
        return Err(format!("not a JSON object: {line:.200}"));
    };
    if obj.is_empty() {
        return Ok(Line::Ping);
    }
    if let Some(push) = obj.get("push") {
        let push = push
            .as_object()
            .ok_or_else(|| format!("push is not an object: {line:.200}"))?;
        let channel = match push.get("channel") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(format!("push channel is not a string: {line:.200}")),
        };
        let Some(publication) = push.get("pub") else {
            let kind = push
                .keys()
                .find(|k| *k != "channel")
                .cloned()
                .unwrap_or_default();
            return Ok(Line::OtherPush { channel, kind });
        };
        let publication = publication
            .as_object()
            .ok_or_else(|| format!("pub is not an object: {line:.200}"))?;
        let data = match publication.get("data") {
            None => return Err(format!("publication without data: {line:.200}")),
            Some(Value::String(s)) => Some(Cow::Owned(s.clone())),
            Some(_) => None,
        };
        return Ok(Line::Publication {
            channel: Cow::Owned(channel),
            data,
        });
    }
    let id = match obj.get("id").and_then(Value::as_u64) {
        Some(id @ 1..=0xffff_ffff) => id as u32,
        _ => return Err(format!("neither a reply, a push nor a ping: {line:.200}")),
    };
    match obj.get("error") {
        None | Some(Value::Null) => Ok(Line::Reply { id }),
        Some(e) => Ok(Line::Error {
            id,
            code: e.get("code").and_then(Value::as_u64).unwrap_or(0),
            message: e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication<'a>(channel: &'a str, data: &'a str) -> Line<'a> {
        Line::Publication {
            channel: Cow::Borrowed(channel),
            data: Some(Cow::Borrowed(data)),
        }
    }

    /// Both readers on every line the fast one takes, and the result.
    fn read(line: &str) -> Result<Line<'_>, String> {
        let g = general(line);
        if let Some(f) = fast(line) {
            assert_eq!(Ok(&f), g.as_ref(), "the two readers disagree on {line}");
        }
        parse_line(line)
    }

    #[test]
    fn commands_are_the_protocols_json() {
        assert_eq!(connect_command(1), r#"{"id":1,"connect":{}}"#);
        assert_eq!(
            subscribe_command(2, "room7"),
            r#"{"id":2,"subscribe":{"channel":"room7"}}"#
        );
        let p = publish_command(9, "room7", "0:7:3:123:xx");
        assert_eq!(
            p,
            r#"{"id":9,"publish":{"channel":"room7","data":"0:7:3:123:xx"}}"#
        );
        let odd = publish_command(4294967295, "a\"b", "q\\\n\u{1}é");
        let v: Value = serde_json::from_str(&odd).unwrap();
        assert_eq!(v["id"], 4294967295u64);
        assert_eq!(v["publish"]["channel"], "a\"b");
        assert_eq!(v["publish"]["data"], "q\\\n\u{1}é");
        let v: Value = serde_json::from_str(&subscribe_command(3, "\t")).unwrap();
        assert_eq!(v["subscribe"]["channel"], "\t");
    }

    #[test]
    fn a_push_as_roomcast_writes_it() {
        let line = r#"{"push":{"channel":"room3","pub":{"data":"1:3:42:999:xxxx","info":{"user":"","client":"n1-17"}}}}"#;
        assert!(fast(line).is_some(), "the fast reader takes it");
        assert_eq!(read(line), Ok(publication("room3", "1:3:42:999:xxxx")));
        let bare = r#"{"push":{"channel":"room3","pub":{"data":"probe:3"}}}"#;
        assert!(fast(bare).is_some());
        assert_eq!(read(bare), Ok(publication("room3", "probe:3")));
    }

    #[test]
    fn pushes_the_fast_reader_leaves_to_the_general_one() {
        let cases = [
            // White space, escapes, another field order, more fields.
            (
                r#"{ "push" : {"channel":"r","pub":{"data":"a"}} }"#,
                publication("r", "a"),
            ),
            (
                r#"{"push":{"channel":"r","pub":{"data":"a\"b\u00e9"}}}"#,
                publication("r", "a\"bé"),
            ),
            (
                r#"{"push":{"channel":"r\/s","pub":{"data":"a"}}}"#,
                publication("r/s", "a"),
            ),
            (
                r#"{"push":{"pub":{"data":"a","offset":7},"channel":"r"}}"#,
                publication("r", "a"),
            ),
            (
                r#"{"push":{"channel":"r","pub":{"data":"a","info":{"user":"u","client":"c\n","conn_info":{"x":[1,2.5e-3,true,null]}}}}}"#,
                publication("r", "a"),
            ),
            // Data that is not a string.
            (
                r#"{"push":{"channel":"r","pub":{"data":{"text":"hi"}}}}"#,
                Line::Publication {
                    channel: "r".into(),
                    data: None,
                },
            ),
            // Pushes other than publications.
            (
                r#"{"push":{"channel":"r","unsubscribe":{"code":2000}}}"#,
                Line::OtherPush {
                    channel: "r".into(),
                    kind: "unsubscribe".into(),
                },
            ),
            (
                r#"{"push":{"disconnect":{"code":3001,"reason":"shutdown"}}}"#,
                Line::OtherPush {
                    channel: String::new(),
                    kind: "disconnect".into(),
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(read(line), Ok(want), "{line}");
        }
    }

    #[test]
    fn replies_pings_and_errors() {
        let cases = [
            ("{}", Line::Ping),
            (" {} ", Line::Ping), // parse_line is given trimmed lines; general copes anyway
            (
                r#"{"id":1,"connect":{"client":"n1-3","version":"roomcast 0.1.0","ping":25,"pong":true,"node":"n1"}}"#,
                Line::Reply { id: 1 },
            ),
            (r#"{"id":2,"subscribe":{}}"#, Line::Reply { id: 2 }),
            (
                r#"{"id":4294967295,"publish":{}}"#,
                Line::Reply { id: u32::MAX },
            ),
            (
                r#"{"id":5,"subscribe":{"recoverable":false,"positioned":false,"epoch":"","offset":0,"data":[1,{"a":-0}]}}"#,
                Line::Reply { id: 5 },
            ),
            (r#"{"id":6, "publish":{}}"#, Line::Reply { id: 6 }),
            (r#"{"publish":{},"id":7}"#, Line::Reply { id: 7 }),
            (
                r#"{"id":3,"error":{"code":105,"message":"already subscribed"}}"#,
                Line::Error {
                    id: 3,
                    code: 105,
                    message: "already subscribed".into(),
                },
            ),
            (
                r#"{"id":8,"error":{"code":111,"message":"too many requests","temporary":true}}"#,
                Line::Error {
                    id: 8,
                    code: 111,
                    message: "too many requests".into(),
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(read(line), Ok(want), "{line}");
        }
        assert!(fast(r#"{"id":2,"subscribe":{}}"#).is_some());
        assert!(fast(r#"{"id":3,"error":{"code":105}}"#).is_none());
    }

    #[test]
    fn lines_that_are_nothing_a_server_sends() {
        for line in [
            "nope",
            "[1]",
            r#""{}""#,
            r#"{"foo":1}"#,
            r#"{"id":0,"publish":{}}"#,
            r#"{"id":-1,"publish":{}}"#,
            r#"{"id":4294967296,"publish":{}}"#,
            r#"{"id":"1","publish":{}}"#,
            r#"{"id":1,"publish":{}"#,
            r#"{"id":1,"publish":{}}}"#,
            r#"{"id":1,"publish":{}} x"#,
            r#"{"push":"x"}"#,
            r#"{"push":{"channel":1,"pub":{"data":"a"}}}"#,
            r#"{"push":{"channel":"r","pub":{}}}"#,
            r#"{"push":{"channel":"r","pub":"x"}}"#,
            r#"{"push":{"channel":"r","pub":{"data":"a"}}"#,
            r#"{"push":{"channel":"r","pub":{"data":"a","info":{"user":"}}}}"#,
            r#"{"push":{"channel":"r","pub":{"data":"a","info":{"x":01}}}}"#,
            r#"{"push":{"channel":"r","pub":{"data":"a","info":{"x":1.}}}}"#,
            r#"{"push":{"channel":"r","pub":{"data":"a","info":{"x":tru}}}}"#,
            r#"{"push":{"channel":"r","pub":{"data":"a","info":{"x":[1,]}}}}"#,
            r#"{"push":{"channel":"r","pub":{"data":"a","info":{,}}}}"#,
            r#"{"push":{"channel":"r","pub":{"data":"a\ud800"}}}"#,
            "{\"push\":{\"channel\":\"r\",\"pub\":{\"data\":\"a\u{1}\"}}}",
        ] {
            assert!(read(line).is_err(), "{line} read as {:?}", read(line));
        }
    }

    #[test]
    fn deep_values_go_to_the_general_reader() {
        let deep = format!(
            r#"{{"id":1,"connect":{{"data":{}1{}}}}}"#,
            "[".repeat(40),
            "]".repeat(40)
        );
        assert!(fast(&deep).is_none());
        assert_eq!(read(&deep), Ok(Line::Reply { id: 1 }));
        let too_deep = format!(
            r#"{{"id":1,"connect":{{"data":{}1{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(read(&too_deep).is_err(), "serde_json's recursion limit");
    }

    #[test]
    fn a_batch_of_pushes_and_replies() {
        let frame = concat!(
            r#"{"push":{"channel":"room1","pub":{"data":"0:1:0:5:x","info":{"user":"","client":"a-1"}}}}"#,
            "\n",
            r#"{"id":7,"publish":{}}"#,
            "\r\n\n",
            "{}\n",
            r#"{"push":{"channel":"room1","pub":{"data":"0:1:10:6:x"}}}"#,
            "\n",
            r#"{"id":8,"error":{"code":106,"message":"limit exceeded"}}"#,
            "\n",
        );
        let got: Vec<_> = lines(frame).map(read).collect();
        assert_eq!(
            got,
            vec![
                Ok(publication("room1", "0:1:0:5:x")),
                Ok(Line::Reply { id: 7 }),
                Ok(Line::Ping),
                Ok(publication("room1", "0:1:10:6:x")),
                Ok(Line::Error {
                    id: 8,
                    code: 106,
                    message: "limit exceeded".into()
                }),
            ]
        );
        assert_eq!(lines("").count(), 0);
        assert_eq!(lines("\n \r\n").count(), 0);
        assert_eq!(lines("{}").collect::<Vec<_>>(), ["{}"]);
        // One bad line spoils only itself.
        let got: Vec<bool> = lines("{}\nnope\n{\"id\":1,\"publish\":{}}")
            .map(|l| read(l).is_ok())
            .collect();
        assert_eq!(got, [true, false, true]);
    }

    #[test]
    fn numbers() {
        for (s, end) in [
            ("0", Some(1)),
            ("-0", Some(2)),
            ("12", Some(2)),
            ("1.5", Some(3)),
            ("1e9", Some(3)),
            ("1E+9", Some(4)),
            ("-2.25e-3", Some(8)),
            ("01", None),
            ("-", None),
            ("1.", None),
            ("1e", None),
            (".5", None),
        ] {
            assert_eq!(skip_value(s.as_bytes(), 0, 0), end, "{s}");
        }
    }
}
