//! The SQLite datastore: WAL journal with `synchronous=FULL`, so an acknowledged write survives a
//! crash at any instant.

use std::path::Path;
use std::time::Duration;

use meshgate_identity::{Serial, SpiffeId, TrustDomain};
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::error::CaError;
use crate::keys::KeyType;
use crate::store::{AuthorityKind, AuthorityRecord, AuthorityState, CaMeta, IssuedCert, Store};

/// The file name of the datastore inside a CA directory.
pub const DB_FILE: &str = "ca.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS authorities (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('root', 'intermediate')),
    serial     TEXT NOT NULL UNIQUE,
    cert_der   BLOB NOT NULL,
    key_file   TEXT NOT NULL,
    parent     INTEGER REFERENCES authorities(id),
    not_before INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('active', 'retired'))
) STRICT;
CREATE TABLE IF NOT EXISTS issued (
    serial     TEXT PRIMARY KEY,
    spiffe_id  TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    issuer     TEXT NOT NULL,
    dns_names  TEXT NOT NULL,
    issued_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS issued_by_id ON issued (spiffe_id);
";

/// The embedded datastore.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies the schema.
    pub fn open(path: &Path) -> Result<Self, CaError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    fn meta_value(&self, key: &str) -> Result<Option<String>, CaError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }
}

impl Store for SqliteStore {
    fn initialize(
        &mut self,
        meta: &CaMeta,
        root: &AuthorityRecord,
        intermediate: &AuthorityRecord,
    ) -> Result<(), CaError> {
        let tx = self.conn.transaction()?;
        for (k, v) in [
            ("trust_domain", meta.trust_domain.to_string()),
            ("key_type", meta.key_type.name().to_owned()),
            ("bundle_sequence", meta.bundle_sequence.to_string()),
        ] {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                params![k, v],
            )?;
        }
        for a in [root, intermediate] {
            tx.execute(
                "INSERT INTO authorities (id, kind, serial, cert_der, key_file, parent, not_before, not_after, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    a.id,
                    kind_str(a.kind),
                    a.serial.to_string(),
                    a.cert_der,
                    a.key_file,
                    a.parent,
                    a.not_before,
                    a.not_after,
                    state_str(a.state)
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn meta(&self) -> Result<CaMeta, CaError> {
        let corrupt = |what: &str, reason: String| CaError::BadCaCert {
            what: what.to_owned(),
            reason,
        };
        let td = self
            .meta_value("trust_domain")?
            .ok_or(CaError::NoActiveAuthority("trust domain"))?;
        let trust_domain =
            TrustDomain::parse(&td).map_err(|e| corrupt("trust_domain", e.to_string()))?;
        let kt = self.meta_value("key_type")?.unwrap_or_default();
        let key_type = KeyType::parse(&kt).ok_or_else(|| corrupt("key_type", kt.clone()))?;
        let seq = self.meta_value("bundle_sequence")?.unwrap_or_default();
        let bundle_sequence = seq
            .parse()
            .map_err(|_| corrupt("bundle_sequence", seq.clone()))?;
        Ok(CaMeta {
            trust_domain,
            key_type,
            bundle_sequence,
        })
    }

    fn authorities(&self) -> Result<Vec<AuthorityRecord>, CaError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, kind, serial, cert_der, key_file, parent, not_before, not_after, state
             FROM authorities ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, String>(8)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, kind, serial, cert_der, key_file, parent, not_before, not_after, state) = row?;
            let corrupt = |reason: String| CaError::BadCaCert {
                what: format!("#{id}"),
                reason,
            };
            out.push(AuthorityRecord {
                id,
                kind: match kind.as_str() {
                    "root" => AuthorityKind::Root,
                    _ => AuthorityKind::Intermediate,
                },
                serial: Serial::parse_hex(&serial)
                    .ok_or_else(|| corrupt(format!("serial {serial:?}")))?,
                cert_der,
                key_file,
                parent,
                not_before,
                not_after,
                state: match state.as_str() {
                    "active" => AuthorityState::Active,
                    _ => AuthorityState::Retired,
                },
            });
        }
        Ok(out)
    }

    fn record_issued(&mut self, c: &IssuedCert) -> Result<(), CaError> {
        let dns = serde_json::to_string(&c.dns_names).unwrap_or_else(|_| "[]".to_owned());
        self.conn.execute(
            "INSERT INTO issued (serial, spiffe_id, sha256, not_before, not_after, issuer, dns_names, issued_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                c.serial.to_string(),
                c.spiffe_id.as_str(),
                c.sha256,
                c.not_before,
                c.not_after,
                c.issuer.to_string(),
                dns,
                c.issued_at
            ],
        )?;
        Ok(())
    }

    fn list_issued(&self) -> Result<Vec<IssuedCert>, CaError> {
        let mut stmt = self.conn.prepare(
            "SELECT serial, spiffe_id, sha256, not_before, not_after, issuer, dns_names, issued_at
             FROM issued ORDER BY issued_at, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (serial, id, sha256, not_before, not_after, issuer, dns, issued_at) = row?;
            let corrupt = |reason: String| CaError::BadCaCert {
                what: format!("issued {serial}"),
                reason,
            };
            out.push(IssuedCert {
                serial: Serial::parse_hex(&serial).ok_or_else(|| corrupt("serial".into()))?,
                spiffe_id: SpiffeId::parse(&id).map_err(|e| corrupt(e.to_string()))?,
                sha256,
                not_before,
                not_after,
                issuer: Serial::parse_hex(&issuer).ok_or_else(|| corrupt("issuer".into()))?,
                dns_names: serde_json::from_str(&dns).map_err(|e| corrupt(e.to_string()))?,
                issued_at,
            });
        }
        Ok(out)
    }
}

fn kind_str(k: AuthorityKind) -> &'static str {
    match k {
        AuthorityKind::Root => "root",
        AuthorityKind::Intermediate => "intermediate",
    }
}

fn state_str(s: AuthorityState) -> &'static str {
    match s {
        AuthorityState::Active => "active",
        AuthorityState::Retired => "retired",
    }
}
