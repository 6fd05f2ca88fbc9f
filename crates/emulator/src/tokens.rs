//! Tokens: the access tokens the emulated Entra ID and IMDS issue (signed JWTs that Key Vault checks),
//! and the service-account tokens of an emulated Kubernetes issuer for workload identity.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::{Deserialize, Serialize};

/// Key Vault's resource id (the audience of its tokens).
pub const KEYVAULT_RESOURCE: &str = "https://vault.azure.net";
/// Azure Storage's resource (the audience of queue tokens).
pub const STORAGE_RESOURCE: &str = "https://storage.azure.com";

/// Claims of an access token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Audience: `https://vault.azure.net`.
    pub aud: String,
    /// Issuer: `https://sts.windows.net/<tenant>/`.
    pub iss: String,
    /// Tenant.
    pub tid: String,
    /// Object id of the principal.
    pub oid: String,
    /// Application (client) id.
    pub appid: String,
    /// Subject.
    pub sub: String,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Expiry.
    pub exp: i64,
}

/// An ES256 signing key with its verifier.
pub struct Signer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Public key, SPKI PEM.
    pub public_pem: String,
    kid: String,
}

impl Signer {
    /// A fresh P-256 key.
    pub fn generate(kid: &str) -> Self {
        let kp = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key generation");
        let public_pem = kp.public_key_pem();
        Self {
            encoding: EncodingKey::from_ec_der(&kp.serialize_der()),
            decoding: DecodingKey::from_ec_pem(public_pem.as_bytes()).expect("own public key"),
            public_pem,
            kid: kid.to_string(),
        }
    }

    /// Signs `claims`.
    pub fn sign<C: Serialize>(&self, claims: &C) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing cannot fail")
    }

    /// Verifies signature and expiry; audience is checked by the caller.
    pub fn verify<C: for<'de> Deserialize<'de>>(&self, token: &str) -> Result<C, jsonwebtoken::errors::Error> {
        let mut v = Validation::new(Algorithm::ES256);
        v.validate_aud = false;
        v.leeway = 0;
        jsonwebtoken::decode::<C>(token, &self.decoding, &v).map(|d| d.claims)
    }
}

/// Claims of a Kubernetes service-account token (projected, audience-bound).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceAccountClaims {
    /// Issuer URL of the cluster.
    pub iss: String,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub sub: String,
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry.
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
}

/// A token issuer that was registered with Entra ID for workload identity: either one the emulator
/// holds the key of (it can mint tokens), or an external one known by its public key.
pub struct Issuer {
    /// Issuer URL.
    pub url: String,
    /// Verification keys with their `kid` (none: any token's `kid`) and algorithm.
    keys: Vec<(Option<String>, DecodingKey, Algorithm)>,
    signer: Option<Signer>,
}

impl Issuer {
    /// An issuer whose key the emulator generates, so tests can mint service-account tokens.
    pub fn generated(url: &str) -> Self {
        let signer = Signer::generate("sa-key");
        let decoding = DecodingKey::from_ec_pem(signer.public_pem.as_bytes()).expect("own key");
        Self { url: url.into(), keys: vec![(None, decoding, Algorithm::ES256)], signer: Some(signer) }
    }

    /// An external issuer known by its public key (SPKI PEM, RSA or EC P-256).
    pub fn external(url: &str, public_pem: &str) -> Result<Self, String> {
        if let Ok(d) = DecodingKey::from_rsa_pem(public_pem.as_bytes()) {
            return Ok(Self { url: url.into(), keys: vec![(None, d, Algorithm::RS256)], signer: None });
        }
        let d = DecodingKey::from_ec_pem(public_pem.as_bytes()).map_err(|e| format!("issuer {url}: {e}"))?;
        Ok(Self { url: url.into(), keys: vec![(None, d, Algorithm::ES256)], signer: None })
    }

