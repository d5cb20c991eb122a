//! Header rewriting at each hop: hop-by-hop headers removed (RFC 9110 §7.6.1), and
//! `x-forwarded-client-cert` with Envoy's SANITIZE_SET meaning: whatever came in is dropped and
//! the gateway sets its own.

use hyper::header::{CONNECTION, HeaderName, HeaderValue, TE, TRANSFER_ENCODING, UPGRADE};
use hyper::{HeaderMap, Version};
use meshgate_identity::SpiffeId;

pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes the hop-by-hop headers: `Connection` and every header it names, `Keep-Alive`,
/// `Proxy-Connection`, `Transfer-Encoding`, `Upgrade`, and `TE` except its `trailers` value
/// (which gRPC needs end to end and HTTP/2 allows).
///
/// Needed for what came over HTTP/1.1 only: see [`strip_hop_by_hop_from`].
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names notes which of the fixed hop-by-hop headers are present (by
    // length first, so most names cost no comparison); most requests carry none, and a
    // response from an HTTP/1.1 service usually only `Connection: keep-alive`. Only what is
    // present is looked at and removed, and only a `Connection` token naming another header
    // present costs an allocation.
    let mut present = [false; HOP_BY_HOP.len()];
    for name in headers.keys() {
        if let Some(seen) = hop_by_hop_index(name).and_then(|i| present.get_mut(i)) {
            *seen = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    let [connection, _, _, te, _, _] = present;
    let mut named: Vec<HeaderName> = Vec::new();
    if connection {
        for token in headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
        {
            let token = token.trim();
            // `close` and `keep-alive` name no other header; the fixed ones go below anyway.
            if token.eq_ignore_ascii_case("close")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| token.eq_ignore_ascii_case(h.as_str()))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                && headers.contains_key(&name)
            {
                named.push(name);
            }
        }
    }
    let trailers = te
        && headers
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
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

/// [`strip_hop_by_hop`] for a message that came in as `version`. An HTTP/2 message has nothing
/// to strip: HTTP/2 has no hop-by-hop headers (RFC 9113 §8.2.2), and the `h2` crate under
/// hyper treats a message that carries one, or a `TE` other than `trailers`, as malformed and
/// resets its stream, so it never reaches the gateway (tested: `data_plane.rs`).
pub fn strip_hop_by_hop_from(version: Version, headers: &mut HeaderMap) {
    if version != Version::HTTP_2 {
        strip_hop_by_hop(headers);
    }
}

/// The place of `name` in [`HOP_BY_HOP`], if it is one of them. Most names have none of
/// their lengths and cost no comparison.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    if !matches!(name.as_str().len(), 2 | 7 | 10 | 16 | 17) {
        return None;
    }
    HOP_BY_HOP.iter().position(|h| h == name)
}

/// The hop-by-hop headers every hop removes, besides those `Connection` names. `Connection`
/// first and `TE` fourth: [`strip_hop_by_hop`] reads them by place.
static HOP_BY_HOP: [HeaderName; 6] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    TE,
    TRANSFER_ENCODING,
    UPGRADE,
];

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
    // `insert` replaces every value the name had.
    match value {
        Some(value) => {
            headers.insert(XFCC, value.clone());
        }
        None => {
            headers.remove(XFCC);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;

    /// A header map of `(name, value)` pairs, repeated names appended in order.
    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn removes_hop_by_hop_and_what_connection_names() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("connection", "close"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "gzip, trailers;q=1"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-kept", "te"]);
        assert_eq!(h.get(TE).unwrap(), "trailers");
    }

    #[test]
    fn end_to_end_headers_are_left_alone() {
        let mut h = map(&[("x-a", "1"), ("x-a", "2"), ("accept", "*/*"), ("host", "h")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        h.append(UPGRADE, HeaderValue::from_static("websocket"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn connection_tokens_in_any_case_name_headers_to_remove() {
        let mut h = map(&[
            ("connection", "Keep-Alive, X-Secret ,Close"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type"]);
        // The usual HTTP/1.1 answer: only `Connection: keep-alive` goes.
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        h.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-length"]);
    }

    #[test]
    fn hop_by_hop_names_are_found_by_length_then_name() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(HOP_BY_HOP.first(), Some(&CONNECTION));
        assert_eq!(HOP_BY_HOP.get(3), Some(&TE));
        // End-to-end names of the same lengths, standard and not.
        for name in [
            "ab",
            "trailer",
            "referer",
            "user-agent",
            "set-cookie",
            "keep-alivf",
            "content-encoding",
            "www-authenticate",
            "if-modified-since",
            "transfer-encodinh",
            "x-forwarded-client-cert",
        ] {
            let name = HeaderName::from_static(name);
            assert_eq!(hop_by_hop_index(&name), None, "{name}");
        }
    }

    #[test]
    fn what_came_over_http2_is_left_alone_and_http1_is_stripped() {
        let hop = || {
            let mut h = HeaderMap::new();
            h.insert(CONNECTION, HeaderValue::from_static("keep-alive"));
            h.insert(hyper::header::ACCEPT, HeaderValue::from_static("*/*"));
            h
        };
        for version in [Version::HTTP_10, Version::HTTP_11] {
            let mut h = hop();
            strip_hop_by_hop_from(version, &mut h);
            assert!(!h.contains_key(CONNECTION), "{version:?}");
            assert!(h.contains_key(hyper::header::ACCEPT));
        }
        // hyper never hands over such an HTTP/2 message (h2 resets its stream); this only
        // shows that nothing is looked at.
        let mut h = hop();
        strip_hop_by_hop_from(Version::HTTP_2, &mut h);
        assert_eq!(h, hop());
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
