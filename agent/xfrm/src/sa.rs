//! Security associations: types, their kernel encoding, and the SA operations of [`Xfrm`].

use std::fmt;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use netlink_packet_xfrm::constants::{
    IPPROTO_ESP, UDP_ENCAP_ESPINUDP, XFRM_INF, XFRM_MODE_TRANSPORT, XFRM_MODE_TUNNEL,
    XFRM_STATE_AF_UNSPEC, XFRM_STATE_ESN,
};
use netlink_packet_xfrm::state::{AllocSpiMessage, DelGetMessage, GetDumpMessage, ModifyMessage};
use netlink_packet_xfrm::{
    Address, Alg, AlgAead, AlgAuth, EncapTmpl, LifetimeConfig, Mark as RawMark, ReplayEsn,
    XfrmAttrs, XfrmMessage,
};
use zeroize::Zeroizing;

use crate::Xfrm;
use crate::counters::SaCounters;
use crate::error::{Error, Result};
use crate::netlink::Kind;
use crate::ownership::Reqid;
use crate::selector::{Family, Selector, ip_from_raw};

/// An IP protocol number of an SA (ESP is the only one Strait installs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Proto(pub u8);

impl Proto {
    /// Encapsulating Security Payload.
    pub const ESP: Proto = Proto(IPPROTO_ESP);
    /// Authentication Header.
    pub const AH: Proto = Proto(51);
}

/// An XFRM mark (value/mask). Beware: a marked SA or policy only applies to packets whose mark
/// matches, so a mark changes semantics (it is not used for ownership, see `ownership.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mark {
    /// Value after masking.
    pub value: u32,
    /// Mask.
    pub mask: u32,
}

impl Mark {
    pub(crate) fn attr(self) -> XfrmAttrs {
        XfrmAttrs::Mark(RawMark {
            value: self.value,
            mask: self.mask,
        })
    }

    pub(crate) fn find(nlas: &[XfrmAttrs]) -> Option<Mark> {
        nlas.iter().find_map(|a| match a {
            XfrmAttrs::Mark(m) if m.mask != 0 || m.value != 0 => Some(Mark {
                value: m.value,
                mask: m.mask,
            }),
            _ => None,
        })
    }
}

/// How the kernel finds an SA: destination, SPI, protocol (and mark, when it has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SaId {
    /// Destination (outer) address.
    pub dst: IpAddr,
    /// Security parameter index, host order.
    pub spi: u32,
    /// Protocol.
    pub proto: Proto,
    /// The SA's mark: the kernel only finds a marked SA when asked with its mark.
    pub mark: Option<Mark>,
}

impl SaId {
    /// An unmarked ESP SA.
    pub fn esp(dst: IpAddr, spi: u32) -> Self {
        SaId {
            dst,
            spi,
            proto: Proto::ESP,
            mark: None,
        }
    }
}

impl fmt::Display for SaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} spi {:#010x} proto {}",
            self.dst, self.spi, self.proto.0
        )
    }
}

/// Transport or tunnel mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Mode {
    /// Protects the payload of packets between the two endpoints.
    Transport,
    /// Encapsulates whole packets between two gateways.
    Tunnel,
    /// Another kernel mode (BEET, ...), only ever read back.
    Other(u8),
}

impl Mode {
    pub(crate) fn raw(self) -> Result<u8> {
        match self {
            Mode::Transport => Ok(XFRM_MODE_TRANSPORT),
            Mode::Tunnel => Ok(XFRM_MODE_TUNNEL),
            Mode::Other(m) => Err(Error::invalid("mode", format!("mode {m} is not supported"))),
        }
    }

    pub(crate) fn from_raw(raw: u8) -> Self {
        match raw {
            XFRM_MODE_TRANSPORT => Mode::Transport,
            XFRM_MODE_TUNNEL => Mode::Tunnel,
            m => Mode::Other(m),
        }
    }
}

/// Key bytes, wiped on drop. `Debug` shows the length only.
#[derive(Clone)]
pub struct Key(Zeroizing<Vec<u8>>);

impl Key {
    /// Takes ownership of key bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Key(Zeroizing::new(bytes))
    }

    /// Copies key bytes.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Key(Zeroizing::new(bytes.to_vec()))
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the key is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

