//! Webhook test support: an independent Standard Webhooks signature verifier (the receiving
//! side of the push-subscription tests; the loopback HTTP receiver is in `receiver.rs`).
//!
//! The verifier carries its own SHA-256 (FIPS 180-4), HMAC-SHA256 (RFC 2104) and base64
//! (RFC 4648) on purpose: the broker signs with the RustCrypto `hmac`/`sha2`/`base64` crates,
//! and a test that checked those crates against themselves would pass with the signed content,
//! the key decoding or the encoding all wrong. Unit tests at the bottom pin each primitive to
//! its published test vectors, and the whole scheme to the Standard Webhooks test vector.

// ---------------------------------------------------------------------------------------------
// SHA-256 (FIPS 180-4)
// ---------------------------------------------------------------------------------------------

/// Bytes in one SHA-256 message block; also the HMAC block size.
const SHA256_BLOCK_BYTES: usize = 64;

/// Bytes in a SHA-256 digest.
const SHA256_DIGEST_BYTES: usize = 32;

/// Round constants: the first 32 bits of the fractional parts of the cube roots of the first
/// 64 primes (FIPS 180-4 section 4.2.2).
const SHA256_ROUND_CONSTANTS: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

/// Initial hash value: the first 32 bits of the fractional parts of the square roots of the
/// first 8 primes (FIPS 180-4 section 5.3.3).
const SHA256_INITIAL_STATE: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// Incremental SHA-256, so HMAC can hash its padded key and the message without concatenating.
struct Sha256 {
    state: [u32; 8],
    /// Bytes of the current, not yet compressed block; `block_len` of them are filled.
    block: [u8; SHA256_BLOCK_BYTES],
    block_len: usize,
    message_bytes: u64,
}

impl Sha256 {
    fn new() -> Self {
        Sha256 {
            state: SHA256_INITIAL_STATE,
            block: [0; SHA256_BLOCK_BYTES],
            block_len: 0,
            message_bytes: 0,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        self.message_bytes = self.message_bytes.wrapping_add(data.len() as u64);
        while !data.is_empty() {
            let take = (SHA256_BLOCK_BYTES - self.block_len).min(data.len());
            self.block[self.block_len..self.block_len + take].copy_from_slice(&data[..take]);
            self.block_len += take;
            data = &data[take..];
            if self.block_len == SHA256_BLOCK_BYTES {
                sha256_compress(&mut self.state, &self.block);
                self.block_len = 0;
            }
        }
    }

    /// Pads the message (one 1 bit, zeros, the 64-bit big-endian bit length, to a whole number
    /// of blocks) and returns the big-endian digest.
    fn finish(mut self) -> [u8; SHA256_DIGEST_BYTES] {
        let message_bits = self.message_bytes.wrapping_mul(8);
        self.update(&[0x80]);
        while self.block_len != SHA256_BLOCK_BYTES - 8 {
            self.update(&[0]);
        }
        self.update(&message_bits.to_be_bytes());
        assert_eq!(self.block_len, 0, "padding ends on a block boundary");

        let mut digest = [0; SHA256_DIGEST_BYTES];
        for (out, word) in digest.chunks_exact_mut(4).zip(self.state) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        digest
    }
}

/// One application of the SHA-256 compression function (FIPS 180-4 section 6.2.2).
fn sha256_compress(state: &mut [u32; 8], block: &[u8; SHA256_BLOCK_BYTES]) {
    let mut schedule = [0u32; 64];
    for (word, bytes) in schedule.iter_mut().zip(block.chunks_exact(4)) {
        *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    for t in 16..64 {
        let w15 = schedule[t - 15];
        let w2 = schedule[t - 2];
        let sigma0 = w15.rotate_right(7) ^ w15.rotate_right(18) ^ (w15 >> 3);
        let sigma1 = w2.rotate_right(17) ^ w2.rotate_right(19) ^ (w2 >> 10);
        schedule[t] = schedule[t - 16]
            .wrapping_add(sigma0)
            .wrapping_add(schedule[t - 7])
            .wrapping_add(sigma1);
    }

    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for (constant, word) in SHA256_ROUND_CONSTANTS.iter().zip(schedule) {
        let big_sigma1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let choose = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(big_sigma1)
            .wrapping_add(choose)
            .wrapping_add(*constant)
            .wrapping_add(word);
        let big_sigma0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let majority = (a & b) ^ (a & c) ^ (b & c);
        let t2 = big_sigma0.wrapping_add(majority);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    for (word, add) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *word = word.wrapping_add(add);
    }
}

/// SHA-256 digest of `data`.
pub fn sha256(data: &[u8]) -> [u8; SHA256_DIGEST_BYTES] {
    let mut hasher = Sha256::new();
    hasher.update(data);
    hasher.finish()
}

// ---------------------------------------------------------------------------------------------
// HMAC-SHA256 (RFC 2104)
// ---------------------------------------------------------------------------------------------

/// HMAC-SHA256 of `message` under `key`. Keys longer than a block are hashed first, as RFC 2104
/// requires (RFC 4231 test case 6 covers that path).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; SHA256_DIGEST_BYTES] {
    const INNER_PAD: u8 = 0x36;
    const OUTER_PAD: u8 = 0x5c;

    let mut key_block = [0u8; SHA256_BLOCK_BYTES];
    if key.len() > SHA256_BLOCK_BYTES {
        key_block[..SHA256_DIGEST_BYTES].copy_from_slice(&sha256(key));
    } else {
        key_block[..key.len()].copy_from_slice(key);
    }

    let mut inner = Sha256::new();
    inner.update(&key_block.map(|byte| byte ^ INNER_PAD));
    inner.update(message);
    let inner_digest = inner.finish();

    let mut outer = Sha256::new();
    outer.update(&key_block.map(|byte| byte ^ OUTER_PAD));
    outer.update(&inner_digest);
    outer.finish()
}

/// Compares two byte strings in time that depends only on their lengths (which are public: a
/// MAC's length is fixed), so a verifier does not leak how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // Keeps the optimiser from turning the fold back into an early-exit comparison.
    std::hint::black_box(difference) == 0
}

