//! meshgate identity policies: TOML policy files (per-service and mesh-wide) parsed into
//! rules, compiled into a [`PolicySet`], and a decision with its reason for every request.
//!
//! The crate is pure: it parses text it is given and decides requests it is given; reading
//! files, watching them and logging decisions belong to the caller.
//!
//! ```
//! use meshgate_identity::SpiffeId;
//! use meshgate_policy::{Effect, PolicyFile, PolicySet, Request};
//!
//! let text = r#"
//! service = "spiffe://bank.example/ns/payments/sa/api"
//!
//! [[allow]]
//! name = "checkout charges cards"
//! from = ["spiffe://bank.example/ns/shop/sa/checkout"]
//! methods = ["POST"]
//! paths = ["/v1/charges"]
//! "#;
//! let set = PolicySet::compile([PolicyFile::parse("payments.toml", text)?])?;
//! let shop = SpiffeId::parse("spiffe://bank.example/ns/shop/sa/checkout")?;
//! let payments = SpiffeId::parse("spiffe://bank.example/ns/payments/sa/api")?;
//! let decision = set.evaluate(&Request::http(&shop, &payments, "POST", "/v1/charges"));
//! assert_eq!(decision.effect, Effect::Allow);
//! assert_eq!(decision.rule_name(), Some("checkout charges cards"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod file;
mod pattern;
mod rule;
mod set;

pub use error::{Location, PolicyError, PolicyErrors};
pub use file::{Mode, PolicyFile};
pub use pattern::IdPattern;
pub use rule::{Effect, Request, Rule, Scope};
pub use set::{Decision, FileInfo, PolicySet};
