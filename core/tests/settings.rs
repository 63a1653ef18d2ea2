//! `roomcast.toml` (`roomcast_core::settings`): what a file sets, and every
//! kind of error as its one line (file, key, line).

use std::time::Duration;

use clap::CommandFactory;
use roomcast_core::auth::{NamespaceOptions, Pattern, User};
use roomcast_core::cli::Cli;
use roomcast_core::settings::{
    self, AUTH_KEYS, CliFileError, ConfigError, FLAG_KEYS, FlagKind, FlagValue, NAMESPACE_KEYS,
    Settings,
};

const F: &str = "roomcast.toml";
const EC256_PUBLIC: &[u8] = include_bytes!("fixtures/ec256_public.pem");
const EC256_PRIVATE: &[u8] = include_bytes!("fixtures/ec256_private.pem");

fn parse(text: &str) -> Settings {
    settings::parse(F, text).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> ConfigError {
    let e = settings::parse(F, text).expect_err("expected an error");
    let line = e.to_string();
    assert!(!line.contains('\n'), "not one line: {line:?}");
    assert!(line.starts_with("roomcast.toml:"), "{line}");
    e
}

/// The error is at `line`, about `key`, and says `says`.
fn check(e: &ConfigError, line: usize, key: &str, says: &str) {
    assert_eq!(e.line, Some(line), "{e}");
    assert_eq!(e.key.as_deref(), Some(key), "{e}");
    assert!(e.message.contains(says), "{e}");
    assert_eq!(e.to_string(), format!("{F}:{line}: {key}: {}", e.message));
}

const FULL: &str = r#"
# A complete file.
listen = "0.0.0.0:9000"
redis = "redis://127.0.0.1:7000"
channel_prefix = "rc:"
max_frame_bytes = 1_024
max_connections = 0x10
ws_ping_interval = "5m"
client_pong_timeout = "500ms"
seed_protocol = false
no_chat_page = true

token_hmac_secret = "s3cret"
token_public_key = "/etc/roomcast/jwt.pem"
token_audience = "roomcast"
token_issuer = "https://auth.example"
token_algorithms = ["HS256", "ES256"]
token_expire_grace = "40s"
allowed_origins = ["https://*.example.com", "http://localhost:*"]
api_key = "k"
allow_anonymous_connect_without_token = true

[default_namespace]
allow_subscribe_for_client = true
allow_publish_for_subscriber = true

[[namespace]]
name = "chat"
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_client = true
allow_publish_for_subscriber = true
allow_publish_for_anonymous = true
allow_user_limited_channels = true
allow_history_for_client = true
allow_history_for_subscriber = true
allow_history_for_anonymous = true
allow_presence_for_client = true
allow_presence_for_subscriber = true
allow_presence_for_anonymous = true
history_size = 100
history_ttl = "5m"
history_meta_ttl = "1m"
force_recovery = true
presence = true
join_leave = true
presence_max_members = 50

[[namespace]]
name = "news-2"
"#;

#[test]
fn a_full_file() {
    let s = parse(FULL);
    let a = &s.auth;
    assert_eq!(a.token_hmac_secret.as_deref(), Some("s3cret"));
    assert_eq!(a.token_public_key.as_deref(), Some("/etc/roomcast/jwt.pem"));
    assert_eq!(a.token_audience.as_deref(), Some("roomcast"));
    assert_eq!(a.token_issuer.as_deref(), Some("https://auth.example"));
    assert_eq!(
        a.token_algorithms,
        Some(vec!["HS256".into(), "ES256".into()])
    );
    assert_eq!(a.token_expire_grace, Duration::from_secs(40));
    assert_eq!(
        a.allowed_origins,
        [
            Pattern::new("https://*.example.com"),
            Pattern::new("http://localhost:*")
        ]
    );
    assert_eq!(a.api_key.as_deref(), Some("k"));
    assert!(a.allow_anonymous_connect_without_token);
    assert_eq!(
        a.default_namespace,
        Some(NamespaceOptions {
            allow_subscribe_for_client: true,
            allow_publish_for_subscriber: true,
            ..NamespaceOptions::default()
        })
    );
    assert_eq!(a.namespaces.len(), 2);
    assert_eq!(a.namespaces[0].name, "chat");
    assert_eq!(
        a.namespaces[0].options,
        NamespaceOptions {
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            history_meta_ttl: Duration::from_secs(60),
            force_recovery: true,
            presence: true,
            join_leave: true,
            presence_max_members: 50,
            allow_user_limited_channels: true,
            ..NamespaceOptions::allow_all()
        }
    );
    for key in NAMESPACE_KEYS {
        assert!(
            FULL.contains(&format!("\n{key} = ")),
            "FULL does not set {key}"
        );
    }
    assert_eq!(a.namespaces[1].name, "news-2");
    assert_eq!(a.namespaces[1].options, NamespaceOptions::default());

    let flags: Vec<(&str, &FlagValue, usize)> =
        s.flags.iter().map(|f| (f.key, &f.value, f.line)).collect();
    assert_eq!(
        flags,
        [
            ("listen", &FlagValue::Str("0.0.0.0:9000".into()), 3),
            ("redis", &FlagValue::Str("redis://127.0.0.1:7000".into()), 4),
            ("channel_prefix", &FlagValue::Str("rc:".into()), 5),
            ("max_frame_bytes", &FlagValue::Int(1024), 6),
            ("max_connections", &FlagValue::Int(16), 7),
            (
                "ws_ping_interval",
                &FlagValue::Duration("5m".into(), Duration::from_secs(300)),
                8
            ),
            (
                "client_pong_timeout",
                &FlagValue::Duration("500ms".into(), Duration::from_millis(500)),
                9
            ),
            ("seed_protocol", &FlagValue::Str("off".into()), 10),
            ("no_chat_page", &FlagValue::Bool(true), 11),
        ]
    );
    assert_eq!(
        s.flags[3].cli_arg().as_deref(),
        Some("--max-frame-bytes=1024")
    );
    assert_eq!(s.flags[8].cli_arg().as_deref(), Some("--no-chat-page"));
    assert_eq!(s.line_of("token_issuer"), Some(16));
    assert_eq!(s.line_of("nope"), None);
}

#[test]
fn an_empty_file_is_open_mode() {
    let s = parse("# nothing\n");
    assert!(s.flags.is_empty());
    let auth = s.build_auth(None).unwrap();
    assert!(auth.is_open());
    assert_eq!(auth.expire_grace(), Duration::from_secs(25));
}

#[test]
fn syntax_errors() {
    let e = err("listen = \"a\"\nmax_frame_bytes = = 3\n");
    check(&e, 2, "max_frame_bytes", "invalid TOML");
    let e = err("[default_namespace\n");
    assert_eq!(e.line, Some(1));
    assert!(e.message.starts_with("invalid TOML"), "{e}");
    let e = err("a = 1\na = 2\n");
    assert_eq!(e.line, Some(2), "{e}");
    let e = err("x = \"unterminated\n");
    assert_eq!(e.line, Some(1), "{e}");
}

#[test]
fn unknown_keys() {
    check(
        &err("\n\nlisten_port = 80\n"),
        3,
        "listen_port",
        "unknown key",
    );
    check(
        &err("[default_namespace]\npresence = true\nhistory = 5\n"),
        3,
        "default_namespace.history",
        "unknown namespace option",
    );
    check(
        &err("[default_namespace]\nname = \"x\"\n"),
        2,
        "default_namespace.name",
        "unknown namespace option",
    );
    check(
        &err("[[namespace]]\nname = \"chat\"\n\nallow_publish = true\n"),
        4,
        "namespace[chat].allow_publish",
        "unknown namespace option",
    );
    // A flag's `-` spelling is not a key.
    check(
        &err("max-frame-bytes = 1\n"),
        1,
        "max-frame-bytes",
        "unknown key",
    );
}

#[test]
fn wrong_types() {
    check(
        &err("max_frame_bytes = \"big\"\n"),
        1,
        "max_frame_bytes",
        "expected an integer, found string",
    );
    check(
        &err("max_frame_bytes = 1.5\n"),
        1,
        "max_frame_bytes",
        "expected an integer, found float",
    );
    check(
        &err("max_frame_bytes = -1\n"),
        1,
        "max_frame_bytes",
        "must not be negative",
    );
    check(
        &err("max_frame_bytes = 99999999999999999999\n"),
        1,
        "max_frame_bytes",
        "",
    );
    check(
        &err("listen = 8080\n"),
        1,
        "listen",
        "expected a string, found integer",
    );
    check(
        &err("no_chat_page = \"yes\"\n"),
        1,
        "no_chat_page",
        "expected true or false",
    );
    check(
        &err("seed_protocol = \"maybe\"\n"),
        1,
        "seed_protocol",
        "expected \"on\" or \"off\"",
    );
    check(
        &err("seed_protocol = 1\n"),
        1,
        "seed_protocol",
        "found integer",
    );
    check(
        &err("token_hmac_secret = 12345\n"),
        1,
        "token_hmac_secret",
        "expected a string",
    );
    check(
        &err("allowed_origins = \"*\"\n"),
        1,
        "allowed_origins",
        "expected an array",
    );
    check(
        &err("allowed_origins = [\n  \"a\",\n  3,\n]\n"),
        3,
        "allowed_origins",
        "expected a string",
    );
    check(
        &err("token_algorithms = \"HS256\"\n"),
        1,
        "token_algorithms",
        "expected an array",
    );
    check(
        &err("default_namespace = 1\n"),
        1,
        "default_namespace",
        "expected a table",
    );
    check(
        &err("[namespace]\nname = \"chat\"\n"),
        1,
        "namespace",
        "expected an array of tables",
    );
    check(
        &err("namespace = [1]\n"),
        1,
        "namespace[#1]",
        "expected a table",
    );
    check(
        &err("[default_namespace]\npresence = \"true\"\n"),
        2,
        "default_namespace.presence",
        "expected true or false, found string",
    );
    check(
        &err("[[namespace]]\nname = \"chat\"\nhistory_size = \"100\"\n"),
        3,
        "namespace[chat].history_size",
        "expected an integer",
    );
    check(
        &err("allow_anonymous_connect_without_token = 1\n"),
        1,
        "allow_anonymous_connect_without_token",
        "expected true or false",
    );
}

#[test]
fn bad_durations() {
    check(
        &err("ws_ping_interval = \"5h\"\n"),
        1,
        "ws_ping_interval",
        "invalid duration unit",
    );
    check(
        &err("ws_ping_interval = \"soon\"\n"),
        1,
        "ws_ping_interval",
        "invalid duration",
    );
    check(
        &err("ws_ping_interval = 25\n"),
        1,
        "ws_ping_interval",
        "expected a duration string",
    );
    check(
        &err("token_expire_grace = \"-1s\"\n"),
        1,
        "token_expire_grace",
        "invalid duration",
    );
    check(
        &err("[[namespace]]\nname = \"c1\"\nhistory_size = 10\nhistory_ttl = \"1d\"\n"),
        4,
        "namespace[c1].history_ttl",
        "invalid duration unit",
    );
    assert_eq!(settings::parse_duration("90"), Ok(Duration::from_secs(90)));
    assert_eq!(
        settings::parse_duration("1.5s"),
        Ok(Duration::from_millis(1500))
    );
}

#[test]
fn bad_values() {
    check(
        &err("listen = \"localhost\"\n"),
        1,
        "listen",
        "invalid address",
    );
    check(
        &err("token_hmac_secret = \"\"\n"),
        1,
        "token_hmac_secret",
        "must not be empty",
    );
    check(
        &err("token_audience = \"\"\n"),
        1,
        "token_audience",
        "must not be empty",
    );
    check(&err("api_key = \"\"\n"), 1, "api_key", "must not be empty");
    check(
        &err("allowed_origins = [\"\"]\n"),
        1,
        "allowed_origins",
        "must not be empty",
    );
    check(
        &err("token_algorithms = []\n"),
        1,
        "token_algorithms",
        "must not be empty",
    );
    check(
        &err("token_hmac_secret = \"x\"\ntoken_algorithms = [\"HS256\",\n \"none\"]\n"),
        3,
        "token_algorithms",
        "unknown algorithm \"none\"",
    );
    check(
        &err("[[namespace]]\nallow_publish_for_client = true\n"),
        1,
        "namespace[#1]",
        "missing name",
    );
    check(
        &err("[[namespace]]\nname = \"a\"\n"),
        2,
        "namespace[#1].name",
        "invalid namespace name \"a\"",
    );
    check(
        &err("[[namespace]]\nname = \"chat room\"\n"),
        2,
        "namespace[#1].name",
        "invalid namespace name",
    );
    check(
        &err("[[namespace]]\nname = \"chat\"\n[[namespace]]\nname = \"chat\"\n"),
        4,
        "namespace[#2].name",
        "defined twice",
    );
    check(
        &err("[default_namespace]\nhistory_size = 10\n"),
        2,
        "default_namespace.history_size",
        "needs history_ttl",
    );
    check(
        &err("[default_namespace]\n\nhistory_ttl = \"1m\"\n"),
        3,
        "default_namespace.history_ttl",
        "needs history_size",
    );
    check(
        &err("[default_namespace]\nforce_recovery = true\n"),
        2,
        "default_namespace.force_recovery",
        "needs history",
    );
}

#[test]
fn secrets_are_never_echoed() {
    for text in [
        "token_hmac_secret = 123456789\n",
        "api_key = [\"hunter2\"]\n",
        "token_hmac_secret = \"hunter2\"\ntoken_algorithms = [\"RS256\"]\n",
    ] {
        let e = match settings::parse(F, text) {
            Err(e) => e,
            Ok(s) => s.build_auth(None).unwrap_err(),
        };
        let line = e.to_string();
        assert!(
            !line.contains("123456789") && !line.contains("hunter2"),
            "{line}"
        );
    }
}

#[test]
fn key_errors_name_the_key_and_line() {
    // An unusable PEM.
    let s = parse("\ntoken_public_key = \"/keys/jwt.pem\"\n");
    let e = s.build_auth(Some(b"garbage")).unwrap_err();
    check(&e, 2, "token_public_key", "\"/keys/jwt.pem\": not a PEM");
    let e = s.build_auth(Some(EC256_PRIVATE)).unwrap_err();
    check(&e, 2, "token_public_key", "found BEGIN PRIVATE KEY");
    // The driver could not read it.
    let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
    let e = s.unreadable_public_key(&io);
    check(
        &e,
        2,
        "token_public_key",
        "cannot read \"/keys/jwt.pem\": No such file",
    );
    // A good one.
    let auth = s.build_auth(Some(EC256_PUBLIC)).unwrap();
    assert_eq!(auth.verifier().unwrap().algorithms(), ["ES256"]);
    // An algorithm without its key.
    let s = parse("token_hmac_secret = \"x\"\n\ntoken_algorithms = [\"ES256\"]\n");
    check(
        &s.build_auth(None).unwrap_err(),
        3,
        "token_algorithms",
        "ES256 needs",
    );
    let s = parse("token_algorithms = [\"HS256\"]\n");
    check(
        &s.build_auth(None).unwrap_err(),
        1,
        "token_algorithms",
        "HS256 needs",
    );
}

#[test]
fn built_auth_follows_the_file() {
    let s = parse(
        r#"
token_hmac_secret = "s"
[default_namespace]
allow_subscribe_for_client = true
[[namespace]]
name = "chat"
allow_publish_for_client = true
"#,
    );
    let auth = s.build_auth(None).unwrap();
    assert!(auth.tokens_configured());
    let u = User::new("1");
    assert!(auth.seed_subscribe(&u, "lobby").is_ok());
    assert!(auth.seed_subscribe(&u, "chat:x").is_err());
    assert!(auth.seed_publish(&u, "chat:x", false).is_ok());
    assert!(auth.seed_publish(&u, "news:x", true).is_err());
}

// ---------------------------------------------------------------------------
// Against the command line
// ---------------------------------------------------------------------------

#[test]
fn flag_keys_match_the_command_line() {
    let cmd = Cli::command();
    let mut from_cli = Vec::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        // (`token_hmac_secret_file` is a command-line way to give `token_hmac_secret`,
        // `api_key_file` one to give `api_key`.)
        if [
            "help",
            "version",
            "config",
            "token_hmac_secret_file",
            "api_key_file",
        ]
        .contains(&id)
            || AUTH_KEYS.contains(&id)
        {
            continue;
        }
        from_cli.push(id.to_string());
        let kind = FLAG_KEYS
            .iter()
            .find(|(k, _)| *k == id)
            .unwrap_or_else(|| panic!("flag --{id} has no file key in FLAG_KEYS"))
            .1;
        let switch = !arg.get_action().takes_values();
        assert_eq!(kind == FlagKind::Bool, switch, "{id}: kind {kind:?}");
        assert_eq!(
            arg.get_long().map(|l| l.replace('-', "_")).as_deref(),
            Some(id),
            "{id}: its long name"
        );
    }
    let keys: Vec<String> = FLAG_KEYS.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(
        from_cli, keys,
        "FLAG_KEYS is not the command line's flag list"
    );
    // No key is two things at once, except the node-wide default of a
    // namespace option, which has the option's name on purpose.
    for k in AUTH_KEYS.iter().chain(NAMESPACE_KEYS) {
        if *k == "presence_max_members" {
            continue;
        }
        assert!(!keys.contains(&k.to_string()), "{k}");
    }
}