// ---------------------------------------------------------------------------------------------
// Base64, standard alphabet with padding (RFC 4648 section 4)
// ---------------------------------------------------------------------------------------------

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 of `bytes`, padded with `=` to a multiple of 4 characters.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group = u32::from(chunk[0]) << 16
            | u32::from(chunk.get(1).copied().unwrap_or(0)) << 8
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        // n input bytes carry n + 1 sextets of data; the rest of the quad is padding.
        let data_chars = chunk.len() + 1;
        for (index, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if index < data_chars {
                out.push(char::from(BASE64_ALPHABET[((group >> shift) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_sextet(char: u8) -> Option<u8> {
    match char {
        b'A'..=b'Z' => Some(char - b'A'),
        b'a'..=b'z' => Some(char - b'a' + 26),
        b'0'..=b'9' => Some(char - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// Decodes standard, padded base64. Strict, so a sender's encoding slip shows up as an error
/// rather than as a signature that happens to verify: rejects a length that is not a multiple
/// of 4, any character outside the alphabet (whitespace and the URL-safe `-`/`_` included),
/// padding anywhere but the end of the last quad, more than two `=`, and non-zero bits in the
/// last character that the padding discards (a non-canonical encoding).
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let chars = text.as_bytes();
    if !chars.len().is_multiple_of(4) {
        return Err(format!("base64 length {} is not a multiple of 4", chars.len()));
    }
    let quads = chars.len() / 4;
    let mut out = Vec::with_capacity(quads * 3);
    for (quad_index, quad) in chars.chunks_exact(4).enumerate() {
        let padding = quad.iter().rev().take_while(|&&char| char == b'=').count();
        if padding > 2 {
            return Err(format!("base64 quad {quad_index} has {padding} padding characters"));
        }
        if padding > 0 && quad_index + 1 != quads {
            return Err(format!("base64 padding inside the text, in quad {quad_index}"));
        }
        let mut group: u32 = 0;
        for (offset, &char) in quad[..4 - padding].iter().enumerate() {
            let sextet = base64_sextet(char).ok_or_else(|| {
                format!(
                    "invalid base64 character {:?} at {}",
                    char::from(char),
                    quad_index * 4 + offset
                )
            })?;
            group = group << 6 | u32::from(sextet);
        }
        group <<= 6 * padding;
        let decoded = [(group >> 16) as u8, (group >> 8) as u8, group as u8];
        let data_bytes = 3 - padding;
        if decoded[data_bytes..].iter().any(|&byte| byte != 0) {
            return Err("non-canonical base64: padding discards non-zero bits".to_string());
        }
        out.extend_from_slice(&decoded[..data_bytes]);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Standard Webhooks signatures
// ---------------------------------------------------------------------------------------------

/// Prefix of a serialised symmetric signing secret; base64 of the key bytes follows.
const SECRET_PREFIX: &str = "whsec_";

/// Version tag of an HMAC-SHA256 signature in the `webhook-signature` header.
const SIGNATURE_VERSION: &str = "v1";

/// Key bytes of a `whsec_<base64>` secret. The prefix is required: the broker hands secrets out
/// in that form, and a test that passed a bare key would be testing something else.
fn secret_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| format!("secret does not start with {SECRET_PREFIX:?}"))?;
    let key = base64_decode(encoded).map_err(|e| format!("secret key: {e}"))?;
    if key.is_empty() {
        return Err("secret key is empty".to_string());
    }
    Ok(key)
}

/// The signed content, `{id}.{timestamp}.{body}`.
fn signed_content(id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(id.len() + timestamp.len() + body.len() + 2);
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// The `v1,<base64>` signature of one delivery, for tests that build expected header values.
///
/// Panics if `secret` is not a `whsec_` secret with a valid base64 key.
pub fn sign(secret: &str, id: &str, ts: &str, body: &[u8]) -> String {
    let key = secret_key(secret).unwrap_or_else(|e| panic!("sign: bad secret {secret:?}: {e}"));
    let mac = hmac_sha256(&key, &signed_content(id, ts, body));
    format!("{SIGNATURE_VERSION},{}", base64_encode(&mac))
}

/// Checks a `webhook-signature` header against every `whsec_` secret in `secrets`.
///
/// Returns how many of the header's `v1` signatures match one of the secrets: 1 normally, 2
/// while a rotated-out secret is still in its grace period and both secrets are given. Entries
/// with other versions (such as `v1a`) are skipped, as the spec asks of receivers.
///
/// Errors if no secret is given or one is not a valid `whsec_` secret; if the header is
/// malformed (empty, an entry that is not `version,signature`, or a `v1` signature that is not
/// strict base64 of 32 bytes); if `id` is empty or `timestamp` is not decimal unix seconds; if
/// the header holds no `v1` signature; or if none matches. MACs are compared in constant time.
pub fn verify(
    secrets: &[&str],
    id: &str,
    timestamp: &str,
    signature_header: &str,
    body: &[u8],
) -> Result<usize, String> {
    if secrets.is_empty() {
        return Err("no secrets to verify against".to_string());
    }
    if id.is_empty() {
        return Err("webhook-id is empty".to_string());
    }
    if timestamp.is_empty() || !timestamp.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!("webhook-timestamp {timestamp:?} is not unix seconds"));
    }
    let content = signed_content(id, timestamp, body);
    let expected = secrets
        .iter()
        .map(|secret| Ok(hmac_sha256(&secret_key(secret)?, &content)))
        .collect::<Result<Vec<_>, String>>()?;

    if signature_header.is_empty() {
        return Err("webhook-signature is empty".to_string());
    }
    let mut v1_signatures = 0;
    let mut matches = 0;
    // The spec delimits entries with single spaces; anything else (an empty entry from a doubled
    // or trailing space) is malformed.
    for entry in signature_header.split(' ') {
        let (version, signature) = entry
            .split_once(',')
            .ok_or_else(|| format!("signature entry {entry:?} is not version,signature"))?;
        if version != SIGNATURE_VERSION {
            continue;
        }
        v1_signatures += 1;
        let mac = base64_decode(signature).map_err(|e| format!("signature {entry:?}: {e}"))?;
        if mac.len() != SHA256_DIGEST_BYTES {
            return Err(format!("signature {entry:?} decodes to {} bytes, not 32", mac.len()));
        }
        // No early exit: every secret is tried for every signature.
        let mut matched = false;
        for expected_mac in &expected {
            matched |= constant_time_eq(&mac, expected_mac);
        }
        matches += usize::from(matched);
    }
    if v1_signatures == 0 {
        return Err(format!("no {SIGNATURE_VERSION} signature in {signature_header:?}"));
    }
    if matches == 0 {
        return Err(format!(
            "none of {v1_signatures} {SIGNATURE_VERSION} signature(s) matches any of {} secret(s)",
            secrets.len()
        ));
    }
    Ok(matches)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    // --- SHA-256: FIPS 180-2 appendix B examples ---

    #[test]
    fn sha256_of_the_empty_string() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn sha256_of_abc() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn sha256_of_the_448_bit_two_block_message() {
        // 56 bytes: the length field no longer fits in the first block.
        assert_eq!(
            hex(&sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[test]
    fn sha256_of_a_million_a() {
        assert_eq!(
            hex(&sha256(&vec![b'a'; 1_000_000])),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn sha256_does_not_depend_on_how_the_input_is_split() {
        let data: Vec<u8> = (0..200u8).map(|i| i.wrapping_mul(37)).collect();
        for len in 0..data.len() {
            let whole = sha256(&data[..len]);
            for split in 0..=len {
                let mut hasher = Sha256::new();
                hasher.update(&data[..split]);
                hasher.update(&data[split..len]);
                assert_eq!(hasher.finish(), whole, "len {len}, split at {split}");
            }
        }
    }

    // --- HMAC-SHA256: RFC 4231 ---

    #[test]
    fn hmac_sha256_rfc4231_case_1() {
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }

    #[test]
    fn hmac_sha256_rfc4231_case_2() {
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_sha256_rfc4231_case_6_hashes_a_key_longer_than_a_block() {
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    // --- base64 ---

    #[test]
    fn base64_matches_the_rfc4648_examples_both_ways() {
        let cases: [(&[u8], &str); 7] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (bytes, text) in cases {
            assert_eq!(base64_encode(bytes), text);
            assert_eq!(base64_decode(text).unwrap(), bytes, "{text}");
        }
    }

    #[test]
    fn base64_round_trips_every_byte_and_length() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64_encode(&all)).unwrap(), all);
        for len in 0..=67 {
            let data: Vec<u8> = (0..len).map(|i| (i * 101 + 7) as u8).collect();
            let text = base64_encode(&data);
            assert_eq!(text.len() % 4, 0);
            assert_eq!(base64_decode(&text).unwrap(), data, "len {len}");
        }
        // All 62nd/63rd characters appear: 0xfb 0xff 0xbf encodes to "+/+/".
        assert_eq!(base64_encode(&[0xfb, 0xff, 0xbf]), "+/+/");
    }

    #[test]
    fn base64_decode_rejects_bad_input() {
        for bad in [
            "Zg",       // padding missing
            "Zg=",      // length not a multiple of 4
            "Z===",     // three padding characters
            "====",     // nothing but padding
            "Zg==Zg==", // padding before the end
            "Z=g=",     // padding inside a quad
            "Zh==",     // non-canonical: discarded bits not zero
            "Zm9=",     // non-canonical with one padding character
            "Zm-v",     // URL-safe alphabet
            "Zm_v",     // URL-safe alphabet
            "Zm9 ",     // whitespace
            "Zm9v\n",   // trailing newline
            "Zm\u{e9}", // non-ASCII
        ] {
            assert!(base64_decode(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    // --- Standard Webhooks ---

    pub(crate) const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: &str = "1614265330";
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;

    /// The "sign function works" vector of the reference libraries in
    /// github.com/standard-webhooks/standard-webhooks (e.g. libraries/javascript/src/webhook.test.ts).
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    const OTHER_SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn sign_reproduces_the_standard_webhooks_test_vector() {
        assert_eq!(sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY), SPEC_SIGNATURE);
    }

    #[test]
    fn verify_accepts_the_standard_webhooks_test_vector() {
        assert_eq!(
            verify(&[SPEC_SECRET], SPEC_ID, SPEC_TIMESTAMP, SPEC_SIGNATURE, SPEC_BODY),
            Ok(1)
        );
    }

    #[test]
    fn verify_rejects_any_change_to_the_signed_content() {
        let check =
            |id, timestamp, body| verify(&[SPEC_SECRET], id, timestamp, SPEC_SIGNATURE, body);
        assert!(check("msg_p5jXN8AQM9LWM0D4loKWxJeK", SPEC_TIMESTAMP, SPEC_BODY).is_err());
        assert!(check(SPEC_ID, "1614265331", SPEC_BODY).is_err());
        assert!(check(SPEC_ID, SPEC_TIMESTAMP, br#"{"test": 2432232315}"#).is_err());
        assert!(check(SPEC_ID, SPEC_TIMESTAMP, br#"{"test":2432232314}"#).is_err());
        assert!(
            verify(&[OTHER_SECRET], SPEC_ID, SPEC_TIMESTAMP, SPEC_SIGNATURE, SPEC_BODY).is_err()
        );
    }

    #[test]
    fn verify_counts_both_signatures_during_a_rotation() {
        let old = sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
        let new = sign(OTHER_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
        let header = format!("{new} {old}");
        let check = |secrets: &[&str]| verify(secrets, SPEC_ID, SPEC_TIMESTAMP, &header, SPEC_BODY);
        assert_eq!(check(&[OTHER_SECRET, SPEC_SECRET]), Ok(2));
        assert_eq!(check(&[SPEC_SECRET, OTHER_SECRET]), Ok(2));
        assert_eq!(check(&[OTHER_SECRET]), Ok(1));
        assert_eq!(check(&[SPEC_SECRET]), Ok(1));
        assert!(check(&["whsec_c2VjcmV0IG5vYm9keSB1c2Vk"]).is_err());
    }

    #[test]
    fn verify_skips_other_versions_and_ignores_wrong_v1_signatures() {
        let header = format!("v1a,c29tZXRoaW5nIGVsc2U= {SPEC_SIGNATURE} v2,eA==");
        assert_eq!(verify(&[SPEC_SECRET], SPEC_ID, SPEC_TIMESTAMP, &header, SPEC_BODY), Ok(1));
        let wrong = sign(OTHER_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
        let header = format!("{wrong} {SPEC_SIGNATURE}");
        assert_eq!(verify(&[SPEC_SECRET], SPEC_ID, SPEC_TIMESTAMP, &header, SPEC_BODY), Ok(1));
    }

    #[test]
    fn verify_rejects_malformed_headers_and_arguments() {
        let check = |secrets: &[&str], id, timestamp, header: &str| {
            verify(secrets, id, timestamp, header, SPEC_BODY)
        };
        let (id, ts, sig) = (SPEC_ID, SPEC_TIMESTAMP, SPEC_SIGNATURE);
        let secrets = [SPEC_SECRET];
        for header in [
            "",
            "v1",
            "v1,",
            "v1,g0hM9SsE",                                       // truncated
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE",    // padding stripped
            "v1,g0hM9SsE-OTPJTGt_tmIKtSyZlE3uFJELVlNIOLJ1OE=",   // URL-safe alphabet
            "v1a,c29tZXRoaW5nIGVsc2U=",                          // no v1 at all
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=  ", // trailing spaces
        ] {
            assert!(check(&secrets, id, ts, header).is_err(), "{header:?} should be rejected");
        }
        assert!(check(&[], id, ts, sig).is_err(), "no secrets");
        assert!(check(&["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], id, ts, sig).is_err(), "no prefix");
        assert!(check(&["whsec_not base64"], id, ts, sig).is_err(), "bad key");
        assert!(check(&secrets, "", ts, sig).is_err(), "empty id");
        assert!(check(&secrets, id, "", sig).is_err(), "empty timestamp");
        assert!(check(&secrets, id, "1614265330.5", sig).is_err(), "fractional timestamp");
    }

    #[test]
    fn constant_time_eq_compares_contents_and_lengths() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
