//! The SQLite datastore: WAL journal with `synchronous=FULL`, so an acknowledged write survives a
//! crash at any instant.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshgate_identity::{Serial, SpiffeId, TrustDomain};
use rusqlite::{Connection, OptionalExtension as _, params};

use crate::error::CaError;
use crate::keys::KeyType;
use crate::store::{
    AuthorityKind, AuthorityRecord, AuthorityState, CaMeta, EnrollOutcome, IssuanceOutcome,
    IssuanceWrite, IssuedCert, RevocationRecord, Store, TokenRecord, TokenRejection,
};

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
    state      TEXT NOT NULL CHECK (state IN ('prepared', 'active', 'retiring', 'retired'))
) STRICT;
CREATE TABLE IF NOT EXISTS tokens (
    id            INTEGER PRIMARY KEY,
    secret_sha256 TEXT NOT NULL UNIQUE,
    spiffe_id     TEXT NOT NULL,
    expires_at    INTEGER NOT NULL,
    uses_left     INTEGER NOT NULL CHECK (uses_left >= 0),
    created_by    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS revocations (
    serial    TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    at        INTEGER NOT NULL,
    reason    TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS issued (
    serial     TEXT PRIMARY KEY,
    spiffe_id  TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    not_before INTEGER NOT NULL,
    not_after  INTEGER NOT NULL,
    issuer     TEXT NOT NULL,
    dns_names  TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    -- The serial of the SVID whose holder renewed into this one (NULL for enrollments).
    renewed_from TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS issued_by_id ON issued (spiffe_id);
CREATE INDEX IF NOT EXISTS issued_by_parent ON issued (renewed_from);
";

/// The embedded datastore.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    /// Where `conn` was opened, to open it again when it is left unusable.
    path: PathBuf,
    /// `conn` was closed and could not be opened again: the next recovery tries once more.
    lost: bool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies the schema.
    pub fn open(path: &Path) -> Result<Self, CaError> {
        Ok(Self {
            conn: connect(path)?,
            path: path.to_owned(),
            lost: false,
        })
    }

    /// A connection for reads on a thread that must not block: it never waits for a lock
    /// (SQLite answers busy at once instead).
    pub(crate) fn open_reader(path: &Path) -> Result<Self, CaError> {
        let store = Self::open(path)?;
        store.conn.busy_timeout(Duration::ZERO)?;
        Ok(store)
    }

    fn revocations_in_snapshot(&self) -> Result<(u64, Vec<RevocationRecord>), CaError> {
        let seq = self
            .meta_get("revocation_sequence")?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut stmt = self.conn.prepare(
            // Entries whose certificate has expired are left out: an expired SVID is refused
            // anyway, and the list stays short.
            "SELECT r.serial, r.spiffe_id, r.at, r.reason FROM revocations r
                 LEFT JOIN issued i ON i.serial = r.serial
                 WHERE i.not_after IS NULL OR i.not_after > CAST(strftime('%s', 'now') AS INTEGER)
                 ORDER BY r.at, r.serial",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (serial, id, at, reason) = row?;
            let corrupt = |reason: String| CaError::BadCaCert {
                what: format!("revocation {serial}"),
                reason,
            };
            out.push(RevocationRecord {
                serial: Serial::parse_hex(&serial).ok_or_else(|| corrupt("serial".into()))?,
                spiffe_id: SpiffeId::parse(&id).map_err(|e| corrupt(e.to_string()))?,
                at,
                reason,
            });
        }
        Ok((seq, out))
    }

    fn meta_get(&self, key: &str) -> Result<Option<String>, CaError> {
        Ok(self
            .conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get(0))
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
        let kt = self.meta_get("key_type")?.unwrap_or_default();
        let key_type = KeyType::parse(&kt).ok_or_else(|| corrupt("key_type", kt.clone()))?;
        let seq = self.meta_get("bundle_sequence")?.unwrap_or_default();
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
                state: AuthorityState::parse(&state)
                    .ok_or_else(|| corrupt(format!("state {state:?}")))?,
            });
        }
        Ok(out)
    }

    fn bundle_state(&self) -> Result<(u64, Vec<AuthorityRecord>), CaError> {
        // A read transaction: in WAL mode both reads see the same snapshot.
        let tx = self.conn.unchecked_transaction()?;
        let sequence = self.meta()?.bundle_sequence;
        let authorities = self.authorities()?;
        tx.commit()?;
        Ok((sequence, authorities))
    }

    fn record_issued(&mut self, c: &IssuedCert) -> Result<(), CaError> {
        insert_issued(&self.conn, c)
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

    fn change_authorities(
        &mut self,
        new: Option<&AuthorityRecord>,
        states: &[(i64, AuthorityState)],
        meta: &[(&str, String)],
    ) -> Result<Option<i64>, CaError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut new_id = None;
        if let Some(a) = new {
            tx.execute(
                "INSERT INTO authorities (kind, serial, cert_der, key_file, parent, not_before, not_after, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
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
            new_id = Some(tx.last_insert_rowid());
        }
        for (id, state) in states {
            tx.execute(
                "UPDATE authorities SET state = ?1 WHERE id = ?2",
                params![state_str(*state), id],
            )?;
        }
        for (k, v) in meta {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![k, v],
            )?;
        }
        bump(&tx, "state_version")?;
        tx.commit()?;
        Ok(new_id)
    }

    fn meta_value(&self, key: &str) -> Result<Option<String>, CaError> {
        self.meta_get(key)
    }

    fn insert_token(&mut self, t: &TokenRecord) -> Result<i64, CaError> {
        self.conn.execute(
            "INSERT INTO tokens (secret_sha256, spiffe_id, expires_at, uses_left, created_by, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![t.secret_sha256, t.spiffe_id.as_str(), t.expires_at, t.uses_left, t.created_by, t.created_at],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, CaError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY id"))?;
        let rows = stmt.query_map([], token_from_row)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row??);
        }
        Ok(out)
    }

    fn revoke_token(&mut self, id: i64, now: i64) -> Result<bool, CaError> {
        let n = self.conn.execute(
            "UPDATE tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            params![now, id],
        )?;
        Ok(n == 1)
    }

    fn token_by_secret(&self, secret_sha256: &str) -> Result<Option<TokenRecord>, CaError> {
        token_by_secret(&self.conn, secret_sha256)
    }

    fn commit_issuances(
        &mut self,
        writes: Vec<IssuanceWrite>,
    ) -> Result<Vec<Result<IssuanceOutcome, CaError>>, CaError> {
        // IMMEDIATE takes the write lock first: the checks below read what they then change, and
        // a `ca token revoke` or `ca revoke` from the CLI commits either before this batch or
        // after it. With synchronous=FULL the commit returns once the batch is on disk.
        // Every statement here is a cached one: parsing them again for each batch and each
        // write cost more than the writes themselves (rusqlite's `Transaction` and `Savepoint`
        // go through `execute_batch`, which parses every time).
        if self.lost {
            // The reconnect after an earlier failure failed too: try it again first, rather
            // than write into the stand-in connection.
            self.conn = connect(&self.path)?;
            self.lost = false;
        }
        let tx = Immediate::begin(&self.conn)?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for write in writes {
            cached(&self.conn, "SAVEPOINT issuance")?;
            match apply(&self.conn, write) {
                Ok(outcome) => {
                    cached(&self.conn, "RELEASE issuance")?;
                    outcomes.push(Ok(outcome));
                }
                Err(e) => {
                    // Only this write's changes go; if even that fails, the batch does.
                    cached(&self.conn, "ROLLBACK TO issuance")?;
                    cached(&self.conn, "RELEASE issuance")?;
                    outcomes.push(Err(e));
                }
            }
        }
        tx.commit()?;
        Ok(outcomes)
    }

    fn recover_after_failed_commit(&mut self) -> Result<(), CaError> {
        if !self.lost && self.conn.is_autocommit() {
            return Ok(());
        }
        if !self.lost && self.conn.execute_batch("ROLLBACK").is_ok() {
            return Ok(());
        }
        // A connection stuck inside a transaction would refuse every later batch and hold the
        // write lock: close it (SQLite rolls back what it held) and open the file again.
        tracing::warn!(
            "the CA's group commit connection to {} is reopened",
            self.path.display()
        );
        let stuck = std::mem::replace(&mut self.conn, Connection::open_in_memory()?);
        self.lost = true;
        if let Err((_, e)) = stuck.close() {
            tracing::warn!("closing the stuck connection: {e}");
        }
        self.conn = connect(&self.path)?;
        self.lost = false;
        Ok(())
    }

    fn revoke(
        &mut self,
        serials: &[(Serial, SpiffeId)],
        now: i64,
        reason: Option<&str>,
    ) -> Result<Vec<RevocationRecord>, CaError> {
        let tx = self.conn.transaction()?;
        let mut added = Vec::new();
        for (serial, id) in serials {
            let n = tx.execute(
                "INSERT OR IGNORE INTO revocations (serial, spiffe_id, at, reason) VALUES (?1, ?2, ?3, ?4)",
                params![serial.to_string(), id.as_str(), now, reason],
            )?;
            if n == 1 {
                added.push(RevocationRecord {
                    serial: serial.clone(),
                    spiffe_id: id.clone(),
                    at: now,
                    reason: reason.map(str::to_owned),
                });
            }
        }
        if !added.is_empty() {
            bump(&tx, "revocation_sequence")?;
        }
        tx.commit()?;
        Ok(added)
    }

    fn revoke_lineage(
        &mut self,
        serial: &Serial,
        now: i64,
        reason: Option<&str>,
    ) -> Result<Option<Vec<RevocationRecord>>, CaError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let lineage = {
            let mut stmt = tx.prepare(
                "WITH RECURSIVE lineage(serial) AS (
                     SELECT ?1
                     UNION SELECT i.serial FROM issued i JOIN lineage l ON i.renewed_from = l.serial)
                 SELECT i.serial, i.spiffe_id FROM issued i JOIN lineage l ON i.serial = l.serial",
            )?;
            let rows = stmt.query_map([serial.to_string()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row?);
            }
            out
        };
        if lineage.is_empty() {
            return Ok(None);
        }
        let added = revoke_in(&tx, &lineage, now, reason)?;
        tx.commit()?;
        Ok(Some(added))
    }

    fn revoke_spiffe_id(
        &mut self,
        id: &SpiffeId,
        now: i64,
        reason: Option<&str>,
    ) -> Result<Vec<RevocationRecord>, CaError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let live = {
            let mut stmt = tx.prepare(
                "SELECT serial, spiffe_id FROM issued WHERE spiffe_id = ?1 AND not_after > ?2",
            )?;
            let rows = stmt.query_map(params![id.as_str(), now], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row?);
            }
            out
        };
        let added = revoke_in(&tx, &live, now, reason)?;
        tx.commit()?;
        Ok(added)
    }

    fn is_revoked(&self, serial: &Serial) -> Result<bool, CaError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM revocations WHERE serial = ?1")?
            .exists([serial.to_string()])?)
    }

    fn revocations(&self) -> Result<(u64, Vec<RevocationRecord>), CaError> {
        // One read transaction, so the sequence and the list come from the same snapshot.
        let tx = self.conn.unchecked_transaction()?;
        let result = self.revocations_in_snapshot();
        tx.commit()?;
        result
    }
}

