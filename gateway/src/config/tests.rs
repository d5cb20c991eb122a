//! Unit tests of the config parser: the full example, defaults, and one negative case per rule.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

use super::*;

const FULL: &str = r#"
spiffe_id = "spiffe://bank.example/ns/payments/sa/api"
state_dir = "state"

[ca]
url = "https://ca.bank.example:8443"

[inbound]
listen = "0.0.0.0:8443"
upstream = "http://127.0.0.1:8080"
upstream_protocol = "h2c"
policy = ["policies/payments.toml", "policies/mesh.toml"]

[[outbound]]
name = "ledger"
listen = "127.0.0.1:15001"
target = "ledger.internal:8443"
expected_peer = "spiffe://bank.example/ns/ledger/sa/api"

[admin]
listen = "127.0.0.1:15000"

[limits]
max_header_bytes = 32768
header_read_timeout = "5s"
handshake_timeout = "5s"
idle_timeout = "2m"
max_connections = 500
max_concurrent_streams = 50
connect_timeout = "3s"
response_timeout = "1m"

[[rate_limit]]
peer = "spiffe://bank.example/ns/shop/**"
rate = 50
burst = 100

[[rate_limit]]
peer = "spiffe://Bank.Example/ns/support/sa/agent"
rate = 5

[audit]
path = "audit.jsonl"
log_allows = true
max_file_bytes = 104857600
max_file_age = "1d"
"#;

#[test]
fn the_full_example_parses() {
    let c = Config::parse(FULL).unwrap();
    assert_eq!(
        c.spiffe_id.as_str(),
        "spiffe://bank.example/ns/payments/sa/api"
    );
    let inbound = c.inbound.as_ref().unwrap();
    assert_eq!(inbound.upstream.authority, "127.0.0.1:8080");
    assert_eq!(inbound.policy.len(), 2);
    assert_eq!(c.outbound[0].target.host, "ledger.internal");
    assert_eq!(c.outbound[0].target.port, 8443);
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(120));
    assert_eq!(c.limits.max_concurrent_streams, 50);
    assert_eq!(c.limits.response_timeout, Duration::from_secs(60));
    assert_eq!(inbound.upstream.protocol, UpstreamProtocol::H2c);
    let limits = &c.limits.rate_limits;
    assert_eq!(limits.len(), 2);
    assert_eq!(limits[0].peer.as_str(), "spiffe://bank.example/ns/shop/**");
    assert_eq!((limits[0].rate.get(), limits[0].burst.get()), (50, 100));
    assert_eq!(
        limits[1].peer.as_str(),
        "spiffe://bank.example/ns/support/sa/agent"
    );
    assert_eq!((limits[1].rate.get(), limits[1].burst.get()), (5, 5));
    assert!(c.audit_path.as_ref().unwrap().log_allows);
    assert_eq!(
        c.audit_path.as_ref().unwrap().max_file_bytes,
        Some(100 << 20)
    );
    assert_eq!(
        c.audit_path.as_ref().unwrap().max_file_age,
        Some(Duration::from_secs(86_400))
    );
    let c = c.rebase(Path::new("/etc/meshgate"));
    assert_eq!(c.state_dir, Path::new("/etc/meshgate/state"));
    assert_eq!(
        c.inbound.unwrap().policy[0],
        Path::new("/etc/meshgate/policies/payments.toml")
    );
    assert_eq!(
        c.audit_path.unwrap().path,
        Path::new("/etc/meshgate/audit.jsonl")
    );
}

#[test]
fn defaults_are_the_secure_ones() {
    let c = Config::parse(
        r#"
spiffe_id = "spiffe://BANK.example/ns/shop/sa/checkout"
state_dir = "/var/lib/meshgate"
[[outbound]]
name = "payments"
listen = "127.0.0.1:15001"
target = "[::1]:8443"
expected_peer = "spiffe://bank.example/ns/payments/sa/api"
"#,
    )
    .unwrap();
    assert_eq!(
        c.spiffe_id.as_str(),
        "spiffe://bank.example/ns/shop/sa/checkout"
    );
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.admin, DEFAULT_ADMIN);
    assert_eq!(c.outbound[0].target.host, "::1");
    assert!(c.inbound.is_none() && c.ca_url.is_none() && c.audit_path.is_none());
}

fn err(text: &str) -> String {
    let e = Config::parse(text).unwrap_err();
    assert!(e.is_bad_input(), "{e}");
    e.to_string()
}

