//! Fuzzes the bootstrap token format: never a panic; an error never carries the text it was
//! given (a claims error may quote the decoded claims, which are not secret); a parsed token
//! reveals to text that parses to the same token; `Debug` never shows the secret.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshgate_identity::api::{BootstrapToken, TokenError};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match BootstrapToken::parse(text) {
        Ok(token) => {
            let revealed = token.reveal();
            let again = BootstrapToken::parse(&revealed).expect("a revealed token parses");
            assert!(again == token);
            let secret = revealed.rsplit('.').next().unwrap_or_default();
            // Unless the claims themselves happen to hold the same text.
            if !format!("{:?}", token.claims()).contains(secret) {
                assert!(!format!("{token:?}").contains(secret));
            }
        }
        // A claims error may quote the decoded claims (not secret); no other error quotes input.
        Err(TokenError::Claims(_)) => {}
        Err(e) => {
            let message = e.to_string();
            let secret_part = text.trim().rsplit('.').next().unwrap_or_default();
            // Only long parts could be a secret; short ones may appear in the message by chance.
            assert!(
                secret_part.len() < 16 || !message.contains(secret_part),
                "the error echoes the token: {message}"
            );
        }
    }
});