/// Inserts revocations for `(serial, spiffe_id)` rows inside `tx`; bumps the sequence if any
/// was new.
fn revoke_in(
    tx: &Connection,
    rows: &[(String, String)],
    now: i64,
    reason: Option<&str>,
) -> Result<Vec<RevocationRecord>, CaError> {
    let mut added = Vec::new();
    for (serial, id) in rows {
        let n = tx.execute(
            "INSERT OR IGNORE INTO revocations (serial, spiffe_id, at, reason) VALUES (?1, ?2, ?3, ?4)",
            params![serial, id, now, reason],
        )?;
        if n == 1 {
            let corrupt = |r: String| CaError::BadCaCert {
                what: format!("issued {serial}"),
                reason: r,
            };
            added.push(RevocationRecord {
                serial: Serial::parse_hex(serial).ok_or_else(|| corrupt("serial".into()))?,
                spiffe_id: SpiffeId::parse(id).map_err(|e| corrupt(e.to_string()))?,
                at: now,
                reason: reason.map(str::to_owned),
            });
        }
    }
    if !added.is_empty() {
        bump(tx, "revocation_sequence")?;
    }
    Ok(added)
}

/// A connection to the database file at `path` with the CA's settings, the schema applied.
fn connect(path: &Path) -> Result<Connection, CaError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// Runs one cached statement that takes no parameters and returns no rows.
fn cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// A `BEGIN IMMEDIATE` transaction through cached statements, rolled back if dropped before
/// [`Immediate::commit`] succeeds (an error or a panic part way).
struct Immediate<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Immediate<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        cached(conn, "BEGIN IMMEDIATE")?;
        Ok(Self { conn, open: true })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        cached(self.conn, "COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl Drop for Immediate<'_> {
    fn drop(&mut self) {
        // A COMMIT that failed (SQLITE_BUSY, a full disk) leaves the transaction open.
        if self.open && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// One write of a group commit, inside its savepoint.
fn apply(conn: &Connection, write: IssuanceWrite) -> Result<IssuanceOutcome, CaError> {
    match write {
        IssuanceWrite::Enroll {
            secret_sha256,
            now,
            issued,
        } => {
            let Some(mut token) = token_by_secret(conn, &secret_sha256)? else {
                return Ok(IssuanceOutcome::Enroll(EnrollOutcome::Rejected(
                    TokenRejection::Unknown,
                )));
            };
            if let Some(r) = token.rejection(now) {
                return Ok(IssuanceOutcome::Enroll(EnrollOutcome::Rejected(r)));
            }
            conn.prepare_cached("UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?1")?
                .execute([token.id])?;
            token.uses_left -= 1;
            let outcome = match issued {
                // Minted for the ID the token named when it was read; tokens never change their
                // ID, but the check is cheap and the write must not record a certificate the
                // token did not pay for.
                Ok(cert) if cert.spiffe_id == token.spiffe_id => {
                    insert_issued(conn, &cert)?;
                    EnrollOutcome::Issued(token, cert)
                }
                Ok(_) => EnrollOutcome::Failed(
                    token,
                    CaError::Internal("the certificate was minted for another SPIFFE ID"),
                ),
                Err(e) => EnrollOutcome::Failed(token, e),
            };
            Ok(IssuanceOutcome::Enroll(outcome))
        }
        IssuanceWrite::Renew { cert, from } => {
            // A revocation of `from` commits either before this batch (and the renewal is
            // refused) or after it (and finds this certificate as a descendant).
            let revoked = conn
                .prepare_cached("SELECT 1 FROM revocations WHERE serial = ?1")?
                .exists([from.to_string()])?;
            if revoked {
                return Ok(IssuanceOutcome::Renew { recorded: false });
            }
            insert_issued(conn, &cert)?;
            conn.prepare_cached("UPDATE issued SET renewed_from = ?1 WHERE serial = ?2")?
                .execute(params![from.to_string(), cert.serial.to_string()])?;
            Ok(IssuanceOutcome::Renew { recorded: true })
        }
    }
}

fn token_by_secret(conn: &Connection, secret_sha256: &str) -> Result<Option<TokenRecord>, CaError> {
    conn.prepare_cached(&format!(
        "SELECT {TOKEN_COLUMNS} FROM tokens WHERE secret_sha256 = ?1"
    ))?
    .query_row([secret_sha256], token_from_row)
    .optional()?
    .transpose()
}

fn kind_str(k: AuthorityKind) -> &'static str {
    match k {
        AuthorityKind::Root => "root",
        AuthorityKind::Intermediate => "intermediate",
    }
}

fn state_str(s: AuthorityState) -> &'static str {
    s.as_str()
}

