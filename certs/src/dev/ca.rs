//! A dev CA for one trust domain: X509-SVIDs for tests and the demo, plus an
//! RSA key that signs JWT-SVIDs. Federation tests use one `DevCa` per domain.

use std::path::Path;
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use super::DevError;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::{Bundle, BundleSet, Identity, Svid};

const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca_key.pem";
const JWT_KEY_FILE: &str = "jwt_key.pem";

/// A CA and its keys. `Debug` prints no key.
pub struct DevCa {
    trust_domain: TrustDomain,
    cert: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
    jwt_key: JwtKey,
}

/// An RS256 signing key with its `kid` (the RFC 7638 thumbprint): signs
/// JWT-SVIDs for the dev CA and access tokens for the dev IdP.
pub struct JwtKey {
    pem: String,
    kid: String,
    alg: Algorithm,
}

impl JwtKey {
    /// A fresh RSA 2048 key for RS256.
    pub fn generate() -> Result<Self, DevError> {
        Self::generate_for(Algorithm::RS256)
    }

    /// A fresh key for `alg`: RSA 2048 (RS256, PS256), P-256 (ES256) or Ed25519 (EdDSA).
    pub fn generate_for(alg: Algorithm) -> Result<Self, DevError> {
        let kind = match alg {
            Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Algorithm::EdDSA => &rcgen::PKCS_ED25519,
            _ => &rcgen::PKCS_RSA_SHA256,
        };
        Self::from_pem_for(KeyPair::generate_for(kind)?.serialize_pem(), alg)
    }

    /// An RSA key in PEM, for RS256.
    pub fn from_pem(pem: String) -> Result<Self, DevError> {
        Self::from_pem_for(pem, Algorithm::RS256)
    }

    fn from_pem_for(pem: String, alg: Algorithm) -> Result<Self, DevError> {
        let kid = public_jwk(&pem, alg)?.thumbprint(ThumbprintHash::SHA256)?;
        Ok(Self { pem, kid, alg })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The private key in PEM, for writing to a dev directory. Never log it.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The public key as a JWK with `kid`, `alg` and `use: sig`.
    pub fn jwk(&self) -> Result<Jwk, DevError> {
        let mut jwk = public_jwk(&self.pem, self.alg)?;
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Ok(jwk)
    }

    /// Signs `claims` with a header naming this key and its algorithm.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, DevError> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        self.sign_with_header(&header, claims)
    }

    /// Signs with a caller-made header (tests craft hostile headers with it).
    pub fn sign_with_header(&self, header: &Header, claims: &serde_json::Value) -> Result<String, DevError> {
        Ok(jsonwebtoken::encode(header, claims, &encoding_key(&self.pem, self.alg)?)?)
    }

    /// The public key in PEM (SubjectPublicKeyInfo).
    pub fn public_pem(&self) -> Result<String, DevError> {
        Ok(KeyPair::from_pem(&self.pem)?.public_key_pem())
    }
}

/// The public JWK (with `alg`) of a private key in PEM. Ed25519's is built
/// from the raw public key: jsonwebtoken only reads PKCS#8 v1 for it.
fn public_jwk(pem: &str, alg: Algorithm) -> Result<Jwk, DevError> {
    if alg != Algorithm::EdDSA {
        return Ok(Jwk::from_encoding_key(&encoding_key(pem, alg)?, alg)?);
    }
    use base64::Engine;
    let raw = KeyPair::from_pem(pem)?.public_key_raw().to_vec();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA"});
    serde_json::from_value(jwk).map_err(|e| DevError::Serve(format!("Ed25519 JWK: {e}")))
}

fn encoding_key(pem: &str, alg: Algorithm) -> Result<EncodingKey, DevError> {
    Ok(match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes())?,
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes())?,
        _ => EncodingKey::from_rsa_pem(pem.as_bytes())?,
    })
}

/// What to put in a leaf: tests use it to make deliberately bad SVIDs.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub uris: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub is_ca: bool,
}

impl LeafSpec {
    /// A valid SVID leaf for `id`, valid from a minute ago for `ttl`.
    pub fn svid(id: &SpiffeId, ttl: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            uris: vec![id.to_string()],
            not_before: now - Duration::from_secs(60),
            not_after: now + ttl,
            is_ca: false,
        }
    }
}

impl DevCa {
    /// A fresh CA (ECDSA P-256) and JWT key (RSA 2048) for `trust_domain`.
    pub fn generate(trust_domain: &TrustDomain) -> Result<Self, DevError> {
        let key = KeyPair::generate()?;
        let cert = ca_params(trust_domain)?.self_signed(&key)?;
        Self::assemble(trust_domain.clone(), cert.pem(), key, JwtKey::generate()?)
    }

    /// Generates a CA and writes it to `dir` (`ca.pem`, `ca_key.pem`, `jwt_key.pem`).
    pub fn init(dir: &Path, trust_domain: &TrustDomain) -> Result<Self, DevError> {
        let ca = Self::generate(trust_domain)?;
        ca.save(dir)?;
        Ok(ca)
    }

    pub fn save(&self, dir: &Path) -> Result<(), DevError> {
        std::fs::create_dir_all(dir).map_err(|source| DevError::Io { path: dir.into(), source })?;
        write_file(&dir.join(CA_FILE), self.cert_pem.as_bytes(), false)?;
        write_file(&dir.join(CA_KEY_FILE), self.key.serialize_pem().as_bytes(), true)?;
        write_file(&dir.join(JWT_KEY_FILE), self.jwt_key.pem.as_bytes(), true)
    }

