//! strongSwan-style proposal strings (`aes256gcm16-prfsha384-x25519`, `aes256-sha256-modp2048`,
//! `aes256gcm16-x25519-esn`), parsed into typed proposals, printed canonically, and the
//! responder's selection among the initiator's offers (RFC 7296 §2.7).
//!
//! Weak algorithms (3DES, DES, MD5, SHA-1, MODP768/1024/1536, the RFC 5114 groups, NULL) are
//! refused with an error that names the token, distinct from an unknown token.

use core::fmt;
use core::str::FromStr;

use crate::crypto::alg::{Encr, Esn, Integ, KeGroup, Prf};

/// Why a proposal string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposalError {
    /// The string (or a token in it) was empty.
    #[error("empty proposal")]
    Empty,
    /// A token that names no algorithm we know.
    #[error("unknown algorithm '{0}'")]
    UnknownToken(String),
    /// A token that names an algorithm refused as weak.
    #[error("algorithm '{0}' is refused as weak")]
    Weak(String),
    /// A token that is valid but not in this kind of proposal (e.g. a PRF in ESP).
    #[error("'{0}' is not allowed in {1} proposals")]
    NotAllowed(String, &'static str),
    /// A mandatory transform type is missing.
    #[error("{0}")]
    Missing(&'static str),
    /// AEAD and non-AEAD ciphers, or an AEAD with an integrity algorithm, in one proposal.
    #[error("{0}")]
    Inconsistent(&'static str),
}

impl ProposalError {
    /// A fixed label for metrics and status reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            ProposalError::Empty => "empty",
            ProposalError::UnknownToken(_) => "unknown_algorithm",
            ProposalError::Weak(_) => "weak_algorithm",
            ProposalError::NotAllowed(..) => "not_allowed",
            ProposalError::Missing(_) => "missing_transform",
            ProposalError::Inconsistent(_) => "inconsistent",
        }
    }
}

/// An IKE SA proposal: acceptable algorithms per transform type, in preference order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IkeProposal {
    /// Encryption algorithms (all AEAD or all non-AEAD).
    pub encr: Vec<Encr>,
    /// Pseudo-random functions.
    pub prf: Vec<Prf>,
    /// Integrity algorithms (empty for AEAD).
    pub integ: Vec<Integ>,
    /// Key exchange methods.
    pub ke: Vec<KeGroup>,
}

/// An ESP (CHILD SA) proposal. A non-empty `ke` means PFS on rekey (and CREATE_CHILD_SA).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EspProposal {
    /// Encryption algorithms (all AEAD or all non-AEAD).
    pub encr: Vec<Encr>,
    /// Integrity algorithms (empty for AEAD).
    pub integ: Vec<Integ>,
    /// Key exchange methods for PFS; empty for none.
    pub ke: Vec<KeGroup>,
    /// Extended sequence number choices.
    pub esn: Vec<Esn>,
}

enum Token {
    Encr(Encr),
    Prf(Prf),
    Integ(Integ),
    Ke(KeGroup),
    Esn(Esn),
}

fn token(t: &str) -> Result<Token, ProposalError> {
    let lower = t.to_ascii_lowercase();
    Ok(match lower.as_str() {
        "aes128" => Token::Encr(Encr::AesCbc128),
        "aes256" => Token::Encr(Encr::AesCbc256),
        "aes128gcm16" | "aes128gcm128" => Token::Encr(Encr::AesGcm16_128),
        "aes256gcm16" | "aes256gcm128" => Token::Encr(Encr::AesGcm16_256),
        "sha256" | "sha2_256" => Token::Integ(Integ::HmacSha256_128),
        "sha384" | "sha2_384" => Token::Integ(Integ::HmacSha384_192),
        "sha512" | "sha2_512" => Token::Integ(Integ::HmacSha512_256),
        "prfsha256" => Token::Prf(Prf::HmacSha256),
        "prfsha384" => Token::Prf(Prf::HmacSha384),
        "prfsha512" => Token::Prf(Prf::HmacSha512),
        "modp2048" => Token::Ke(KeGroup::Modp2048),
        "modp3072" => Token::Ke(KeGroup::Modp3072),
        "modp4096" => Token::Ke(KeGroup::Modp4096),
        "ecp256" => Token::Ke(KeGroup::Ecp256),
        "ecp384" => Token::Ke(KeGroup::Ecp384),
        "ecp521" => Token::Ke(KeGroup::Ecp521),
        "x25519" | "curve25519" => Token::Ke(KeGroup::Curve25519),
        "esn" => Token::Esn(Esn::Yes),
        "noesn" => Token::Esn(Esn::No),
        "" => return Err(ProposalError::Empty),
        w if WEAK.contains(&w) => return Err(ProposalError::Weak(t.to_owned())),
        _ => return Err(ProposalError::UnknownToken(t.to_owned())),
    })
}

