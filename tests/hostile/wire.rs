//! Hostile bytes and credentials for the servers: a TLS 1.2-only ClientHello (rustls here is
//! built without TLS 1.2, so it is written by hand), and client certificates that our own CA's
//! intermediate signed but the SPIFFE rules forbid (minted at test time with the intermediate's
//! key read from the CA directory: another trust domain, two URI SANs, the CA cert as a leaf).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meshgate_ca::KeyType;
use meshgate_identity::SpiffeId;
use meshgate_identity::tls::certified_key;
use rcgen::{Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(10);

/// A ClientHello that offers TLS 1.2 only (no supported_versions extension), with ALPN
/// `http/1.1`, as an old client would send it.
pub fn tls12_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend([0x42; 32]);
    body.push(0);
    let suites: [u8; 8] = [0xc0, 0x2b, 0xc0, 0x2f, 0xcc, 0xa9, 0xcc, 0xa8];
    body.extend(u16::try_from(suites.len()).unwrap().to_be_bytes());
    body.extend(suites);
    body.extend([1, 0]);
    let mut ext = Vec::new();
    ext.extend([0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x17, 0x00, 0x1d]);
    ext.extend([0x00, 0x0b, 0x00, 0x02, 0x01, 0x00]);
    ext.extend([0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04]);
    ext.extend([0x00, 0x10, 0x00, 0x0b, 0x00, 0x09, 0x08]);
    ext.extend(b"http/1.1");
    body.extend(u16::try_from(ext.len()).unwrap().to_be_bytes());
    body.extend(ext);
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut handshake = vec![0x01, len[1], len[2], len[3]];
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend(handshake);
    record
}

/// Writes `bytes` on a fresh TCP connection and reads until the server closes (bounded).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = timeout(STEP, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let _ = tcp.write_all(bytes).await;
    let mut answer = Vec::new();
    let read = timeout(STEP, tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server kept a hostile connection open");
    answer
}

/// The server answered a TLS 1.2-only hello with a fatal protocol_version alert (or just
/// closed) and never with a ServerHello.
#[track_caller]
pub fn assert_protocol_version_alert(answer: &[u8]) {
    if answer.is_empty() {
        return;
    }
    assert_eq!(answer.first(), Some(&0x15), "not an alert: {answer:02x?}");
    // level fatal (2), description protocol_version (70)
    assert_eq!(answer.get(5..7), Some(&[2u8, 70][..]), "{answer:02x?}");
}

/// The CA's current intermediate signing key, read from `ca_dir/keys`.
pub fn intermediate_key(ca_dir: &Path) -> KeyPair {
    let keys: Vec<_> = std::fs::read_dir(ca_dir.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("intermediate-")
        })
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    meshgate_ca::keys::read_key_file(&keys[0]).unwrap()
}

/// A leaf for `ids` (every one a URI SAN) signed by the intermediate whose certificate is
/// `intermediate` and key is in `ca_dir`: the SVID profile in all but the IDs.
pub fn signed_by_our_intermediate(
    ca_dir: &Path,
    intermediate: &CertificateDer<'static>,
    ids: &[&str],
) -> Arc<CertifiedKey> {
    let issuer = Issuer::from_ca_cert_der(intermediate, intermediate_key(ca_dir)).unwrap();
    let first = SpiffeId::parse(ids[0]).unwrap();
    let now = OffsetDateTime::now_utc();
    let mut params = meshgate_ca::profile::leaf_params(
        &first,
        &[],
        now,
        Duration::from_secs(600),
        now + Duration::from_secs(3600),
    )
    .unwrap();
    for id in &ids[1..] {
        params
            .subject_alt_names
            .push(SanType::URI((*id).try_into().unwrap()));
    }
    let key = KeyType::EcdsaP256.generate().unwrap();
    meshgate_ca::profile::add_subject_key_identifier(&mut params, &key);
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    certified_key(vec![leaf.der().clone(), intermediate.clone()], key).unwrap()
}

/// The intermediate itself (cA=true) presented as a client certificate, with its real key.
pub fn intermediate_as_leaf(
    ca_dir: &Path,
    intermediate: &CertificateDer<'static>,
) -> Arc<CertifiedKey> {
    let key = intermediate_key(ca_dir);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    certified_key(vec![intermediate.clone()], key).unwrap()
}