/// HMAC-SHA2 integrity with the RFC 4868 truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Integrity {
    /// HMAC-SHA2-256-128.
    HmacSha256,
    /// HMAC-SHA2-384-192.
    HmacSha384,
    /// HMAC-SHA2-512-256.
    HmacSha512,
}

impl Integrity {
    /// The kernel's algorithm name.
    pub fn kernel_name(self) -> &'static str {
        match self {
            Integrity::HmacSha256 => "hmac(sha256)",
            Integrity::HmacSha384 => "hmac(sha384)",
            Integrity::HmacSha512 => "hmac(sha512)",
        }
    }

    /// Key length in bytes (the hash's output length).
    pub fn key_len(self) -> usize {
        match self {
            Integrity::HmacSha256 => 32,
            Integrity::HmacSha384 => 48,
            Integrity::HmacSha512 => 64,
        }
    }

    /// ICV length in bits after truncation.
    pub fn trunc_bits(self) -> u32 {
        match self {
            Integrity::HmacSha256 => 128,
            Integrity::HmacSha384 => 192,
            Integrity::HmacSha512 => 256,
        }
    }
}

/// An ESP transform without keys: what was negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transform {
    /// AES-GCM with a 16-byte ICV (RFC 4106); `key_bits` 128 or 256 (plus a 32-bit salt).
    AesGcm16 {
        /// AES key size in bits.
        key_bits: u16,
    },
    /// AES-CBC (RFC 3602) with HMAC-SHA2 integrity.
    AesCbc {
        /// AES key size in bits.
        key_bits: u16,
        /// The integrity algorithm.
        integrity: Integrity,
    },
}

impl Transform {
    /// The kernel's name of the encryption (or AEAD) algorithm.
    pub fn kernel_name(&self) -> &'static str {
        match self {
            Transform::AesGcm16 { .. } => "rfc4106(gcm(aes))",
            Transform::AesCbc { .. } => "cbc(aes)",
        }
    }

    /// A readable name for errors and status ("aes256gcm16", "aes128-sha256").
    pub fn name(&self) -> String {
        match self {
            Transform::AesGcm16 { key_bits } => format!("aes{key_bits}gcm16"),
            Transform::AesCbc {
                key_bits,
                integrity,
            } => format!(
                "aes{key_bits}-{}",
                match integrity {
                    Integrity::HmacSha256 => "sha256",
                    Integrity::HmacSha384 => "sha384",
                    Integrity::HmacSha512 => "sha512",
                }
            ),
        }
    }

    /// ESP IV length in bytes.
    pub fn iv_len(&self) -> u32 {
        match self {
            Transform::AesGcm16 { .. } => 8,
            Transform::AesCbc { .. } => 16,
        }
    }

    /// The length the encrypted part is padded to (ESP requires at least 4).
    pub fn block_len(&self) -> u32 {
        match self {
            Transform::AesGcm16 { .. } => 4,
            Transform::AesCbc { .. } => 16,
        }
    }

    /// ICV length in bytes.
    pub fn icv_len(&self) -> u32 {
        match self {
            Transform::AesGcm16 { .. } => 16,
            Transform::AesCbc { integrity, .. } => integrity.trunc_bits() / 8,
        }
    }

    fn check_key_bits(bits: u16) -> Result<()> {
        if bits == 128 || bits == 256 {
            Ok(())
        } else {
            Err(Error::invalid(
                "transform",
                format!("AES-{bits} is not offered (128 or 256)"),
            ))
        }
    }
}

/// A transform with its keys.
#[derive(Debug, Clone)]
pub struct SaCrypto {
    transform: Transform,
    enc_key: Key,
    integ_key: Option<Key>,
}

impl SaCrypto {
    /// AES-GCM-16: `key_and_salt` is the AES key followed by the 4-byte salt (20 or 36 bytes),
    /// as RFC 4106 and IKEv2's KEYMAT lay them out.
    pub fn aes_gcm16(key_and_salt: Key) -> Result<Self> {
        let key_bits = match key_and_salt.len() {
            20 => 128,
            36 => 256,
            n => {
                return Err(Error::invalid(
                    "key",
                    format!("AES-GCM needs 20 or 36 bytes (key + 4-byte salt), got {n}"),
                ));
            }
        };
        Ok(SaCrypto {
            transform: Transform::AesGcm16 { key_bits },
            enc_key: key_and_salt,
            integ_key: None,
        })
    }