/// strongSwan keywords for algorithms we refuse as weak or obsolete.
const WEAK: &[&str] = &[
    "des",
    "3des",
    "des_iv64",
    "cast128",
    "blowfish",
    "null",
    "md5",
    "md5_128",
    "sha",
    "sha1",
    "sha1_160",
    "prfmd5",
    "prfsha1",
    "modp768",
    "modp1024",
    "modp1536",
    "modp1024s160",
    "modp2048s224",
    "modp2048s256",
    "ecp192",
    "ecp224",
];

fn push<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

fn check_aead(encr: &[Encr], integ: &[Integ]) -> Result<bool, ProposalError> {
    let aead = encr.iter().filter(|e| e.is_aead()).count();
    if aead != 0 && aead != encr.len() {
        return Err(ProposalError::Inconsistent(
            "AEAD and non-AEAD ciphers cannot share a proposal; write two proposals",
        ));
    }
    let aead = aead != 0;
    if aead && !integ.is_empty() {
        return Err(ProposalError::Inconsistent(
            "an AEAD cipher takes no integrity algorithm",
        ));
    }
    if !aead && integ.is_empty() {
        return Err(ProposalError::Missing(
            "a non-AEAD cipher needs an integrity algorithm",
        ));
    }
    Ok(aead)
}

impl FromStr for IkeProposal {
    type Err = ProposalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut p = IkeProposal {
            encr: Vec::new(),
            prf: Vec::new(),
            integ: Vec::new(),
            ke: Vec::new(),
        };
        for t in s.trim().split('-') {
            match token(t)? {
                Token::Encr(e) => push(&mut p.encr, e),
                Token::Prf(x) => push(&mut p.prf, x),
                Token::Integ(i) => push(&mut p.integ, i),
                Token::Ke(g) => push(&mut p.ke, g),
                Token::Esn(_) => return Err(ProposalError::NotAllowed(t.to_owned(), "IKE")),
            }
        }
        if p.encr.is_empty() {
            return Err(ProposalError::Missing(
                "an encryption algorithm is required",
            ));
        }
        check_aead(&p.encr, &p.integ)?;
        if p.prf.is_empty() {
            // strongSwan: without an explicit PRF, the integrity algorithms' hashes are used.
            for i in &p.integ {
                push(&mut p.prf, i.matching_prf());
            }
            if p.prf.is_empty() {
                return Err(ProposalError::Missing(
                    "an AEAD IKE proposal needs a PRF (e.g. prfsha256)",
                ));
            }
        }
        if p.ke.is_empty() {
            return Err(ProposalError::Missing(
                "an IKE proposal needs a key exchange method (e.g. x25519)",
            ));
        }
        Ok(p)
    }
}

impl FromStr for EspProposal {
    type Err = ProposalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut p = EspProposal {
            encr: Vec::new(),
            integ: Vec::new(),
            ke: Vec::new(),
            esn: Vec::new(),
        };
        for t in s.trim().split('-') {
            match token(t)? {
                Token::Encr(e) => push(&mut p.encr, e),
                Token::Integ(i) => push(&mut p.integ, i),
                Token::Ke(g) => push(&mut p.ke, g),
                Token::Esn(e) => push(&mut p.esn, e),
                Token::Prf(_) => return Err(ProposalError::NotAllowed(t.to_owned(), "ESP")),
            }
        }
        if p.encr.is_empty() {
            return Err(ProposalError::Missing(
                "an encryption algorithm is required",
            ));
        }
        check_aead(&p.encr, &p.integ)?;
        if p.esn.is_empty() {
            p.esn.push(Esn::No);
        }
        Ok(p)
    }
}

/// The canonical keyword for each algorithm (what [`fmt::Display`] prints).
pub trait Keyword {
    /// The strongSwan keyword.
    fn keyword(&self) -> &'static str;
}