fn insert_issued(conn: &Connection, c: &IssuedCert) -> Result<(), CaError> {
    let dns = serde_json::to_string(&c.dns_names).unwrap_or_else(|_| "[]".to_owned());
    conn.prepare_cached(
        "INSERT INTO issued (serial, spiffe_id, sha256, not_before, not_after, issuer, dns_names, issued_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
            c.serial.to_string(),
            c.spiffe_id.as_str(),
            c.sha256,
            c.not_before,
            c.not_after,
            c.issuer.to_string(),
            dns,
            c.issued_at
    ])?;
    Ok(())
}

const TOKEN_COLUMNS: &str =
    "id, secret_sha256, spiffe_id, expires_at, uses_left, created_by, created_at, revoked_at";

fn token_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<TokenRecord, CaError>> {
    let id: i64 = r.get(0)?;
    let spiffe_id: String = r.get(2)?;
    let uses: i64 = r.get(4)?;
    Ok(SpiffeId::parse(&spiffe_id)
        .map_err(|e| CaError::BadCaCert {
            what: format!("token #{id}"),
            reason: e.to_string(),
        })
        .map(|spiffe_id| TokenRecord {
            id,
            secret_sha256: r.get(1).unwrap_or_default(),
            spiffe_id,
            expires_at: r.get(3).unwrap_or_default(),
            uses_left: u32::try_from(uses).unwrap_or(0),
            created_by: r.get(5).unwrap_or_default(),
            created_at: r.get(6).unwrap_or_default(),
            revoked_at: r.get(7).unwrap_or_default(),
        }))
}

fn bump(conn: &Connection, key: &str) -> Result<u64, CaError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, '1')
         ON CONFLICT(key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
        [key],
    )?;
    let v: String = conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))?;
    Ok(v.parse().unwrap_or(0))
}
