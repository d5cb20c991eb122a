//! The PROXY protocol v2 header (HAProxy's binary format) that a TCP-mode inbound with
//! `proxy_protocol = "v2"` writes to its local service before the first byte of the peer: in
//! TCP mode there is no HTTP request to carry `x-forwarded-client-cert`, so the peer's address
//! and identity travel here. The encoding is the `ppp` crate's; the TLVs are ours:
//!
//! - `PP2_TYPE_SSL` (0x20): client flags `PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN |
//!   PP2_CLIENT_CERT_SESS`, verify = 0 (the certificate was verified), and the sub-TLV
//!   `PP2_SUBTYPE_SSL_VERSION` = `TLSv1.3`.
//! - [`PP2_TYPE_SPIFFE_ID`] (0xE1, in the spec's range for application-specific types): the
//!   peer's SPIFFE ID, US-ASCII, as in XFCC's `URI`.
//! - [`PP2_TYPE_PEER_CERT_SHA256`] (0xE2): SHA-256 of the peer's leaf certificate (32 raw
//!   bytes), as in XFCC's `Hash`.
//!
//! 0xE0, 0xEA and 0xEE are avoided: cloud load balancers put their own data there.

use std::io;
use std::net::SocketAddr;

use meshgate_identity::SpiffeId;
use ppp::v2::{Builder, Command, Protocol, Type, Version};

/// The TLV type that carries the peer's SPIFFE ID.
pub const PP2_TYPE_SPIFFE_ID: u8 = 0xE1;
/// The TLV type that carries the SHA-256 of the peer's leaf certificate.
pub const PP2_TYPE_PEER_CERT_SHA256: u8 = 0xE2;

/// `PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS`: TLS, and a client certificate
/// on this connection (and its session: there is no resumption, so they are the same).
const SSL_CLIENT_FLAGS: u8 = 0x01 | 0x02 | 0x04;

/// The header for a connection from `source` to `destination` (the inbound listener's own
/// address) whose authenticated peer is `peer` with a leaf of SHA-256 `cert_sha256`. Both
/// addresses come from one socket, so they are of one family; were they not, the header would
/// say `AF_UNSPEC` and the service would read the socket's own addresses.
pub(crate) fn v2(
    source: SocketAddr,
    destination: SocketAddr,
    peer: &SpiffeId,
    cert_sha256: &[u8; 32],
) -> io::Result<Vec<u8>> {
    Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (source, destination),
    )
    .write_tlv(Type::SSL, &ssl_tlv())?
    .write_tlv(PP2_TYPE_SPIFFE_ID, peer.as_str().as_bytes())?
    .write_tlv(PP2_TYPE_PEER_CERT_SHA256, cert_sha256)?
    .build()
}

/// The value of `PP2_TYPE_SSL`: client flags, verify (0 = verified), then its sub-TLVs.
fn ssl_tlv() -> Vec<u8> {
    const VERSION: &[u8] = b"TLSv1.3";
    let mut value = vec![SSL_CLIENT_FLAGS];
    value.extend_from_slice(&0u32.to_be_bytes());
    value.push(Type::SSLVersion as u8);
    value.extend_from_slice(&(VERSION.len() as u16).to_be_bytes());
    value.extend_from_slice(VERSION);
    value
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)] // test code

    use ppp::v2::{Addresses, Header};

    use super::*;

    const PEER: &str = "spiffe://bank.example/ns/shop/sa/checkout";

    /// The spec's layout, written out by hand (section 2.2): signature, ver/cmd, fam/proto,
    /// length, addresses, ports, then TLVs of type, 2-byte length, value.
    #[test]
    fn ipv4_bytes_are_the_spec_layout() {
        let source: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let destination: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let hash = [0xAB; 32];
        let header = v2(source, destination, &SpiffeId::parse(PEER).unwrap(), &hash).unwrap();

        let mut expected = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        expected.push(0x21); // version 2, PROXY
        expected.push(0x11); // AF_INET, STREAM
        let ssl = [
            &[0x20, 0x00, 0x0F, 0x07, 0, 0, 0, 0, 0x21, 0x00, 0x07][..],
            b"TLSv1.3",
        ]
        .concat();
        let id = [&[0xE1, 0x00, PEER.len() as u8][..], PEER.as_bytes()].concat();
        let cert = [&[0xE2, 0x00, 0x20][..], &hash[..]].concat();
        let length = 12 + ssl.len() + id.len() + cert.len();
        expected.extend_from_slice(&(length as u16).to_be_bytes());
        expected.extend_from_slice(&[10, 1, 2, 3, 127, 0, 0, 1]);
        expected.extend_from_slice(&40000u16.to_be_bytes());
        expected.extend_from_slice(&8443u16.to_be_bytes());
        expected.extend_from_slice(&ssl);
        expected.extend_from_slice(&id);
        expected.extend_from_slice(&cert);
        assert_eq!(header, expected);
    }

    #[test]
    fn ipv6_round_trips_through_a_parser() {
        let source: SocketAddr = "[2001:db8::1]:51000".parse().unwrap();
        let destination: SocketAddr = "[::1]:9443".parse().unwrap();
        let header = v2(
            source,
            destination,
            &SpiffeId::parse(PEER).unwrap(),
            &[7; 32],
        )
        .unwrap();
        assert_eq!(header[13], 0x21, "AF_INET6, STREAM");
        let parsed = Header::try_from(header.as_slice()).unwrap();
        assert_eq!(parsed.len(), header.len());
        match parsed.addresses {
            Addresses::IPv6(a) => {
                assert_eq!(
                    (
                        SocketAddr::from((a.source_address, a.source_port)),
                        SocketAddr::from((a.destination_address, a.destination_port))
                    ),
                    (source, destination)
                );
            }
            other => panic!("not IPv6: {other:?}"),
        }
        let tlvs: Vec<_> = parsed.tlvs().map(Result::unwrap).collect();
        let kinds: Vec<u8> = tlvs.iter().map(|t| t.kind).collect();
        assert_eq!(kinds, [0x20, PP2_TYPE_SPIFFE_ID, PP2_TYPE_PEER_CERT_SHA256]);
        assert_eq!(&*tlvs[1].value, PEER.as_bytes());
        assert_eq!(&*tlvs[2].value, &[7; 32]);
    }
}
