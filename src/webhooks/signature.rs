//! Signing deliveries: our `X-Signature` (`t=<unix>,v1=<hex>`) and the Standard Webhooks headers
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`), one signature per key
//! version in use so receivers keep verifying while the key is rotated.
use crate::secrets::SecretVersion;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The signing secret one subscription gets from one version of the webhook key. Derived, so a
/// receiver holds only its own secret and cannot sign for another receiver.
pub fn subscription_secret(key: &SecretVersion, subscription_id: &str) -> [u8; 32] {
    let raw = key.value.expose();
    let key_bytes = match B64.decode(raw) {
        Ok(b) if b.len() >= 16 => b,
        _ => raw.as_bytes().to_vec(),
    };
    hmac(&key_bytes, &[b"customer360 webhook secret:", subscription_id.as_bytes()])
}

/// The secret as receivers configure it (Standard Webhooks form).
pub fn whsec(secret: &[u8]) -> String {
    format!("whsec_{}", B64.encode(secret))
}

/// `X-Signature`: `t=<t>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with one `v1` per secret.
pub fn x_signature(secrets: &[[u8; 32]], timestamp: i64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    let mut out = format!("t={t}");
    for s in secrets {
        out.push_str(",v1=");
        out.push_str(&hex::encode(hmac(s, &[t.as_bytes(), b".", body])));
    }
    out
}

/// `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256 of "{id}.{t}.{body}">`.
pub fn standard_signature(secrets: &[impl AsRef<[u8]>], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    secrets
        .iter()
        .map(|s| format!("v1,{}", B64.encode(hmac(s.as_ref(), &[msg_id.as_bytes(), b".", t.as_bytes(), b".", body]))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Every header that identifies and signs one attempt.
pub fn headers(secrets: &[[u8; 32]], event_id: &str, event_type: &str, timestamp: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    vec![
        ("x-event-id", event_id.to_string()),
        ("x-event-type", event_type.to_string()),
        ("x-signature", x_signature(secrets, timestamp, body)),
        ("webhook-id", event_id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", standard_signature(secrets, event_id, timestamp, body)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::SecretString;

    #[test]
    fn standard_webhooks_reference_vector() {
        let secret = B64.decode("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let sig = standard_signature(
            &[secret],
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn x_signature_has_one_v1_per_key() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let one = x_signature(&[a], 10, b"{}");
        let two = x_signature(&[a, b], 10, b"{}");
        assert!(two.starts_with(&one));
        assert_eq!(two.matches(",v1=").count(), 2);
        assert_eq!(one, format!("t=10,v1={}", hex::encode(hmac(&a, &[b"10.{}"]))));
    }

    #[test]
    fn secrets_differ_per_subscription_and_key_version() {
        let v = |val: &str| SecretVersion { version: "1".into(), value: SecretString::new(val), created: chrono::Utc::now() };
        let k1 = v("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        let k2 = v("BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=");
        assert_ne!(subscription_secret(&k1, "whk_a"), subscription_secret(&k1, "whk_b"));
        assert_ne!(subscription_secret(&k1, "whk_a"), subscription_secret(&k2, "whk_a"));
        assert!(whsec(&subscription_secret(&k1, "whk_a")).starts_with("whsec_"));
    }
}