    /// AES-CBC (16- or 32-byte key) with HMAC-SHA2 (key as long as the hash output).
    pub fn aes_cbc(enc_key: Key, integrity: Integrity, integ_key: Key) -> Result<Self> {
        let key_bits = match enc_key.len() {
            16 => 128,
            32 => 256,
            n => {
                return Err(Error::invalid(
                    "key",
                    format!("AES-CBC needs a 16- or 32-byte key, got {n}"),
                ));
            }
        };
        if integ_key.len() != integrity.key_len() {
            return Err(Error::invalid(
                "key",
                format!(
                    "{} needs a {}-byte key, got {}",
                    integrity.kernel_name(),
                    integrity.key_len(),
                    integ_key.len()
                ),
            ));
        }
        Transform::check_key_bits(key_bits)?;
        Ok(SaCrypto {
            transform: Transform::AesCbc {
                key_bits,
                integrity,
            },
            enc_key,
            integ_key: Some(integ_key),
        })
    }

    /// The transform.
    pub fn transform(&self) -> Transform {
        self.transform
    }

    fn push_attrs(&self, nlas: &mut Vec<XfrmAttrs>) {
        let enc_bits = (self.enc_key.len() * 8) as u32;
        match self.transform {
            Transform::AesGcm16 { .. } => nlas.push(XfrmAttrs::EncryptionAlgAead(AlgAead {
                alg_name: alg_name(self.transform.kernel_name()),
                alg_key_len: enc_bits,
                alg_icv_len: 128,
                alg_key: self.enc_key.bytes().to_vec(),
            })),
            Transform::AesCbc { integrity, .. } => {
                nlas.push(XfrmAttrs::EncryptionAlg(Alg {
                    alg_name: alg_name(self.transform.kernel_name()),
                    alg_key_len: enc_bits,
                    alg_key: self.enc_key.bytes().to_vec(),
                }));
                if let Some(k) = &self.integ_key {
                    nlas.push(XfrmAttrs::AuthenticationAlgTrunc(AlgAuth {
                        alg_name: alg_name(integrity.kernel_name()),
                        alg_key_len: (k.len() * 8) as u32,
                        alg_trunc_len: integrity.trunc_bits(),
                        alg_key: k.bytes().to_vec(),
                    }));
                }
            }
        }
    }
}

fn alg_name<const N: usize>(name: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, b) in out.iter_mut().zip(name.bytes().take(N.saturating_sub(1))) {
        *o = b;
    }
    out
}

fn name_of(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(raw.get(..end).unwrap_or(raw)).into_owned()
}

/// Soft or hard limits; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes processed.
    pub bytes: Option<u64>,
    /// Packets processed.
    pub packets: Option<u64>,
    /// Seconds since the SA was added.
    pub add_seconds: Option<u64>,
    /// Seconds since the SA was first used.
    pub use_seconds: Option<u64>,
}

/// Soft limits (the kernel sends an expire event; the agent rekeys) and hard limits (the kernel
/// deletes the SA and sends an expire event).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetimes {
    /// Rekey trigger.
    pub soft: Limits,
    /// Deletion.
    pub hard: Limits,
}

impl Lifetimes {
    fn to_raw(self) -> LifetimeConfig {
        let inf = |v: Option<u64>| v.unwrap_or(XFRM_INF);
        let zero = |v: Option<u64>| v.unwrap_or(0);
        LifetimeConfig {
            soft_byte_limit: inf(self.soft.bytes),
            hard_byte_limit: inf(self.hard.bytes),
            soft_packet_limit: inf(self.soft.packets),
            hard_packet_limit: inf(self.hard.packets),
            soft_add_expires_seconds: zero(self.soft.add_seconds),
            hard_add_expires_seconds: zero(self.hard.add_seconds),
            soft_use_expires_seconds: zero(self.soft.use_seconds),
            hard_use_expires_seconds: zero(self.hard.use_seconds),
        }
    }