impl Keyword for Encr {
    fn keyword(&self) -> &'static str {
        match self {
            Encr::AesGcm16_128 => "aes128gcm16",
            Encr::AesGcm16_256 => "aes256gcm16",
            Encr::AesCbc128 => "aes128",
            Encr::AesCbc256 => "aes256",
        }
    }
}

impl Keyword for Prf {
    fn keyword(&self) -> &'static str {
        match self {
            Prf::HmacSha256 => "prfsha256",
            Prf::HmacSha384 => "prfsha384",
            Prf::HmacSha512 => "prfsha512",
        }
    }
}

impl Keyword for Integ {
    fn keyword(&self) -> &'static str {
        match self {
            Integ::HmacSha256_128 => "sha256",
            Integ::HmacSha384_192 => "sha384",
            Integ::HmacSha512_256 => "sha512",
        }
    }
}

impl Keyword for KeGroup {
    fn keyword(&self) -> &'static str {
        match self {
            KeGroup::Modp2048 => "modp2048",
            KeGroup::Modp3072 => "modp3072",
            KeGroup::Modp4096 => "modp4096",
            KeGroup::Ecp256 => "ecp256",
            KeGroup::Ecp384 => "ecp384",
            KeGroup::Ecp521 => "ecp521",
            KeGroup::Curve25519 => "x25519",
        }
    }
}

impl Keyword for Esn {
    fn keyword(&self) -> &'static str {
        match self {
            Esn::Yes => "esn",
            Esn::No => "noesn",
        }
    }
}

fn write_all<T: Keyword>(f: &mut fmt::Formatter<'_>, first: &mut bool, xs: &[T]) -> fmt::Result {
    for x in xs {
        if !*first {
            f.write_str("-")?;
        }
        *first = false;
        f.write_str(x.keyword())?;
    }
    Ok(())
}

impl fmt::Display for IkeProposal {
    /// Canonical form: ciphers, integrity, PRFs, key exchanges; PRFs always explicit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        write_all(f, &mut first, &self.encr)?;
        write_all(f, &mut first, &self.integ)?;
        write_all(f, &mut first, &self.prf)?;
        write_all(f, &mut first, &self.ke)
    }
}

impl fmt::Display for EspProposal {
    /// Canonical form: ciphers, integrity, key exchanges, then ESN unless it is the default
    /// (`noesn` alone).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        write_all(f, &mut first, &self.encr)?;
        write_all(f, &mut first, &self.integ)?;
        write_all(f, &mut first, &self.ke)?;
        if self.esn.as_slice() != [Esn::No] {
            write_all(f, &mut first, &self.esn)?;
        }
        Ok(())
    }
}

/// Parses a list of IKE proposal strings, stopping at the first error.
///
/// # Errors
/// The first string's [`ProposalError`].
pub fn parse_ike_list<S: AsRef<str>>(list: &[S]) -> Result<Vec<IkeProposal>, ProposalError> {
    list.iter().map(|s| s.as_ref().parse()).collect()
}

/// Parses a list of ESP proposal strings, stopping at the first error.
///
/// # Errors
/// The first string's [`ProposalError`].
pub fn parse_esp_list<S: AsRef<str>>(list: &[S]) -> Result<Vec<EspProposal>, ProposalError> {
    list.iter().map(|s| s.as_ref().parse()).collect()
}

/// The default IKE proposals: `aes256gcm16-prfsha384-x25519`, `aes256gcm16-prfsha256-ecp256`,
/// and a non-AEAD fallback `aes256-sha256-modp3072` for peers without GCM.
pub fn default_ike() -> Vec<IkeProposal> {
    vec![
        IkeProposal {
            encr: vec![Encr::AesGcm16_256],
            prf: vec![Prf::HmacSha384],
            integ: vec![],
            ke: vec![KeGroup::Curve25519],
        },
        IkeProposal {
            encr: vec![Encr::AesGcm16_256],
            prf: vec![Prf::HmacSha256],
            integ: vec![],
            ke: vec![KeGroup::Ecp256],
        },
        IkeProposal {
            encr: vec![Encr::AesCbc256],
            prf: vec![Prf::HmacSha256],
            integ: vec![Integ::HmacSha256_128],
            ke: vec![KeGroup::Modp3072],
        },
    ]
}

