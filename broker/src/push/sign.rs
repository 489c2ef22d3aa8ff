//! Standard Webhooks signing: `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `{webhook-id}.{webhook-timestamp}.{body}`, keyed by the bytes of a `whsec_<base64>` secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_protocol::push::SECRET_PREFIX;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of a generated key.
pub const GENERATED_KEY_BYTES: usize = 32;

/// Shortest and longest key a secret may carry.
pub const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// The key bytes of a `whsec_...` secret, or why it is not one.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| format!("a secret starts with {SECRET_PREFIX}"))?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|e| format!("the part after {SECRET_PREFIX} is not base64: {e}"))?;
    if !KEY_BYTES.contains(&key.len()) {
        return Err(format!(
            "a secret's key must be {}..={} bytes, this one has {}",
            KEY_BYTES.start(),
            KEY_BYTES.end(),
            key.len()
        ));
    }
    Ok(key)
}

/// A new random secret.
pub fn generate_secret() -> Result<String, String> {
    let mut key = [0u8; GENERATED_KEY_BYTES];
    getrandom::fill(&mut key).map_err(|e| format!("no randomness for a secret: {e}"))?;
    Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
}

/// Keys ready to sign with (parsed once per subscription change, not per request).
#[derive(Clone)]
pub struct Signer {
    keys: Vec<Vec<u8>>,
}

impl Signer {
    /// A signer for these secrets (invalid ones are skipped; the handler refuses them).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Signer {
        Signer { keys: secrets.into_iter().filter_map(|s| secret_key(s).ok()).collect() }
    }

    /// The `webhook-signature` header value: one `v1,<sig>` per key, space separated.
    pub fn sign(&self, id: &str, timestamp_s: u64, body: &[u8]) -> String {
        let ts = timestamp_s.to_string();
        let mut out = String::with_capacity(self.keys.len() * 48);
        for key in &self.keys {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { continue };
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(ts.as_bytes());
            mac.update(b".");
            mac.update(body);
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("v1,");
            out.push_str(&STANDARD.encode(mac.finalize().into_bytes()));
        }
        out
    }
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_parse_and_differ() {
        let a = generate_secret().unwrap();
        let b = generate_secret().unwrap();
        assert!(a.starts_with("whsec_"));
        assert_ne!(a, b);
        assert_eq!(secret_key(&a).unwrap().len(), GENERATED_KEY_BYTES);
    }

    /// The example published with the Standard Webhooks reference libraries.
    #[test]
    fn signs_the_standard_webhooks_example() {
        let signer = Signer::new(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
        let sig =
            signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert!(secret_key("abc").is_err());
        assert!(secret_key("whsec_!!!").is_err());
        assert!(secret_key("whsec_AAAA").is_err(), "3 bytes is too short");
    }

    #[test]
    fn two_secrets_give_two_signatures() {
        let a = format!("whsec_{}", STANDARD.encode([1u8; 32]));
        let b = format!("whsec_{}", STANDARD.encode([2u8; 32]));
        let sig = Signer::new([a.as_str(), b.as_str()]).sign("m", 1, b"x");
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert_ne!(parts[0], parts[1]);
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
    }
}
