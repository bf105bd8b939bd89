//! Join tokens: what an agent enrolls with. A token is
//! `SJ1.<id>.<secret>.<CA fingerprint>`: the id names the master's record of it (which
//! keeps only the secret's SHA-256), the secret proves it, and the CA's fingerprint lets
//! the agent refuse a master of another fleet before it shows the secret to anyone.

use sha2::{Digest, Sha256};

use crate::cert_info::hex;

const PREFIX: &str = "SJ1";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 24;

/// A join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// 16 hex digits.
    pub id: String,
    /// 48 hex digits: never stored by the master, never logged.
    pub secret: String,
    /// `sha256:` and 64 hex digits: the fleet CA certificate the agent will trust.
    pub ca_fingerprint: String,
}

impl std::fmt::Debug for JoinToken {
    /// Never prints the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// A new random token for the CA with this fingerprint (`sha256:...`).
    pub fn generate(ca_fingerprint: &str) -> Result<JoinToken, String> {
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        getrandom::fill(&mut id)
            .and_then(|()| getrandom::fill(&mut secret))
            .map_err(|e| format!("no randomness for a token: {e}"))?;
        Ok(JoinToken {
            id: hex(&id),
            secret: hex(&secret),
            ca_fingerprint: ca_fingerprint.to_string(),
        })
    }

    /// Read a token as [`JoinToken::text`] writes it; the error says what is wrong
    /// without repeating the token.
    pub fn parse(text: &str) -> Result<JoinToken, String> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let hexy = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
        match parts.as_slice() {
            [PREFIX, id, secret, ca]
                if hexy(id, 2 * ID_BYTES) && hexy(secret, 2 * SECRET_BYTES) && hexy(ca, 64) =>
            {
                Ok(JoinToken {
                    id: id.to_ascii_lowercase(),
                    secret: secret.to_ascii_lowercase(),
                    ca_fingerprint: format!("sha256:{}", ca.to_ascii_lowercase()),
                })
            }
            _ => Err(format!(
                "not a join token (expected {PREFIX}.<16 hex>.<48 hex>.<64 hex>, as `sloth-master token create` prints)"
            )),
        }
    }

    /// The token as the operator passes it on.
    pub fn text(&self) -> String {
        format!(
            "{PREFIX}.{}.{}.{}",
            self.id,
            self.secret,
            self.ca_fingerprint.trim_start_matches("sha256:")
        )
    }

    /// What the master stores instead of the secret.
    pub fn secret_hash(&self) -> String {
        hash_secret(&self.secret)
    }
}

/// `sha256:` and the hex SHA-256 of a token secret.
pub fn hash_secret(secret: &str) -> String {
    format!("sha256:{}", hex(&Sha256::digest(secret.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused_without_echo() {
        let ca = format!("sha256:{}", "ab".repeat(32));
        let t = JoinToken::generate(&ca).unwrap();
        let again = JoinToken::parse(&t.text()).unwrap();
        assert_eq!(t, again);
        assert_ne!(t, JoinToken::generate(&ca).unwrap(), "random");
        assert_eq!(t.ca_fingerprint, ca);
        assert!(t.secret_hash().starts_with("sha256:"));
        assert_ne!(t.secret_hash(), t.secret);
        assert!(!format!("{t:?}").contains(&t.secret));
        for bad in [
            "",
            "SJ1",
            "SJ2.a.b.c",
            &t.text().replace("SJ1.", "SJ1.x"),
            &t.text()[..50],
        ] {
            let e = JoinToken::parse(bad).unwrap_err();
            assert!(!e.contains(&t.secret));
        }
    }
}