    fn from_raw(c: &LifetimeConfig) -> Self {
        let inf = |v: u64| (v != XFRM_INF).then_some(v);
        let zero = |v: u64| (v != 0).then_some(v);
        Lifetimes {
            soft: Limits {
                bytes: inf(c.soft_byte_limit),
                packets: inf(c.soft_packet_limit),
                add_seconds: zero(c.soft_add_expires_seconds),
                use_seconds: zero(c.soft_use_expires_seconds),
            },
            hard: Limits {
                bytes: inf(c.hard_byte_limit),
                packets: inf(c.hard_packet_limit),
                add_seconds: zero(c.hard_add_expires_seconds),
                use_seconds: zero(c.hard_use_expires_seconds),
            },
        }
    }
}

/// ESP in UDP (RFC 3948) ports, for NAT traversal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NatT {
    /// Source UDP port of the encapsulated packets (4500 unless a NAT rewrote it).
    pub sport: u16,
    /// Destination UDP port.
    pub dport: u16,
}

/// The largest anti-replay window the kernel accepts (128 32-bit words of bitmap).
pub const MAX_REPLAY_WINDOW: u32 = 4096;

/// An SA to install.
#[derive(Debug, Clone)]
pub struct Sa {
    /// Outer source address.
    pub src: IpAddr,
    /// Outer destination address.
    pub dst: IpAddr,
    /// SPI, host order.
    pub spi: u32,
    /// Ownership tag and link to the policy template (must be [`Reqid::ours`]).
    pub reqid: Reqid,
    /// Mode.
    pub mode: Mode,
    /// Inner selector: `None` for none (the policy decides what goes in).
    pub selector: Option<Selector>,
    /// Transform and keys.
    pub crypto: SaCrypto,
    /// Extended sequence numbers (needs `replay_window` > 0).
    pub esn: bool,
    /// Anti-replay window in packets (0 for an outbound SA; up to [`MAX_REPLAY_WINDOW`]).
    pub replay_window: u32,
    /// Soft/hard lifetimes.
    pub lifetimes: Lifetimes,
    /// UDP encapsulation for NAT traversal.
    pub nat_t: Option<NatT>,
    /// Optional mark (changes matching; see [`Mark`]).
    pub mark: Option<Mark>,
    /// An inbound NAT-T SA reports authentic packets from a new source address or port
    /// ([`crate::Event::Mapping`]) at most once per this many seconds for the same new port
    /// (`XFRMA_MTIMER_THRESH`; without it the kernel reports every such packet). Never on an
    /// outbound SA, and only with `nat_t`.
    pub mapping_maxage: Option<u32>,
    /// The XFRM interface the SA belongs to (`XFRMA_IF_ID`; route-based tunnels): its traffic
    /// leaves and arrives through the interface with this `if_id`.
    pub if_id: Option<u32>,
}

impl Sa {
    /// An SA with no selector, no ESN, no replay window, unlimited lifetimes, no NAT-T.
    pub fn new(
        src: IpAddr,
        dst: IpAddr,
        spi: u32,
        reqid: Reqid,
        mode: Mode,
        crypto: SaCrypto,
    ) -> Self {
        Sa {
            src,
            dst,
            spi,
            reqid,
            mode,
            selector: None,
            crypto,
            esn: false,
            replay_window: 0,
            lifetimes: Lifetimes::default(),
            nat_t: None,
            mark: None,
            mapping_maxage: None,
            if_id: None,
        }
    }

