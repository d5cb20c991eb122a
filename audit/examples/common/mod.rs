//! The sample event the write benchmark and the throughput example both record.

use meshgate_audit::{Action, AuditEvent, Component, Outcome};

/// A gateway denial as the gateway writes it (about 480 bytes on disk).
pub fn event(i: u64) -> AuditEvent {
    AuditEvent::new(
        Component::Gateway,
        "spiffe://bank.example/ns/web/sa/frontend",
        Action::RequestDeny,
        "spiffe://bank.example/ns/payments/sa/api",
        Outcome::Denied,
    )
    .with_reason("policy")
    .with_source("10.1.2.3:51234")
    .with_request_id(format!("req-{i:016x}"))
    .with_trust_domain("bank.example")
    .with_detail("method", "POST")
    .with_detail("path", "/v1/charges")
    .with_detail("rule", "default deny")
}