/// The default ESP proposals: `aes256gcm16` and `aes128gcm16` (no PFS), then
/// `aes256-sha256`.
pub fn default_esp() -> Vec<EspProposal> {
    let aead = |e| EspProposal {
        encr: vec![e],
        integ: vec![],
        ke: vec![],
        esn: vec![Esn::No],
    };
    vec![
        aead(Encr::AesGcm16_256),
        aead(Encr::AesGcm16_128),
        EspProposal {
            encr: vec![Encr::AesCbc256],
            integ: vec![Integ::HmacSha256_128],
            ke: vec![],
            esn: vec![Esn::No],
        },
    ]
}

/// The transforms chosen for an IKE SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeChoice {
    /// Encryption.
    pub encr: Encr,
    /// PRF.
    pub prf: Prf,
    /// Integrity (`None` with an AEAD).
    pub integ: Option<Integ>,
    /// Key exchange method.
    pub ke: KeGroup,
}

/// The transforms chosen for a CHILD SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspChoice {
    /// Encryption.
    pub encr: Encr,
    /// Integrity (`None` with an AEAD).
    pub integ: Option<Integ>,
    /// PFS key exchange (`None` without PFS).
    pub ke: Option<KeGroup>,
    /// Extended sequence numbers.
    pub esn: Esn,
}

/// The first of `ours` (in our order) that `theirs` also lists.
fn pick<T: Copy + PartialEq>(ours: &[T], theirs: &[T]) -> Option<T> {
    ours.iter().copied().find(|x| theirs.contains(x))
}

/// Like [`pick`] but an empty list on both sides is a match (the type is absent).
fn pick_optional<T: Copy + PartialEq>(ours: &[T], theirs: &[T]) -> Option<Option<T>> {
    match (ours.is_empty(), theirs.is_empty()) {
        (true, true) => Some(None),
        (false, false) => pick(ours, theirs).map(Some),
        _ => None,
    }
}

/// The responder's choice among the initiator's IKE proposals (RFC 7296 §2.7): returns the
/// index into `theirs` of the accepted proposal (the codec answers with its proposal number)
/// and the transforms.
///
/// Like strongSwan's default, **our configured order wins**: we walk our proposals in order
/// and, for each, their proposals in order, and within each transform type take our most
/// preferred algorithm that they offer. `theirs` holds the initiator's offers already mapped
/// to typed values (unknown transforms dropped).
///
/// `peer_ke` is the group of the KE payload the initiator sent: when the chosen proposal
/// allows it on both sides it is taken (as strongSwan does), so no INVALID_KE_PAYLOAD round
/// trip is needed; otherwise our preferred common group is returned and the caller answers
/// INVALID_KE_PAYLOAD naming it.
pub fn select_ike(
    ours: &[IkeProposal],
    theirs: &[IkeProposal],
    peer_ke: Option<KeGroup>,
) -> Option<(usize, IkeChoice)> {
    for o in ours {
        for (idx, t) in theirs.iter().enumerate() {
            let Some(encr) = pick(&o.encr, &t.encr) else {
                continue;
            };
            let Some(prf) = pick(&o.prf, &t.prf) else {
                continue;
            };
            let integ = if encr.is_aead() {
                None
            } else {
                match pick(&o.integ, &t.integ) {
                    Some(i) => Some(i),
                    None => continue,
                }
            };
            let ke = match peer_ke {
                Some(g) if o.ke.contains(&g) && t.ke.contains(&g) => g,
                _ => match pick(&o.ke, &t.ke) {
                    Some(g) => g,
                    None => continue,
                },
            };
            return Some((
                idx,
                IkeChoice {
                    encr,
                    prf,
                    integ,
                    ke,
                },
            ));
        }
    }
    None
}