#[test]
fn every_flag_round_trips_through_the_command_line() {
    let s = parse(
        r#"
listen = "0.0.0.0:9000"
redis = "redis://127.0.0.1:7000"
channel_prefix = "-p:"
max_frame_bytes = 1024
max_room_bytes = 100
max_rooms_per_conn = 9
max_outbound_bytes = 4096
publish_buffer = 7
max_broker_payload_bytes = 2048
max_commands_per_sec = 5
max_connections = 77
ws_ping_interval = "1s"
ws_pong_timeout = "2s"
client_ping_interval = "3s"
client_pong_timeout = "4s"
client_connect_timeout = "5s"
recovery_max_publications = 13
history_max_publications = 14
presence_refresh = "15s"
presence_ttl = "16s"
presence_max_members = 17
seed_protocol = "off"
threads = 3
handshake_timeout = "6s"
shutdown_grace = "7s"
redis_connect_timeout = "8s"
redis_probe_interval = "9s"
redis_timeout = "10s"
reconnect_min = "11ms"
reconnect_max = "12s"
no_chat_page = true
api_listen = "127.0.0.1:9001"
api_insecure = true
api_max_body = 4096
api_http_errors = true
admin = true
node_announce_interval = "18s"
"#,
    );
    assert_eq!(s.flags.len(), FLAG_KEYS.len(), "the file sets every flag");
    let cli = s
        .cli_with_file(["roomcast"])
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    assert_eq!(cli.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(cli.redis.as_deref(), Some("redis://127.0.0.1:7000"));
    assert_eq!(cli.channel_prefix, "-p:");
    assert_eq!(cli.max_frame_bytes, 1024);
    assert_eq!(cli.max_room_bytes, 100);
    assert_eq!(cli.max_rooms_per_conn, 9);
    assert_eq!(cli.max_outbound_bytes, 4096);
    assert_eq!(cli.publish_buffer, 7);
    assert_eq!(cli.max_broker_payload_bytes, Some(2048));
    assert_eq!(cli.max_commands_per_sec, 5);
    assert_eq!(cli.max_connections, Some(77));
    assert_eq!(cli.ws_ping_interval, Duration::from_secs(1));
    assert_eq!(cli.ws_pong_timeout, Duration::from_secs(2));
    assert_eq!(cli.client_ping_interval, Duration::from_secs(3));
    assert_eq!(cli.client_pong_timeout, Duration::from_secs(4));
    assert_eq!(cli.client_connect_timeout, Duration::from_secs(5));
    assert_eq!(cli.recovery_max_publications, 13);
    assert_eq!(cli.history_max_publications, 14);
    assert_eq!(cli.presence_refresh, Duration::from_secs(15));
    assert_eq!(cli.presence_ttl, Duration::from_secs(16));
    assert_eq!(cli.presence_max_members, 17);
    assert_eq!(cli.node_announce_interval, Duration::from_secs(18));
    assert_eq!(cli.seed_protocol, "off");
    assert_eq!(cli.threads, Some(3));
    assert_eq!(cli.handshake_timeout, Duration::from_secs(6));
    assert_eq!(cli.shutdown_grace, Duration::from_secs(7));
    assert_eq!(cli.redis_connect_timeout, Duration::from_secs(8));
    assert_eq!(cli.redis_probe_interval, Duration::from_secs(9));
    assert_eq!(cli.redis_timeout, Duration::from_secs(10));
    assert_eq!(cli.reconnect_min, Duration::from_millis(11));
    assert_eq!(cli.reconnect_max, Duration::from_secs(12));
    assert!(cli.no_chat_page);
    assert_eq!(cli.api_listen, Some("127.0.0.1:9001".parse().unwrap()));
    assert!(cli.api_insecure);
    assert_eq!(cli.api_max_body, 4096);
    assert!(cli.api_http_errors);
    assert!(cli.admin);
    assert!(cli.check().is_ok(), "insecure on a loopback --api-listen");
}

#[test]
fn the_command_line_wins() {
    let s = parse("max_frame_bytes = 1024\nmax_room_bytes = 100\nno_chat_page = false\n");
    let cli = s
        .cli_with_file(["roomcast", "--max-frame-bytes", "2048", "--no-chat-page"])
        .map_err(|e| format!("{e:?}"))
        .unwrap();
    assert_eq!(cli.max_frame_bytes, 2048, "command line over file");
    assert_eq!(cli.max_room_bytes, 100, "file over default");
    assert!(cli.no_chat_page);
    assert_eq!(cli.max_rooms_per_conn, 256, "default");
    // Bad arguments are the command line's errors, not the file's.
    assert!(matches!(
        s.cli_with_file(["roomcast", "--max-frame-bytes", "x"]),
        Err(CliFileError::Args(_))
    ));
}

#[test]
fn out_of_range_values_name_the_file_line() {
    let file_err = |text: &str| match parse(text).cli_with_file(["roomcast"]) {
        Err(CliFileError::File(e)) => {
            assert!(!e.to_string().contains('\n'), "{e}");
            e
        }
        other => panic!("expected a file error, got {other:?}"),
    };
    check(
        &file_err("\nmax_frame_bytes = 2000000000\n"),
        2,
        "max_frame_bytes",
        "--max-frame-bytes",
    );
    check(
        &file_err("max_room_bytes = 0\n"),
        1,
        "max_room_bytes",
        "invalid value",
    );
    let e = file_err("redis = \"rediss://user:hunter2@h:1\"\n");
    check(&e, 1, "redis", "TLS");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    check(
        &file_err("redis = \"http://x\"\n"),
        1,
        "redis",
        "invalid Redis URL",
    );
    // A value the command line would also refuse, but given there: the
    // command line's error.
    let s = parse("max_room_bytes = 0\n");
    assert!(matches!(
        s.cli_with_file(["roomcast", "--max-room-bytes", "5"]),
        Ok(cli) if cli.max_room_bytes == 5
    ));
}