    /// An external issuer known by its JWKS document (what a cluster serves at `/openid/v1/jwks` and
    /// Entra ID fetches from the issuer's discovery document): tokens are verified with the key their
    /// `kid` names, as Entra does.
    pub fn from_jwks(url: &str, jwks: &str) -> Result<Self, String> {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(jwks).map_err(|e| format!("issuer {url}: invalid JWKS: {e}"))?;
        let mut keys = Vec::new();
        for k in &set.keys {
            let alg = match &k.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                _ => continue,
            };
            let d = DecodingKey::from_jwk(k).map_err(|e| format!("issuer {url}: JWKS key: {e}"))?;
            keys.push((k.common.key_id.clone(), d, alg));
        }
        if keys.is_empty() {
            return Err(format!("issuer {url}: the JWKS holds no RSA or EC key"));
        }
        Ok(Self { url: url.into(), keys, signer: None })
    }

    /// Mints a service-account token for `namespace/name` with `audience`, valid for `ttl_secs`
    /// (negative: already expired, for tests of the expiry path).
    pub fn mint(&self, namespace: &str, name: &str, audience: &str, ttl_secs: i64) -> Option<String> {
        let now = crate::model::now();
        let claims = ServiceAccountClaims {
            iss: self.url.clone(),
            sub: format!("system:serviceaccount:{namespace}:{name}"),
            aud: vec![audience.to_string()],
            exp: now + ttl_secs,
            iat: now.min(now + ttl_secs) - 1,
            nbf: now.min(now + ttl_secs) - 1,
        };
        self.signer.as_ref().map(|s| s.sign(&claims))
    }

    /// Verifies the signature (not the expiry: the caller reports that with Entra's own code).
    pub fn verify(&self, token: &str) -> Result<ServiceAccountClaims, String> {
        let kid = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?.kid;
        let mut last = "no key of the issuer matches the token's kid".to_string();
        for (key_id, key, alg) in &self.keys {
            if key_id.is_some() && kid.is_some() && key_id != &kid {
                continue;
            }
            let mut v = Validation::new(*alg);
            v.validate_aud = false;
            v.validate_exp = false;
            v.required_spec_claims.clear();
            match jsonwebtoken::decode::<ServiceAccountClaims>(token, key, &v) {
                Ok(d) => return Ok(d.claims),
                Err(e) => last = e.to_string(),
            }
        }
        Err(last)
    }
}

/// Reads the claims of a JWT without verifying it (to find its issuer first).
pub fn peek_claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    /// A JWKS holding `kp`'s public key under `kid`, as a cluster serves it.
    fn jwks_of(kp: &KeyPair, kid: &str) -> String {
        let raw = kp.public_key_raw(); // 0x04 || x || y
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        serde_json::json!({ "keys": [{ "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]) }] })
        .to_string()
    }

    fn sign(kp: &KeyPair, kid: &str, iss: &str) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let now = crate::model::now();
        let claims = ServiceAccountClaims {
            iss: iss.into(),
            sub: "system:serviceaccount:e2e:app".into(),
            aud: vec!["api://AzureADTokenExchange".into()],
            exp: now + 600,
            iat: now,
            nbf: now,
        };
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(&kp.serialize_der())).unwrap()
    }

    #[test]
    fn jwks_issuer_verifies_with_the_key_the_token_names() {
        let cluster = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let issuer = Issuer::from_jwks("https://kubernetes.default.svc", &jwks_of(&cluster, "k1")).unwrap();
        let claims = issuer.verify(&sign(&cluster, "k1", "https://kubernetes.default.svc")).unwrap();
        assert_eq!(claims.sub, "system:serviceaccount:e2e:app");
        // A token signed by another key, even under the same kid, is refused; so is an unknown kid.
        assert!(issuer.verify(&sign(&other, "k1", "https://kubernetes.default.svc")).is_err());
        assert!(issuer.verify(&sign(&cluster, "k2", "https://kubernetes.default.svc")).is_err());
        // It cannot mint: it holds no private key.
        assert!(issuer.mint("e2e", "app", "api://AzureADTokenExchange", 60).is_none());
    }

    #[test]
    fn jwks_without_usable_keys_is_refused() {
        assert!(Issuer::from_jwks("https://x", r#"{"keys":[]}"#).err().unwrap().contains("no RSA or EC key"));
        assert!(Issuer::from_jwks("https://x", "not json").err().unwrap().contains("invalid JWKS"));
    }
}