/// The responder's choice among the initiator's ESP proposals, with the same preference rule
/// as [`select_ike`].
///
/// `ignore_ke`: in IKE_AUTH the first CHILD SA is keyed without a key exchange, so KE
/// transforms are disregarded on both sides (RFC 7296 §1.2; strongSwan strips them).
/// Otherwise (CREATE_CHILD_SA) KE lists must both be empty (no PFS) or share a group.
pub fn select_esp(
    ours: &[EspProposal],
    theirs: &[EspProposal],
    ignore_ke: bool,
) -> Option<(usize, EspChoice)> {
    for o in ours {
        for (idx, t) in theirs.iter().enumerate() {
            let Some(encr) = pick(&o.encr, &t.encr) else {
                continue;
            };
            let integ = if encr.is_aead() {
                None
            } else {
                match pick(&o.integ, &t.integ) {
                    Some(i) => Some(i),
                    None => continue,
                }
            };
            let ke = if ignore_ke {
                None
            } else {
                match pick_optional(&o.ke, &t.ke) {
                    Some(k) => k,
                    None => continue,
                }
            };
            // An initiator that sends no ESN transform means "no ESN".
            let their_esn: &[Esn] = if t.esn.is_empty() { &[Esn::No] } else { &t.esn };
            let Some(esn) = pick(&o.esn, their_esn) else {
                continue;
            };
            return Some((
                idx,
                EspChoice {
                    encr,
                    integ,
                    ke,
                    esn,
                },
            ));
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn ike(s: &str) -> IkeProposal {
        s.parse().unwrap()
    }

    fn esp(s: &str) -> EspProposal {
        s.parse().unwrap()
    }

    #[test]
    fn canonical_strings_round_trip() {
        for s in [
            "aes256gcm16-prfsha384-x25519",
            "aes256-sha256-prfsha256-modp2048",
            "aes128gcm16-aes256gcm16-prfsha256-prfsha384-x25519-ecp256",
            "aes128-aes256-sha256-sha512-prfsha512-ecp384-ecp521-modp3072-modp4096",
        ] {
            let p = ike(s);
            assert_eq!(p.to_string(), s);
            assert_eq!(ike(&p.to_string()), p);
        }
        for s in [
            "aes256gcm16-x25519",
            "aes256gcm16",
            "aes256-sha384-esn",
            "aes128gcm16-esn-noesn",
        ] {
            let p = esp(s);
            assert_eq!(p.to_string(), s);
            assert_eq!(esp(&p.to_string()), p);
        }
        for p in default_ike() {
            assert_eq!(ike(&p.to_string()), p);
        }
        for p in default_esp() {
            assert_eq!(esp(&p.to_string()), p);
        }
    }

    #[test]
    fn implied_prf_aliases_and_esn() {
        let p = ike("aes256-sha256-modp2048");
        assert_eq!(p.prf, vec![Prf::HmacSha256]);
        assert_eq!(p.integ, vec![Integ::HmacSha256_128]);
        assert_eq!(p.to_string(), "aes256-sha256-prfsha256-modp2048");
        let q = ike("aes256-sha256-sha384-prfsha512-curve25519");
        assert_eq!(q.prf, vec![Prf::HmacSha512]);
        assert_eq!(q.ke, vec![KeGroup::Curve25519]);
        assert_eq!(
            ike("AES128GCM128-prfsha256-x25519").encr,
            vec![Encr::AesGcm16_128]
        );
        assert_eq!(esp("aes256gcm16").esn, vec![Esn::No]);
        assert!(esp("aes256gcm16").ke.is_empty());
        assert_eq!(esp("aes256gcm16-x25519").ke, vec![KeGroup::Curve25519]);
        assert_eq!(esp("aes256gcm16-esn").esn, vec![Esn::Yes]);
    }

    #[test]
    fn weak_and_unknown_tokens_are_named() {
        for (s, tok) in [
            ("3des-sha256-modp2048", "3des"),
            ("aes256-sha1-modp2048", "sha1"),
            ("aes256-md5-modp2048", "md5"),
            ("aes256-sha256-modp1024", "modp1024"),
            ("aes256-sha256-modp768", "modp768"),
            ("aes256-sha256-modp1536", "modp1536"),
            ("des-sha256-modp2048", "des"),
            ("aes256gcm16-prfsha1-x25519", "prfsha1"),
        ] {
            let e = s.parse::<IkeProposal>().unwrap_err();
            assert_eq!(e, ProposalError::Weak(tok.into()), "{s}");
            assert!(e.to_string().contains(tok) && e.to_string().contains("weak"));
        }
        let e = "aes256gcm16-prfsha256-x448"
            .parse::<IkeProposal>()
            .unwrap_err();
        assert_eq!(e, ProposalError::UnknownToken("x448".into()));
        assert!(e.to_string().contains("x448"));
        assert_eq!(e.kind(), "unknown_algorithm");
        assert_eq!(
            "3des-sha256".parse::<EspProposal>().unwrap_err().kind(),
            "weak_algorithm"
        );
    }

    #[test]
    fn structural_errors() {
        let err = |s: &str| s.parse::<IkeProposal>().unwrap_err().kind();
        assert_eq!(err(""), "empty");
        assert_eq!(err("aes256gcm16--x25519"), "empty");
        assert_eq!(err("aes256gcm16-x25519"), "missing_transform"); // AEAD needs a PRF
        assert_eq!(err("aes256-x25519"), "missing_transform"); // CBC needs integrity
        assert_eq!(err("aes256gcm16-prfsha256"), "missing_transform"); // no KE
        assert_eq!(err("aes256gcm16-sha256-prfsha256-x25519"), "inconsistent");
        assert_eq!(err("aes256gcm16-aes256-sha256-x25519"), "inconsistent");
        assert_eq!(err("aes256gcm16-prfsha256-x25519-esn"), "not_allowed");
        assert_eq!(
            "aes256gcm16-prfsha256"
                .parse::<EspProposal>()
                .unwrap_err()
                .kind(),
            "not_allowed"
        );
        assert_eq!(
            parse_ike_list(&["aes256gcm16-prfsha256-x25519", "3des"])
                .unwrap_err()
                .kind(),
            "weak_algorithm"
        );
        assert_eq!(
            parse_esp_list(&["aes256gcm16", "aes128gcm16"])
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn selection_prefers_our_order() {
        let ours = vec![
            ike("aes256gcm16-prfsha384-x25519"),
            ike("aes256gcm16-prfsha256-ecp256"),
        ];
        // They list ecp256 first; we still pick our first proposal if they offer it anywhere.
        let theirs = vec![
            ike("aes256gcm16-prfsha256-ecp256"),
            ike("aes256gcm16-prfsha384-x25519"),
        ];
        let (idx, c) = select_ike(&ours, &theirs, None).unwrap();
        assert_eq!(idx, 1);
        assert_eq!(c.ke, KeGroup::Curve25519);
        assert_eq!(c.prf, Prf::HmacSha384);
        assert_eq!(c.integ, None);

        // Within one proposal, our order per transform type wins too.
        let ours = vec![ike(
            "aes256gcm16-aes128gcm16-prfsha384-prfsha256-x25519-ecp256",
        )];
        let theirs = vec![ike(
            "aes128gcm16-aes256gcm16-prfsha256-prfsha384-ecp256-x25519",
        )];
        let (_, c) = select_ike(&ours, &theirs, None).unwrap();
        assert_eq!(
            (c.encr, c.prf, c.ke),
            (Encr::AesGcm16_256, Prf::HmacSha384, KeGroup::Curve25519)
        );
        // ...except the KE group: the one the initiator already sent is kept when allowed.
        let (_, c) = select_ike(&ours, &theirs, Some(KeGroup::Ecp256)).unwrap();
        assert_eq!(c.ke, KeGroup::Ecp256);
        let (_, c) = select_ike(&ours, &theirs, Some(KeGroup::Modp2048)).unwrap();
        assert_eq!(c.ke, KeGroup::Curve25519);

        // Non-AEAD picks integrity; no overlap gives None.
        let (_, c) = select_ike(
            &[ike("aes256-sha384-sha256-modp3072")],
            &[ike("aes256-sha256-modp3072")],
            None,
        )
        .unwrap();
        assert_eq!(c.integ, Some(Integ::HmacSha256_128));
        assert_eq!(c.prf, Prf::HmacSha256);
        assert!(
            select_ike(
                &[ike("aes256gcm16-prfsha384-x25519")],
                &[ike("aes128gcm16-prfsha384-x25519")],
                None
            )
            .is_none()
        );
        assert!(select_ike(&default_ike(), &[ike("aes256-sha512-modp4096")], None).is_none());
    }

    #[test]
    fn esp_selection_pfs_and_esn() {
        let ours = vec![esp("aes256gcm16-x25519")];
        // IKE_AUTH: KE ignored, so a peer without PFS matches.
        let (_, c) = select_esp(&ours, &[esp("aes256gcm16")], true).unwrap();
        assert_eq!(c.ke, None);
        // CREATE_CHILD_SA: PFS must agree.
        assert!(select_esp(&ours, &[esp("aes256gcm16")], false).is_none());
        let (_, c) = select_esp(&ours, &[esp("aes256gcm16-ecp256-x25519")], false).unwrap();
        assert_eq!(c.ke, Some(KeGroup::Curve25519));
        let (_, c) = select_esp(&[esp("aes256gcm16")], &[esp("aes256gcm16")], false).unwrap();
        assert_eq!((c.ke, c.esn), (None, Esn::No));
        // ESN: our preference among what they offer.
        let (_, c) = select_esp(
            &[esp("aes256gcm16-esn-noesn")],
            &[esp("aes256gcm16-noesn-esn")],
            true,
        )
        .unwrap();
        assert_eq!(c.esn, Esn::Yes);
        assert!(select_esp(&[esp("aes256gcm16-esn")], &[esp("aes256gcm16")], true).is_none());
        let (_, c) = select_esp(&default_esp(), &[esp("aes256-sha256")], true).unwrap();
        assert_eq!(
            (c.encr, c.integ),
            (Encr::AesCbc256, Some(Integ::HmacSha256_128))
        );
    }

    /// A random non-empty subset of `all`, in a random order.
    fn subset<T: Copy>(rng: &mut crate::crypto::rng::DeterministicRng, all: &[T]) -> Vec<T> {
        use crate::crypto::rng::Rng;
        let mut b = [0u8; 8];
        let mut below = |n: usize| {
            rng.fill(&mut b);
            (u64::from_be_bytes(b) % n.max(1) as u64) as usize
        };
        let mut v: Vec<T> = all.iter().copied().filter(|_| below(2) == 0).collect();
        if v.is_empty() {
            v.push(all[below(all.len())]);
        }
        for i in (1..v.len()).rev() {
            v.swap(i, below(i + 1));
        }
        v
    }

    fn random_ike(rng: &mut crate::crypto::rng::DeterministicRng) -> IkeProposal {
        let aead = subset(rng, &[true, false])[0];
        let encr: Vec<Encr> = Encr::ALL
            .iter()
            .copied()
            .filter(|e| e.is_aead() == aead)
            .collect();
        IkeProposal {
            encr: subset(rng, &encr),
            prf: subset(rng, &Prf::ALL),
            integ: if aead {
                Vec::new()
            } else {
                subset(rng, &Integ::ALL)
            },
            ke: subset(rng, &KeGroup::ALL),
        }
    }

    #[test]
    fn ike_selection_follows_our_order_and_stays_within_both_for_random_proposals() {
        let mut rng = crate::crypto::rng::DeterministicRng::new(11);
        let common = |a: &[KeGroup], b: &[KeGroup]| a.iter().any(|x| b.contains(x));
        let fits = |o: &IkeProposal, t: &IkeProposal| {
            o.encr.iter().any(|e| t.encr.contains(e))
                && o.prf.iter().any(|p| t.prf.contains(p))
                && common(&o.ke, &t.ke)
                && (o.encr.iter().all(|e| e.is_aead())
                    || o.integ.iter().any(|i| t.integ.contains(i)))
        };
        let mut chosen = 0;
        for _ in 0..20_000 {
            let n = subset(&mut rng, &[1usize, 2, 3])[0];
            let ours: Vec<IkeProposal> = (0..n).map(|_| random_ike(&mut rng)).collect();
            let m = subset(&mut rng, &[1usize, 2, 3])[0];
            let theirs: Vec<IkeProposal> = (0..m).map(|_| random_ike(&mut rng)).collect();
            let peer_ke = subset(&mut rng, &KeGroup::ALL)[0];
            // the first (ours, theirs) pair that fits, ours first
            let expect = ours
                .iter()
                .find_map(|o| theirs.iter().position(|t| fits(o, t)).map(|i| (o, i)));
            let got = select_ike(&ours, &theirs, Some(peer_ke));
            let (Some((o, i)), Some((idx, ch))) = (expect, got) else {
                assert_eq!(expect.is_none(), got.is_none(), "{ours:?} {theirs:?}");
                continue;
            };
            chosen += 1;
            let t = &theirs[idx];
            assert_eq!(idx, i);
            // our most preferred algorithm of each kind that they offer
            let first = |ours: &[Encr]| ours.iter().copied().find(|e| t.encr.contains(e));
            assert_eq!(Some(ch.encr), first(&o.encr));
            assert_eq!(
                Some(ch.prf),
                o.prf.iter().copied().find(|p| t.prf.contains(p))
            );
            match ch.integ {
                None => assert!(ch.encr.is_aead()),
                Some(g) => assert!(o.integ.contains(&g) && t.integ.contains(&g)),
            }
            assert!(o.ke.contains(&ch.ke) && t.ke.contains(&ch.ke));
            // the group the initiator's KE payload is for, when both allow it
            if o.ke.contains(&peer_ke) && t.ke.contains(&peer_ke) {
                assert_eq!(ch.ke, peer_ke);
            }
        }
        assert!(chosen > 5_000, "{chosen}");
    }
}