    /// Loads a CA written by [`Self::init`]; its trust domain comes from the CA's URI SAN.
    pub fn load(dir: &Path) -> Result<Self, DevError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| DevError::Io { path, source })
        };
        let cert_pem = read(CA_FILE)?;
        let key = KeyPair::from_pem(&read(CA_KEY_FILE)?)?;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| DevError::NotACa(dir.into()))?;
        let td = ca_trust_domain(&cert).ok_or_else(|| DevError::NotACa(dir.into()))?;
        Self::assemble(td, cert_pem, key, JwtKey::from_pem(read(JWT_KEY_FILE)?)?)
    }

    fn assemble(trust_domain: TrustDomain, cert_pem: String, key: KeyPair, jwt_key: JwtKey) -> Result<Self, DevError> {
        let cert =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|_| DevError::NotACa("ca.pem".into()))?;
        Ok(Self { trust_domain, cert, cert_pem, key, jwt_key })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificate in PEM (`svid_bundle.pem`).
    pub fn bundle_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn bundle_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn bundle(&self) -> Result<Bundle, DevError> {
        Ok(Bundle::from_der(&self.trust_domain, vec![self.cert.to_vec()])?)
    }

    /// Issues a valid X509-SVID for `id`.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<Svid, DevError> {
        let (cert, key) = self.sign_leaf(&LeafSpec::svid(id, ttl))?;
        Ok(Svid::from_der(vec![cert.to_vec()], key)?)
    }

    /// A complete identity for `id`: a fresh SVID plus this CA's bundle and
    /// those of `federated` (for tests, benches and static dev set-ups).
    pub fn identity(&self, id: &SpiffeId, ttl: Duration, federated: &[&DevCa]) -> Result<Identity, DevError> {
        let mut bundles = BundleSet::default();
        for ca in std::iter::once(self).chain(federated.iter().copied()) {
            bundles.insert(ca.trust_domain.clone(), ca.bundle()?);
        }
        Ok(Identity::new(self.issue(id, ttl)?, bundles)?)
    }

    /// Signs a leaf as `spec` says, valid or not; returns the DER certificate
    /// and its PKCS#8 key.
    pub fn sign_leaf(&self, spec: &LeafSpec) -> Result<(CertificateDer<'static>, Vec<u8>), DevError> {
        let leaf_key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.serial_number = Some(random_serial()?);
        params.not_before = spec.not_before.into();
        params.not_after = spec.not_after.into();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            spec.uris.iter().map(|u| Ia5String::try_from(u.as_str()).map(SanType::URI)).collect::<Result<_, _>>()?;
        params.is_ca = if spec.is_ca { IsCa::Ca(BasicConstraints::Unconstrained) } else { IsCa::ExplicitNoCa };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key)?;
        let cert = params.signed_by(&leaf_key, &issuer)?;
        Ok((cert.der().clone(), leaf_key.serialize_der()))
    }

    /// Signs a JWT-SVID (RS256) for `id` and `audiences`.
    pub fn jwt_svid(&self, id: &SpiffeId, audiences: &[String], ttl: Duration) -> Result<String, DevError> {
        let now = unix_now();
        let claims = serde_json::json!({
            "sub": id.as_str(),
            "aud": audiences,
            "iat": now,
            "exp": now + ttl.as_secs(),
        });
        self.jwt_key.sign(&claims)
    }

    /// The JWT bundle: a JWKS with the public key, `kid` set.
    pub fn jwt_bundle(&self) -> Result<JwkSet, DevError> {
        Ok(JwkSet { keys: vec![self.jwt_key.jwk()?] })
    }

    pub fn jwt_kid(&self) -> &str {
        self.jwt_key.kid()
    }

    /// The JWT-SVID signing key.
    pub fn jwt_key(&self) -> &JwtKey {
        &self.jwt_key
    }
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").field("trust_domain", &self.trust_domain).finish_non_exhaustive()
    }
}

fn ca_params(td: &TrustDomain) -> Result<CertificateParams, DevError> {
    let mut params = CertificateParams::default();
    params.serial_number = Some(random_serial()?);
    params.distinguished_name.push(DnType::CommonName, format!("a2a-sidecar dev CA {td}"));
    params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(td.id_string())?)];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 24 * 3600)).into();
    Ok(params)
}

/// The trust domain named by a CA certificate's URI SAN (`spiffe://td`).
fn ca_trust_domain(cert: &CertificateDer<'_>) -> Option<TrustDomain> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => TrustDomain::new(uri).ok(),
        _ => None,
    })
}

fn random_serial() -> Result<SerialNumber, DevError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| DevError::Serve("no randomness".into()))?;
    bytes[0] &= 0x7f; // positive
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> Result<(), DevError> {
    use std::io::Write;
    let io = |source| DevError::Io { path: path.into(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(contents).map_err(io)
}

/// Writes `svid` as spiffe-helper files in `out`: `svid.pem`, `svid_key.pem`, `svid_bundle.pem`.
pub fn write_svid_files(out: &Path, svid: &Svid, bundle_pem: &str) -> Result<(), DevError> {
    std::fs::create_dir_all(out).map_err(|source| DevError::Io { path: out.into(), source })?;
    let chain: String = svid.chain().iter().map(|c| pem_encode("CERTIFICATE", c)).collect();
    let key = pem_encode("PRIVATE KEY", svid.private_key().secret_der());
    write_file(&out.join("svid.pem"), chain.as_bytes(), false)?;
    write_file(&out.join("svid_key.pem"), key.as_bytes(), true)?;
    write_file(&out.join("svid_bundle.pem"), bundle_pem.as_bytes(), false)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}