    /// How the kernel finds this SA.
    pub fn id(&self) -> SaId {
        SaId {
            dst: self.dst,
            spi: self.spi,
            proto: Proto::ESP,
            mark: self.mark,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if Family::of(&self.src) != Family::of(&self.dst) {
            return Err(Error::invalid(
                "SA",
                format!("{} and {} are of different families", self.src, self.dst),
            ));
        }
        if !self.reqid.is_ours() {
            return Err(Error::invalid(
                "SA",
                format!(
                    "reqid {} is outside Strait's range: use Reqid::ours",
                    self.reqid
                ),
            ));
        }
        if self.spi < 256 {
            return Err(Error::invalid(
                "SA",
                format!("SPI {} is reserved (RFC 4303: 1..=255)", self.spi),
            ));
        }
        self.mode.raw()?;
        if self.replay_window > MAX_REPLAY_WINDOW {
            return Err(Error::invalid(
                "SA",
                format!(
                    "replay window {} is larger than {MAX_REPLAY_WINDOW}",
                    self.replay_window
                ),
            ));
        }
        if self.esn && self.replay_window == 0 {
            return Err(Error::invalid(
                "SA",
                "ESN needs a replay window (the kernel refuses ESN with window 0)",
            ));
        }
        if let Some(s) = &self.selector {
            s.family()?;
        }
        Ok(())
    }

    /// The kernel message. Keys are copied into it; the transport wipes them after encoding.
    pub(crate) fn to_message(&self) -> Result<ModifyMessage> {
        self.validate()?;
        let mut m = ModifyMessage::default();
        let info = &mut m.user_sa_info;
        info.source(&self.src);
        info.destination(&self.dst);
        info.id.spi = self.spi;
        info.id.proto = IPPROTO_ESP;
        info.reqid = self.reqid.raw();
        info.mode = self.mode.raw()?;
        info.lifetime_cfg = self.lifetimes.to_raw();
        if let Some(sel) = &self.selector {
            info.selector = sel.to_raw()?;
            if sel.family()? != Family::of(&self.src) {
                // Tunnel mode across families (v4 in v6 or the reverse).
                info.flags |= XFRM_STATE_AF_UNSPEC;
            }
        } else if self.mode == Mode::Tunnel {
            // Without the flag the kernel gives a selector-less SA the outer family, and the
            // SA then never carries inner packets of the other family (dual-stack traffic
            // selectors, v6 in v4). strongSwan sets it on every tunnel-mode SA.
            info.flags |= XFRM_STATE_AF_UNSPEC;
        }
        if self.esn {
            info.flags |= XFRM_STATE_ESN;
        }
        if self.esn || self.replay_window > 32 {
            m.nlas.push(XfrmAttrs::ReplayStateEsn(ReplayEsn {
                bmp_len: self.replay_window.div_ceil(32),
                replay_window: self.replay_window,
                ..ReplayEsn::default()
            }));
        } else {
            // Fits: checked above to be at most 32.
            info.replay_window = self.replay_window as u8;
        }
        if let Some(n) = self.nat_t {
            m.nlas.push(XfrmAttrs::EncapsulationTemplate(EncapTmpl {
                encap_type: UDP_ENCAP_ESPINUDP,
                encap_sport: n.sport,
                encap_dport: n.dport,
                encap_oa: Address::from_ip(&Family::of(&self.src).unspecified()),
            }));
            if let Some(secs) = self.mapping_maxage {
                m.nlas.push(XfrmAttrs::MappingTimeThreshold(secs));
            }
        }
        if let Some(mark) = self.mark {
            m.nlas.push(mark.attr());
        }
        if let Some(id) = self.if_id {
            m.nlas.push(XfrmAttrs::IfId(id));
        }
        // Keys last: nothing fallible follows, so no early return leaves a copy behind.
        self.crypto.push_attrs(&mut m.nlas);
        Ok(m)
    }
}

/// The `XFRMA_IF_ID` among `nlas` (0, as the kernel sends for none, is none).
pub(crate) fn if_id_of(nlas: &[XfrmAttrs]) -> Option<u32> {
    nlas.iter().find_map(|a| match a {
        XfrmAttrs::IfId(id) if *id != 0 => Some(*id),
        _ => None,
    })
}

/// An SA as the kernel reports it, without its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaInfo {
    /// Destination, SPI, protocol, mark.
    pub id: SaId,
    /// Outer source address.
    pub src: IpAddr,
    /// Request id (ownership tag).
    pub reqid: Reqid,
    /// Mode.
    pub mode: Mode,
    /// Inner selector, when it has one.
    pub selector: Option<Selector>,
    /// Kernel algorithm names, encryption first ("rfc4106(gcm(aes))"; "cbc(aes)", "hmac(sha256)").
    pub algorithms: Vec<String>,
    /// ESN.
    pub esn: bool,
    /// Anti-replay window.
    pub replay_window: u32,
    /// Configured lifetimes.
    pub lifetimes: Lifetimes,
    /// UDP encapsulation.
    pub nat_t: Option<NatT>,
    /// A larval SA (SPI allocated, not yet keyed) has no algorithms.
    pub larval: bool,
    /// Counters at the time of the read.
    pub counters: SaCounters,
    /// The XFRM interface it belongs to (`XFRMA_IF_ID`), if any.
    pub if_id: Option<u32>,
}

