//! Distinguished-name identities, compared as strongSwan compares them (review I-4): attribute
//! by attribute in order, the values equal whatever ASN.1 string type each side chose (OpenSSL
//! writes UTF8String where strongSwan's `pki` and our encoder write PrintableString), ASCII
//! case-insensitively, and a configured value of `*` matching any value. Comparing DER bytes
//! refused every OpenSSL-issued certificate's subject.

use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// Whether `presented` (the DER Name of an ID_DER_ASN1_DN payload) is the configured DER Name
/// `pattern`. Either failing to parse compares as bytes.
pub(crate) fn matches(pattern: &[u8], presented: &[u8]) -> bool {
    compare(pattern, presented, true)
}

/// Whether two DER Names are the same name, attribute by attribute, whatever string type each
/// was written in; no wildcards. How the peer's ID_DER_ASN1_DN is bound to its certificate's
/// subject: strongSwan sends its configured DN (PrintableString) with a certificate an OpenSSL
/// CA wrote in UTF8String.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    compare(a, b, false)
}

fn compare(pattern: &[u8], presented: &[u8], wildcards: bool) -> bool {
    if pattern == presented {
        return true;
    }
    let (Ok(([], p)), Ok(([], q))) = (X509Name::from_der(pattern), X509Name::from_der(presented))
    else {
        return false;
    };
    let (mut p, mut q) = (p.iter_attributes(), q.iter_attributes());
    loop {
        match (p.next(), q.next()) {
            (None, None) => return true,
            (Some(a), Some(b))
                if a.attr_type() == b.attr_type() && value_matches(a, b, wildcards) => {}
            _ => return false,
        }
    }
}

/// A DER Name as RFC 4514-style text (`C=CH, O=strongSwan, CN=moon`), for logs.
pub(crate) fn text_of(der: &[u8]) -> Option<String> {
    match X509Name::from_der(der) {
        Ok(([], n)) => Some(n.to_string()),
        _ => None,
    }
}

fn value_matches(
    pattern: &AttributeTypeAndValue<'_>,
    presented: &AttributeTypeAndValue<'_>,
    wildcards: bool,
) -> bool {
    match (text(pattern), text(presented)) {
        (Some(p), _) if wildcards && p == "*" => true,
        (Some(p), Some(q)) => p.eq_ignore_ascii_case(&q),
        _ => pattern.as_slice() == presented.as_slice(),
    }
}

