//! Header rewriting at each hop: hop-by-hop headers removed (RFC 9110 §7.6.1), and
//! `x-forwarded-client-cert` with Envoy's SANITIZE_SET meaning: whatever came in is dropped and
//! the gateway sets its own.

use hyper::HeaderMap;
use hyper::header::{CONNECTION, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};
use meshgate_identity::SpiffeId;

pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, and `TE` except its `trailers` value
/// (which gRPC needs end to end and HTTP/2 allows).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests and responses carry none of them: one pass over the names (standard names
    // compare as small integers) instead of a hash lookup per name.
    let any = headers.keys().any(|name| {
        name == CONNECTION
            || name == KEEP_ALIVE
            || name == PROXY_CONNECTION
            || name == TE
            || name == TRANSFER_ENCODING
            || name == UPGRADE
    });
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    let trailers = headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in named {
        headers.remove(name);
    }
    for name in [
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        TE,
        TRANSFER_ENCODING,
        UPGRADE,
    ] {
        headers.remove(name);
    }
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// The `x-forwarded-client-cert` value for a peer:
/// `By=<own id>;Hash=<hex SHA-256 of the peer's leaf DER>;URI=<peer id>`. SPIFFE IDs have no
/// character that needs quoting in this header. Made once per connection.
pub fn xfcc_value(own: &SpiffeId, peer: &SpiffeId, leaf_sha256: &[u8; 32]) -> Option<HeaderValue> {
    let value = format!("By={own};Hash={};URI={peer}", hex::encode(leaf_sha256));
    HeaderValue::from_str(&value).ok()
}

/// SANITIZE_SET: every incoming `x-forwarded-client-cert` is removed and replaced by `value`
/// (see [`xfcc_value`]).
pub fn set_xfcc(headers: &mut HeaderMap, value: Option<&HeaderValue>) {
    headers.remove(XFCC);
    if let Some(value) = value {
        headers.insert(XFCC, value.clone());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;

    #[test]
    fn removes_hop_by_hop_and_what_connection_names() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("connection", "close"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "gzip, trailers;q=1"),
            ("x-kept", "yes"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept", "te"]);
        assert_eq!(h.get(TE).unwrap(), "trailers");
    }

    #[test]
    fn end_to_end_headers_are_left_alone() {
        let mut h = HeaderMap::new();
        for (k, v) in [("x-a", "1"), ("x-a", "2"), ("accept", "*/*"), ("host", "h")] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        h.append(UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn te_without_trailers_goes() {
        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn xfcc_is_replaced_not_appended() {
        let own = SpiffeId::parse("spiffe://bank.example/ns/payments/sa/api").unwrap();
        let peer = SpiffeId::parse("spiffe://bank.example/ns/shop/sa/checkout").unwrap();
        let mut h = HeaderMap::new();
        h.append(
            XFCC,
            HeaderValue::from_static("URI=spiffe://bank.example/ns/support/sa/x"),
        );
        h.append(XFCC, HeaderValue::from_static("By=forged"));
        set_xfcc(&mut h, xfcc_value(&own, &peer, &[0xab; 32]).as_ref());
        let all: Vec<_> = h.get_all(XFCC).iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(
            all.first().unwrap().to_str().unwrap(),
            format!("By={own};Hash={};URI={peer}", "ab".repeat(32))
        );
    }
}