fn with(extra: &str) -> String {
    format!("spiffe_id = \"spiffe://bank.example/ns/shop/sa/checkout\"\nstate_dir = \"s\"\n{extra}")
}

const INBOUND: &str = "[inbound]\nlisten = \"0.0.0.0:1\"\nupstream = \"http://127.0.0.1:80\"\npolicy = [\"p.toml\"]\n";

const TCP_INBOUND: &str = "[inbound]\nlisten = \"0.0.0.0:1\"\nupstream = \"127.0.0.1:5432\"\npolicy = [\"p.toml\"]\nmode = \"tcp\"\n";

const ROUTE: &str = "[[outbound]]\nname = \"p\"\nlisten = \"127.0.0.1:1\"\ntarget = \"p:1\"\nexpected_peer = \"spiffe://bank.example/p\"\n";

#[test]
fn an_unknown_key_is_named_with_its_place() {
    let e = err(&with(&format!("{ROUTE}colour = \"red\"\n")));
    assert!(e.contains("colour") && e.contains("line 8"), "{e}");
    let e = err(&with("[limits]\nmax_conections = 3\n"));
    assert!(e.contains("max_conections"), "{e}");
}

#[test]
fn each_value_rule_names_key_and_value() {
    let cases = [
        (
            "spiffe_id = \"spiffe://bank.example\"\nstate_dir = \"s\"\n".to_owned() + ROUTE,
            "spiffe_id",
        ),
        (with(""), "neither [inbound] nor [[outbound]]"),
        (
            with(&ROUTE.replace("127.0.0.1:1", "10.0.0.1:1")),
            "outbound[0].listen",
        ),
        (with(&ROUTE.replace("p:1", "p")), "outbound[0].target"),
        (
            with(&ROUTE.replace("spiffe://bank.example/p", "https://x")),
            "outbound[0].expected_peer",
        ),
        (with(&ROUTE.replace("\"p\"", "\"a b\"")), "outbound[0].name"),
        (with(&format!("{ROUTE}{ROUTE}")), "outbound[1].name"),
        (
            with(&format!("{ROUTE}[admin]\nlisten = \"0.0.0.0:9\"\n")),
            "admin.dangerous_allow_remote",
        ),
        (
            with(&format!("{ROUTE}[admin]\nlisten = \"127.0.0.1:1\"\n")),
            "admin.listen",
        ),
        (
            with(&format!("{ROUTE}[limits]\nidle_timeout = \"5 minutes\"\n")),
            "limits.idle_timeout",
        ),
        (
            with(&format!("{ROUTE}[limits]\nheader_read_timeout = \"0s\"\n")),
            "limits.header_read_timeout",
        ),
        (
            with(&format!("{ROUTE}[limits]\nresponse_timeout = \"0s\"\n")),
            "limits.response_timeout",
        ),
        (
            with(&format!("{ROUTE}[limits]\nresponse_timeout = \"soon\"\n")),
            "limits.response_timeout",
        ),
        (
            // u64::MAX seconds, give or take: it would overflow `Instant + Duration`.
            with(&format!(
                "{ROUTE}[limits]\nheader_read_timeout = \"213503982334601d\"\n"
            )),
            "limits.header_read_timeout",
        ),
        (
            with(&format!("{ROUTE}[limits]\nidle_timeout = \"31d\"\n")),
            "limits.idle_timeout",
        ),
        (
            with(&format!("{ROUTE}[limits]\nmax_header_bytes = 100\n")),
            "limits.max_header_bytes",
        ),
        (
            with(&format!("{ROUTE}[ca]\nurl = \"http://ca:1\"\n")),
            "ca.url",
        ),
        (
            with(
                "[inbound]\nlisten = \"0.0.0.0:1\"\nupstream = \"http://10.1.1.1:80\"\npolicy = [\"p.toml\"]\n",
            ),
            "dangerous_remote_upstream",
        ),
        (
            with(
                "[inbound]\nlisten = \"0.0.0.0:1\"\nupstream = \"https://127.0.0.1:80\"\npolicy = [\"p.toml\"]\n",
            ),
            "inbound.upstream",
        ),
        (
            with(
                "[inbound]\nlisten = \"0.0.0.0:1\"\nupstream = \"http://127.0.0.1:80\"\npolicy = []\n",
            ),
            "inbound.policy",
        ),
        (
            with(&format!("{INBOUND}upstream_protocol = \"h2\"\n")),
            "inbound.upstream_protocol",
        ),
        (
            with(&format!(
                "{ROUTE}[audit]\npath = \"a.jsonl\"\nmax_file_bytes = 1000\n"
            )),
            "audit.max_file_bytes",
        ),
        (
            with(&format!(
                "{ROUTE}[audit]\npath = \"a.jsonl\"\nmax_file_age = \"10s\"\n"
            )),
            "audit.max_file_age",
        ),
        (
            with(&format!(
                "{INBOUND}[[rate_limit]]\npeer = \"spiffe://bank.example/ns/**/x\"\nrate = 1\n"
            )),
            "rate_limit[0].peer",
        ),
        (
            with(&format!(
                "{INBOUND}[[rate_limit]]\npeer = \"spiffe://bank.example/a\"\nrate = 1\n[[rate_limit]]\npeer = \"spiffe://bank.example\"\nrate = 1\n"
            )),
            "rate_limit[1].peer",
        ),
        (
            with(&format!(
                "{INBOUND}[[rate_limit]]\npeer = \"spiffe://bank.example/a\"\nrate = 0\n"
            )),
            "rate_limit[0].rate",
        ),
        (
            with(&format!(
                "{INBOUND}[[rate_limit]]\npeer = \"spiffe://bank.example/a\"\nrate = 1\nburst = 0\n"
            )),
            "rate_limit[0].burst",
        ),
        (
            with(&format!(
                "{ROUTE}[[rate_limit]]\npeer = \"spiffe://bank.example/a\"\nrate = 1\n"
            )),
            "no [inbound]",
        ),
        (with(&format!("{INBOUND}mode = \"udp\"\n")), "inbound.mode"),
        (
            with(&format!("{ROUTE}mode = \"tls\"\n")),
            "outbound[0].mode",
        ),
        (
            with(&format!("{INBOUND}proxy_protocol = \"v2\"\n")),
            "x-forwarded-client-cert",
        ),
        (
            with(&format!("{TCP_INBOUND}proxy_protocol = \"v1\"\n")),
            "\"v2\"",
        ),
        (
            with(&format!("{TCP_INBOUND}upstream_protocol = \"h2c\"\n")),
            "inbound.upstream_protocol",
        ),
        (
            with(&TCP_INBOUND.replace("127.0.0.1:5432", "http://127.0.0.1:5432")),
            "no scheme",
        ),
        (
            with(&TCP_INBOUND.replace("127.0.0.1:5432", "10.1.1.1:5432")),
            "dangerous_remote_upstream",
        ),
        (
            with(&format!(
                "{TCP_INBOUND}[[rate_limit]]\npeer = \"spiffe://bank.example/a\"\nrate = 1\n"
            )),
            "limits.max_connections",
        ),
    ];
    for (text, needle) in cases {
        let e = err(&text);
        assert!(e.contains(needle), "{needle}: {e}");
    }
}