/// The value as text, for the string types DNs are written in.
fn text(a: &AttributeTypeAndValue<'_>) -> Option<String> {
    let raw = a.as_slice();
    match a.attr_value().tag() {
        Tag::PrintableString | Tag::Utf8String | Tag::Ia5String | Tag::NumericString => {
            core::str::from_utf8(raw).ok().map(str::to_owned)
        }
        // T61 in practice carries Latin-1
        Tag::TeletexString => Some(raw.iter().map(|b| char::from(*b)).collect()),
        Tag::BmpString => {
            let units: Vec<u16> = raw
                .chunks(2)
                .map(|c| match c {
                    [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
                    _ => None,
                })
                .collect::<Option<_>>()?;
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A DER Name from `(OID last byte under 2.5.4, tag, value)` RDNs.
    fn name(rdns: &[(u8, u8, &[u8])]) -> Vec<u8> {
        fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut v = vec![tag, u8::try_from(body.len()).unwrap()];
            v.extend_from_slice(body);
            v
        }
        let mut seq = Vec::new();
        for (attr, tag, value) in rdns {
            let mut atv = tlv(0x06, &[0x55, 0x04, *attr]);
            atv.extend(tlv(*tag, value));
            seq.extend(tlv(0x31, &tlv(0x30, &atv)));
        }
        tlv(0x30, &seq)
    }

    const C: u8 = 6;
    const O: u8 = 10;
    const CN: u8 = 3;
    const PRINTABLE: u8 = 0x13;
    const UTF8: u8 = 0x0c;
    const BMP: u8 = 0x1e;

    #[test]
    fn the_string_type_does_not_matter() {
        // ours (PrintableString) against OpenSSL's `-subj /C=CH/O=Example/CN=gw` (UTF8String
        // for O and CN)
        let ours = name(&[
            (C, PRINTABLE, b"CH"),
            (O, PRINTABLE, b"Example"),
            (CN, PRINTABLE, b"gw"),
        ]);
        let openssl = name(&[
            (C, PRINTABLE, b"CH"),
            (O, UTF8, b"Example"),
            (CN, UTF8, b"gw"),
        ]);
        assert_ne!(ours, openssl);
        assert!(matches(&ours, &openssl));
        let bmp = name(&[
            (C, PRINTABLE, b"CH"),
            (O, BMP, b"\0E\0x\0a\0m\0p\0l\0e"),
            (CN, UTF8, b"gw"),
        ]);
        assert!(matches(&ours, &bmp));
        // binding an ID to a certificate compares the same way
        assert!(same(&ours, &openssl) && same(&openssl, &ours));
    }

    #[test]
    fn the_same_name_has_no_wildcards() {
        let star = name(&[(C, PRINTABLE, b"CH"), (CN, UTF8, b"*")]);
        let gw = name(&[(C, PRINTABLE, b"CH"), (CN, UTF8, b"gw")]);
        assert!(matches(&star, &gw));
        assert!(!same(&star, &gw) && !same(&gw, &star));
        assert!(same(&star, &star));
    }

    #[test]
    fn case_order_count_and_types_of_attributes() {
        let ours = name(&[(C, PRINTABLE, b"CH"), (CN, PRINTABLE, b"gw")]);
        assert!(matches(
            &ours,
            &name(&[(C, UTF8, b"ch"), (CN, UTF8, b"GW")])
        ));
        assert!(
            !matches(&ours, &name(&[(CN, UTF8, b"gw"), (C, UTF8, b"CH")])),
            "order"
        );
        assert!(!matches(&ours, &name(&[(C, UTF8, b"CH")])), "fewer");
        assert!(
            !matches(
                &ours,
                &name(&[(C, UTF8, b"CH"), (CN, UTF8, b"gw"), (O, UTF8, b"x")])
            ),
            "more"
        );
        assert!(
            !matches(&ours, &name(&[(C, UTF8, b"CH"), (O, UTF8, b"gw")])),
            "type"
        );
        assert!(
            !matches(&ours, &name(&[(C, UTF8, b"CH"), (CN, UTF8, b"gw2")])),
            "value"
        );
    }

    #[test]
    fn a_star_matches_any_value_of_its_attribute() {
        let pattern = name(&[
            (C, PRINTABLE, b"CH"),
            (O, PRINTABLE, b"Example"),
            (CN, PRINTABLE, b"*"),
        ]);
        assert!(matches(
            &pattern,
            &name(&[(C, UTF8, b"CH"), (O, UTF8, b"Example"), (CN, UTF8, b"gw7")])
        ));
        assert!(!matches(
            &pattern,
            &name(&[(C, UTF8, b"CH"), (O, UTF8, b"Other"), (CN, UTF8, b"gw7")])
        ));
        // the presented side's `*` is only a value
        assert!(!matches(
            &name(&[
                (C, PRINTABLE, b"CH"),
                (O, PRINTABLE, b"Example"),
                (CN, PRINTABLE, b"gw")
            ]),
            &pattern
        ));
    }

    #[test]
    fn garbage_compares_as_bytes_and_never_panics() {
        let ours = name(&[(C, PRINTABLE, b"CH")]);
        assert!(!matches(&ours, b"\x30\x05garbage"));
        assert!(!matches(&ours, &[]));
        assert!(matches(b"\x30\x01", b"\x30\x01"));
        let mut trailing = ours.clone();
        trailing.push(0);
        assert!(!matches(&ours, &trailing));
    }
}