impl SaInfo {
    /// Whether Strait owns this SA.
    pub fn is_ours(&self) -> bool {
        self.reqid.is_ours()
    }

    pub(crate) fn from_message(m: &ModifyMessage) -> Option<Self> {
        let info = &m.user_sa_info;
        let dst = ip_from_raw(&info.id.daddr, info.family)?;
        let src = ip_from_raw(&info.saddr, info.family)?;
        let mut algorithms = Vec::new();
        let mut auth = Vec::new();
        let mut replay_window = u32::from(info.replay_window);
        let mut nat_t = None;
        for a in &m.nlas {
            match a {
                XfrmAttrs::EncryptionAlgAead(alg) => algorithms.push(name_of(&alg.alg_name)),
                XfrmAttrs::EncryptionAlg(alg) => algorithms.push(name_of(&alg.alg_name)),
                XfrmAttrs::AuthenticationAlg(alg) => auth.push(name_of(&alg.alg_name)),
                XfrmAttrs::AuthenticationAlgTrunc(alg) => auth.push(name_of(&alg.alg_name)),
                XfrmAttrs::ReplayStateEsn(r) => replay_window = r.replay_window,
                XfrmAttrs::EncapsulationTemplate(e) => {
                    nat_t = Some(NatT {
                        sport: e.encap_sport,
                        dport: e.encap_dport,
                    })
                }
                _ => {}
            }
        }
        // Encryption first, then integrity; the kernel reports both "auth" and "auth-trunc"
        // for one algorithm.
        auth.dedup();
        algorithms.extend(auth);
        let id = SaId {
            dst,
            spi: info.id.spi,
            proto: Proto(info.id.proto),
            mark: Mark::find(&m.nlas),
        };
        Some(SaInfo {
            counters: SaCounters::from_info(id, info),
            id,
            src,
            reqid: Reqid::from_raw(info.reqid),
            mode: Mode::from_raw(info.mode),
            selector: crate::selector::Selector::from_raw(&info.selector),
            larval: algorithms.is_empty(),
            algorithms,
            esn: info.flags & XFRM_STATE_ESN != 0,
            replay_window,
            lifetimes: Lifetimes::from_raw(&info.lifetime_cfg),
            nat_t,
            if_id: if_id_of(&m.nlas),
        })
    }
}

pub(crate) fn del_get_message(id: &SaId) -> DelGetMessage {
    let mut m = DelGetMessage::default();
    m.user_sa_id.destination(&id.dst);
    m.user_sa_id.spi = id.spi;
    m.user_sa_id.proto = id.proto.0;
    if let Some(mark) = id.mark {
        m.nlas.push(mark.attr());
    }
    m
}

impl Xfrm {
    /// Reserves a free SPI in `range` for an inbound SA from `src` to `dst` (XFRM_MSG_ALLOCSPI).
    /// The kernel holds a larval SA with our `reqid`; install the keyed SA over it with
    /// [`Xfrm::update_sa`]. A larval SA that is never keyed disappears after the kernel's
    /// acquire timeout (30 s) or on the next sweep.
    pub async fn alloc_spi(
        &self,
        src: IpAddr,
        dst: IpAddr,
        reqid: Reqid,
        mode: Mode,
        range: RangeInclusive<u32>,
    ) -> Result<u32> {
        const OP: &str = "allocate SPI";
        if !reqid.is_ours() {
            return Err(Error::invalid("reqid", "use Reqid::ours"));
        }
        if *range.start() < 256 || range.start() > range.end() {
            return Err(Error::invalid("SPI range", format!("{range:?}")));
        }
        let mut m = AllocSpiMessage::default();
        m.spi_info.info.source(&src);
        m.spi_info.info.destination(&dst);
        m.spi_info.info.reqid = reqid.raw();
        m.spi_info.info.mode = mode.raw()?;
        m.spi_info.protocol(IPPROTO_ESP);
        m.spi_info.spi_range(*range.start(), *range.end());
        let replies = self
            .conn
            .request(OP, XfrmMessage::AllocSpi(m), Kind::Ack, None)
            .await?;
        replies
            .0
            .iter()
            .find_map(|r| match r {
                XfrmMessage::AddSa(sa) => Some(sa.user_sa_info.id.spi),
                _ => None,
            })
            .ok_or_else(|| Error::protocol(OP, "no SA in the ALLOCSPI reply"))
    }