#[test]
fn a_remote_upstream_needs_the_dangerous_knob() {
    let c = Config::parse(&with(
        "[inbound]\nlisten = \"0.0.0.0:1\"\nupstream = \"http://10.1.1.1:80/\"\npolicy = [\"p.toml\"]\ndangerous_remote_upstream = true\n",
    ))
    .unwrap();
    assert_eq!(c.inbound.unwrap().upstream.authority, "10.1.1.1:80");
}

#[test]
fn tcp_mode_on_both_sides() {
    let c = Config::parse(&with(&format!(
        "{TCP_INBOUND}proxy_protocol = \"v2\"\n{ROUTE}mode = \"tcp\"\n"
    )))
    .unwrap();
    let inbound = c.inbound.unwrap();
    assert_eq!(inbound.mode, Mode::Tcp);
    assert_eq!(inbound.proxy_protocol, Some(ProxyProtocol::V2));
    assert_eq!(
        (inbound.upstream.host.as_str(), inbound.upstream.port),
        ("127.0.0.1", 5432)
    );
    assert_eq!(c.outbound[0].mode, Mode::Tcp);
    // The defaults: HTTP, no PROXY header.
    let c = Config::parse(&with(&format!("{INBOUND}{ROUTE}"))).unwrap();
    let inbound = c.inbound.unwrap();
    assert_eq!((inbound.mode, inbound.proxy_protocol), (Mode::Http, None));
    assert_eq!(c.outbound[0].mode, Mode::Http);
}
