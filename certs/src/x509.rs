//! Reading what a2a-sidecar needs out of X.509 certificates (with `x509-parser`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::OID_X509_EXT_BASIC_CONSTRAINTS;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe_id::{IdError, SpiffeId};

/// Why a certificate is not a usable X509-SVID leaf (X509-SVID spec, 4 and 5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("certificate is not valid DER X.509")]
    Malformed,
    #[error("certificate has no URI SAN")]
    NoUriSan,
    #[error("certificate has {0} URI SANs; an SVID has exactly one")]
    MultipleUriSans(usize),
    #[error("URI SAN is not a SPIFFE ID: {0}")]
    BadId(IdError),
    #[error("leaf certificate is a CA")]
    IsCa,
    #[error("leaf certificate lacks the digitalSignature key usage or has a CA key usage")]
    KeyUsage,
}

/// The facts about an SVID leaf that policy and health need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Serial number as colon-separated hex, as `openssl x509 -serial` prints it.
    pub serial: String,
}

impl LeafInfo {
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now > self.not_after
    }
}

/// Parses an SVID leaf and checks it against the X509-SVID rules.
pub fn parse_leaf(der: &[u8]) -> Result<LeafInfo, SvidError> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|_| SvidError::Malformed)?;
    // One certificate, nothing after it (DER has one encoding per value).
    if !rest.is_empty() {
        return Err(SvidError::Malformed);
    }
    let id = single_spiffe_id(&cert)?;
    // Not `is_ca()` nor `basic_constraints()`: they read a duplicated or an
    // unparsable basicConstraints (say a second one with CA:TRUE) as "not a CA".
    match cert.get_extension_unique(&OID_X509_EXT_BASIC_CONSTRAINTS).map(|e| e.map(|e| e.parsed_extension())) {
        Ok(None) => {}
        Ok(Some(ParsedExtension::BasicConstraints(bc))) if !bc.ca => {}
        Ok(Some(ParsedExtension::BasicConstraints(_))) => return Err(SvidError::IsCa),
        Ok(Some(_)) | Err(_) => return Err(SvidError::Malformed),
    }
    // X509-SVID 4.3: keyUsage present and critical, digitalSignature, no CA bits.
    match cert.key_usage() {
        Ok(Some(ku))
            if ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign() && !ku.value.crl_sign() => {}
        Ok(_) => return Err(SvidError::KeyUsage),
        Err(_) => return Err(SvidError::Malformed),
    }
    let validity = cert.validity();
    Ok(LeafInfo {
        id,
        not_before: to_system_time(validity.not_before.timestamp()),
        not_after: to_system_time(validity.not_after.timestamp()),
        serial: cert.raw_serial_as_string(),
    })
}

fn single_spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = cert.subject_alternative_name().map_err(|_| SvidError::Malformed)?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(Some(*uri)),
            // A URI ([6]) that is not UTF-8 is still a URI SAN: counted, never skipped.
            GeneralName::Invalid(tag, _) if tag.0 == 6 => Some(None),
            _ => None,
        })
        .collect::<Option<Vec<&str>>>()
        .ok_or(SvidError::Malformed)?;
    match uris.as_slice() {
        [] => Err(SvidError::NoUriSan),
        [uri] => uri.parse().map_err(SvidError::BadId),
        more => Err(SvidError::MultipleUriSans(more.len())),
    }
}

/// Splits concatenated DER certificates (the Workload API's bundle encoding).
pub fn split_der_certs(mut der: &[u8]) -> Result<Vec<Vec<u8>>, SvidError> {
    let mut certs = Vec::new();
    while !der.is_empty() {
        let (rest, _) = X509Certificate::from_der(der).map_err(|_| SvidError::Malformed)?;
        let (cert, tail) = der.split_at(der.len() - rest.len());
        certs.push(cert.to_vec());
        der = tail;
    }
    Ok(certs)
}

fn to_system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH,
    }
}

#[cfg(all(test, feature = "dev"))]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use rcgen::{CertificateParams, CustomExtension, IsCa, KeyPair, KeyUsagePurpose, SanType};

    use super::*;

    fn leaf(is_ca: IsCa, extra: Vec<CustomExtension>) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI("spiffe://a.test/x".try_into().unwrap())];
        params.is_ca = is_ca;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.custom_extensions = extra;
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    #[test]
    fn a_duplicated_or_unparsable_basic_constraints_is_refused() {
        assert_eq!(
            parse_leaf(&leaf(IsCa::ExplicitNoCa, vec![])).map(|l| l.id.to_string()),
            Ok("spiffe://a.test/x".into())
        );
        // basicConstraints (2.5.29.19) again, `SEQUENCE { BOOLEAN TRUE }`: CA.
        let ca_again = CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x03, 0x01, 0x01, 0xff]);
        assert_eq!(parse_leaf(&leaf(IsCa::ExplicitNoCa, vec![ca_again])), Err(SvidError::Malformed));
        // An unparsable one.
        let garbage = CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x04, 0x00]);
        assert_eq!(parse_leaf(&leaf(IsCa::NoCa, vec![garbage])), Err(SvidError::Malformed));
    }

    #[test]
    fn a_uri_san_that_is_not_utf8_is_never_skipped() {
        // subjectAltName with a good URI and a second one holding a non-UTF-8 byte.
        let good = b"spiffe://a.test/x";
        let bad = b"spiffe://a.test/y\x80";
        let mut names = vec![0x86, good.len() as u8];
        names.extend_from_slice(good);
        names.extend_from_slice(&[0x86, bad.len() as u8]);
        names.extend_from_slice(bad);
        let mut san = vec![0x30, names.len() as u8];
        san.extend_from_slice(&names);
        let mut params = CertificateParams::default();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.custom_extensions = vec![CustomExtension::from_oid_content(&[2, 5, 29, 17], san)];
        let der = params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec();
        assert_eq!(parse_leaf(&der).map(|l| l.id.to_string()), Err(SvidError::Malformed));
    }

    #[test]
    fn key_usage_must_be_critical() {
        // keyUsage = digitalSignature, as an extension rcgen does not mark critical.
        let ku = CustomExtension::from_oid_content(&[2, 5, 29, 15], vec![0x03, 0x02, 0x07, 0x80]);
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI("spiffe://a.test/x".try_into().unwrap())];
        params.custom_extensions = vec![ku];
        let der = params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec();
        assert_eq!(parse_leaf(&der).map(|l| l.id.to_string()), Err(SvidError::KeyUsage));
    }

    #[test]
    fn bytes_after_the_certificate_are_refused() {
        let mut der = leaf(IsCa::ExplicitNoCa, vec![]);
        assert!(parse_leaf(&der).is_ok());
        der.push(0);
        assert_eq!(parse_leaf(&der).map(|l| l.id.to_string()), Err(SvidError::Malformed));
    }
}