    /// Installs a new SA (fails with [`Error::AlreadyExists`] when the SPI is taken).
    pub async fn add_sa(&self, sa: &Sa) -> Result<()> {
        let msg = sa.to_message()?;
        self.conn
            .request(
                "add SA",
                XfrmMessage::AddSa(msg),
                Kind::Ack,
                Some(sa.crypto.transform().kernel_name()),
            )
            .await
            .map(drop)
            .map_err(|e| refine_alg_error(e, &sa.crypto))
    }

    /// Replaces an SA of ours (or the larval SA [`Xfrm::alloc_spi`] left). Refuses when the
    /// installed SA with this id is someone else's.
    pub async fn update_sa(&self, sa: &Sa) -> Result<()> {
        const OP: &str = "update SA";
        let msg = sa.to_message()?;
        match self.get_sa(&sa.id()).await? {
            Some(cur) if !cur.is_ours() => {
                return Err(Error::NotOurs {
                    op: OP,
                    reqid: cur.reqid.raw(),
                });
            }
            None => return Err(Error::NotFound { op: OP }),
            Some(_) => {}
        }
        self.conn
            .request(
                OP,
                XfrmMessage::UpdateSa(msg),
                Kind::Ack,
                Some(sa.crypto.transform().kernel_name()),
            )
            .await
            .map(drop)
            .map_err(|e| refine_alg_error(e, &sa.crypto))
    }

    /// Reads one SA (without keys); `None` when there is none.
    pub async fn get_sa(&self, id: &SaId) -> Result<Option<SaInfo>> {
        const OP: &str = "get SA";
        let r = self
            .conn
            .request(OP, XfrmMessage::GetSa(del_get_message(id)), Kind::Ack, None)
            .await;
        match r {
            Ok(replies) => Ok(replies.0.iter().find_map(|m| match m {
                XfrmMessage::AddSa(sa) => SaInfo::from_message(sa),
                _ => None,
            })),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes one of our SAs. Refuses ([`Error::NotOurs`]) to delete anyone else's.
    pub async fn delete_sa(&self, id: &SaId) -> Result<()> {
        const OP: &str = "delete SA";
        match self.get_sa(id).await? {
            None => Err(Error::NotFound { op: OP }),
            Some(cur) if !cur.is_ours() => Err(Error::NotOurs {
                op: OP,
                reqid: cur.reqid.raw(),
            }),
            Some(_) => self.delete_sa_unchecked(OP, id).await,
        }
    }

    pub(crate) async fn delete_sa_unchecked(&self, op: &'static str, id: &SaId) -> Result<()> {
        self.conn
            .request(
                op,
                XfrmMessage::DeleteSa(del_get_message(id)),
                Kind::Ack,
                None,
            )
            .await
            .map(drop)
    }

    /// Every SA in the namespace (ours and others'), without keys, in one dump.
    pub async fn list_sas(&self) -> Result<Vec<SaInfo>> {
        let replies = self
            .conn
            .request(
                "dump SAs",
                XfrmMessage::GetDumpSa(GetDumpMessage::default()),
                Kind::Dump,
                None,
            )
            .await?;
        Ok(replies
            .0
            .iter()
            .filter_map(|m| match m {
                XfrmMessage::AddSa(sa) => SaInfo::from_message(sa),
                _ => None,
            })
            .collect())
    }

    /// Our SAs only.
    pub async fn list_our_sas(&self) -> Result<Vec<SaInfo>> {
        let mut all = self.list_sas().await?;
        all.retain(SaInfo::is_ours);
        Ok(all)
    }
}

/// ENOSYS on a CBC+HMAC SA can be either algorithm; name both.
fn refine_alg_error(e: Error, crypto: &SaCrypto) -> Error {
    match (e, crypto.transform()) {
        (
            Error::Unsupported(crate::error::Unsupported::Algorithm(_)),
            Transform::AesCbc { integrity, .. },
        ) => Error::Unsupported(crate::error::Unsupported::Algorithm(format!(
            "cbc(aes) or {}",
            integrity.kernel_name()
        ))),
        (e, _) => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcm() -> SaCrypto {
        SaCrypto::aes_gcm16(Key::from_slice(&[0x42; 36])).unwrap()
    }

    #[test]
    fn key_debug_shows_length_only() {
        let sa = Sa::new(
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            0x1000,
            Reqid::ours(1).unwrap(),
            Mode::Tunnel,
            gcm(),
        );
        let dbg = format!("{sa:?}");
        assert!(dbg.contains("Key(36 bytes)"), "{dbg}");
        assert!(!dbg.contains("66"), "key byte 0x42 = 66 leaked: {dbg}");
    }

    #[test]
    fn crypto_validates_key_lengths() {
        assert!(SaCrypto::aes_gcm16(Key::from_slice(&[0; 32])).is_err());
        assert!(SaCrypto::aes_gcm16(Key::from_slice(&[0; 20])).is_ok());
        assert!(
            SaCrypto::aes_cbc(
                Key::from_slice(&[0; 32]),
                Integrity::HmacSha384,
                Key::from_slice(&[0; 32])
            )
            .is_err()
        );
        let c = SaCrypto::aes_cbc(
            Key::from_slice(&[0; 16]),
            Integrity::HmacSha512,
            Key::from_slice(&[0; 64]),
        )
        .unwrap();
        assert_eq!(c.transform().icv_len(), 32);
        assert_eq!(c.transform().name(), "aes128-sha512");
    }

    #[test]
    fn message_encodes_replay_and_esn() {
        let mut sa = Sa::new(
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            0x1000,
            Reqid::ours(1).unwrap(),
            Mode::Tunnel,
            gcm(),
        );
        sa.replay_window = 32;
        let m = sa.to_message().unwrap();
        assert_eq!(m.user_sa_info.replay_window, 32);
        assert_eq!(
            m.user_sa_info.flags & XFRM_STATE_AF_UNSPEC,
            XFRM_STATE_AF_UNSPEC,
            "a tunnel-mode SA carries inner packets of either family"
        );
        sa.esn = true;
        sa.replay_window = 1024;
        let m = sa.to_message().unwrap();
        assert_eq!(m.user_sa_info.flags & XFRM_STATE_ESN, XFRM_STATE_ESN);
        assert!(m.nlas.iter().any(|a| matches!(a,
            XfrmAttrs::ReplayStateEsn(r) if r.replay_window == 1024 && r.bmp_len == 32)));
        sa.replay_window = 0;
        assert!(sa.to_message().is_err(), "ESN without a window");
        sa.esn = false;
        sa.reqid = Reqid::from_raw(5);
        assert!(sa.to_message().is_err(), "foreign reqid");
    }

    #[test]
    fn info_round_trip_without_keys() {
        let mut sa = Sa::new(
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            0xabcd,
            Reqid::ours(9).unwrap(),
            Mode::Transport,
            SaCrypto::aes_cbc(
                Key::from_slice(&[1; 32]),
                Integrity::HmacSha256,
                Key::from_slice(&[2; 32]),
            )
            .unwrap(),
        );
        sa.nat_t = Some(NatT {
            sport: 4500,
            dport: 4501,
        });
        let info = SaInfo::from_message(&sa.to_message().unwrap()).unwrap();
        assert_eq!(info.id, sa.id());
        assert!(info.is_ours());
        assert_eq!(info.algorithms, vec!["cbc(aes)", "hmac(sha256)"]);
        assert_eq!(info.nat_t, sa.nat_t);
        assert_eq!(info.mode, Mode::Transport);
        let m = sa.to_message().unwrap();
        assert_eq!(
            m.user_sa_info.flags & XFRM_STATE_AF_UNSPEC,
            0,
            "transport mode"
        );
    }
}
