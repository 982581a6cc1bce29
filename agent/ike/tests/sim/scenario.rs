//! What one simulated run is made of, drawn from a seed: the endpoints, their tunnels, the
//! network's faults and the process events. A scenario prints as one line and parses back, so a
//! failing run (or a shrunk one) replays from the line alone.

use core::fmt;
use core::str::FromStr;

use strait_ike::Role;

/// SplitMix64: small, fast, and every stream is a function of its seed.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `pct` percent.
    pub fn chance(&mut self, pct: u8) -> bool {
        self.below(100) < u64::from(pct)
    }

    pub fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

/// One tunnel between two endpoints. Each tunnel has its own addresses on both endpoints, so
/// several tunnels between one pair share identities (the INITIAL_CONTACT case) but not
/// addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSpec {
    pub a: usize,
    pub b: usize,
    pub role_a: Role,
    pub role_b: Role,
    /// CHILD SA rekey time, seconds (jitter 10 %, hard limit +10 %).
    pub child_rekey: u64,
    /// IKE SA rekey time, seconds.
    pub ike_rekey: u64,
    /// DPD interval and timeout, seconds.
    pub dpd: Option<(u64, u64)>,
    /// A key exchange in the ESP proposal: PFS on CHILD SA rekeys.
    pub pfs: bool,
    /// Certificates (RSA one end, ECDSA through an intermediate the other) instead of a PSK;
    /// their identities are the certificates', so only between two endpoints.
    pub cert: bool,
    /// End `a` sits behind a NAPT (and `b`, which only answers, accepts it from any address):
    /// NAT-T, ESP in UDP, keepalives; `rebind` events move its mapping. Only on a tunnel that
    /// is alone between its two endpoints (`b` tells such tunnels apart by address).
    pub nat: bool,
}

/// A process event on one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The machine goes away with its kernel state and comes back empty after `down` seconds:
    /// its new IKE SAs carry INITIAL_CONTACT.
    Crash,
    /// The agent restarts hitlessly: saved state is imported, the kernel keeps its SAs.
    Restart,
    /// The agent stops (SIGSTOP, a suspended VM) and goes on after `down` seconds: its clock
    /// jumps, its timers fire late, what queued in its sockets arrives at once.
    Pause,
    /// The NAT in front of the endpoint maps it to new ports (its old mapping expired):
    /// `down` is unused.
    Rebind,
    /// Every tunnel of the endpoint reauthenticates, make before break (a rotated key or
    /// certificate): `down` is unused.
    Reauth,
    /// The endpoint's wall clock steps back `down` hours (NTP correcting it); the monotonic
    /// clock goes on. Saved state is timed by the wall clock.
    ClockBack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessEvent {
    /// Seconds from the start.
    pub at: u64,
    pub endpoint: usize,
    pub kind: Kind,
    /// Seconds nothing answers at the endpoint's addresses.
    pub down: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Drives everything not written here: the network's fates and delays, every RNG.
    pub seed: u64,
    pub endpoints: usize,
    pub tunnels: Vec<TunnelSpec>,
    /// Seconds of faults; then the network is clean.
    pub fault_secs: u64,
    pub loss_pct: u8,
    pub dup_pct: u8,
    /// Extra delay drawn uniformly in `0..jitter_ms` per datagram while faults last (reordering).
    pub jitter_ms: u64,
    /// Milliseconds between ESP packets each side sends on each tunnel.
    pub traffic_ms: u64,
    /// The path MTU (IKE datagrams longer than this, IP and UDP headers counted, are dropped)
    /// and every endpoint's IKE fragment size; 0: no limit, fragment size 1280.
    pub mtu: u16,
    pub events: Vec<ProcessEvent>,
}

pub const ROLES: [(Role, Role); 5] = [
    (Role::Start, Role::Respond),
    (Role::Start, Role::Start),
    (Role::OnTraffic, Role::Respond),
    (Role::OnTraffic, Role::OnTraffic),
    (Role::Start, Role::OnTraffic),
];

impl Scenario {
    /// The scenario of `seed`: every field drawn from it.
    pub fn from_seed(seed: u64) -> Self {
        let mut r = SimRng::new(seed ^ 0x5eed_5eed_5eed_5eed);
        // mostly two to four endpoints; one schedule in seven five to ten, with more tunnels
        let endpoints = if r.chance(15) {
            5 + r.below(6) as usize
        } else {
            2 + r.below(3) as usize
        };
        let n = 1 + r.below(match endpoints {
            2 => 2,
            3 | 4 => 4,
            _ => 10,
        }) as usize;
        let mut tunnels = (0..n)
            .map(|_| {
                let a = r.below(endpoints as u64) as usize;
                let b = (a + 1 + r.below(endpoints as u64 - 1) as usize) % endpoints;
                let (role_a, role_b) = r.pick(&ROLES);
                TunnelSpec {
                    a,
                    b,
                    role_a,
                    role_b,
                    child_rekey: r.pick(&[20, 30, 60, 120]),
                    ike_rekey: r.pick(&[30, 60, 120, 600]),
                    dpd: r
                        .chance(50)
                        .then(|| (r.pick(&[5, 10, 30]), r.pick(&[10, 20, 60]))),
                    pfs: r.chance(50),
                    cert: endpoints == 2 && r.chance(30),
                    nat: false,
                }
            })
            .collect::<Vec<_>>();
        for i in 0..tunnels.len() {
            if r.chance(30) && alone(&tunnels, i) {
                tunnels[i].nat = true;
                tunnels[i].role_b = Role::Respond;
            }
        }
        let fault_secs = r.pick(&[30, 60, 120, 300]);
        let events = (0..r.pick(&[0, 0, 1, 2]))
            .map(|_| ProcessEvent {
                at: r.below(fault_secs),
                endpoint: r.below(endpoints as u64) as usize,
                kind: r.pick(&[
                    Kind::Crash,
                    Kind::Restart,
                    Kind::Restart,
                    Kind::Pause,
                    Kind::Rebind,
                    Kind::Reauth,
                    Kind::ClockBack,
                ]),
                down: r.pick(&[0, 1, 5, 20]),
            })
            .collect();
        Self {
            seed,
            endpoints,
            tunnels,
            fault_secs,
            loss_pct: r.pick(&[0, 1, 5, 10, 20, 30]),
            dup_pct: r.pick(&[0, 0, 2, 10]),
            jitter_ms: r.pick(&[0, 10, 100, 1000]),
            traffic_ms: r.pick(&[500, 1000, 3000]),
            mtu: r.pick(&[0, 0, 1280, 576]),
            events,
        }
    }

    /// Simpler neighbours of this scenario, for shrinking: one thing removed or made milder.
    pub fn simpler(&self) -> Vec<Scenario> {
        let mut out = Vec::new();
        let mut with = |f: &dyn Fn(&mut Scenario)| {
            let mut s = self.clone();
            f(&mut s);
            if s != *self {
                out.push(s);
            }
        };
        for i in 0..self.events.len() {
            with(&|s| {
                s.events.remove(i);
            });
        }
        if self.tunnels.len() > 1 {
            for i in 0..self.tunnels.len() {
                with(&|s| {
                    s.tunnels.remove(i);
                });
            }
        }
        with(&|s| s.loss_pct = 0);
        with(&|s| s.loss_pct /= 2);
        with(&|s| s.dup_pct = 0);
        with(&|s| s.jitter_ms = 0);
        with(&|s| s.fault_secs /= 2);
        with(&|s| s.traffic_ms = 3000);
        with(&|s| s.mtu = 0);
        for i in 0..self.tunnels.len() {
            with(&|s| s.tunnels[i].dpd = None);
            with(&|s| s.tunnels[i].pfs = false);
            with(&|s| s.tunnels[i].cert = false);
            with(&|s| s.tunnels[i].nat = false);
            with(&|s| s.tunnels[i].ike_rekey = 600);
            with(&|s| s.tunnels[i].child_rekey = 120);
            with(&|s| s.tunnels[i].role_b = Role::Respond);
        }
        for i in 0..self.events.len() {
            with(&|s| s.events[i].down = 0);
        }
        out
    }

    /// The latest CHILD SA rekey time of any tunnel, seconds.
    pub fn longest_child_rekey(&self) -> u64 {
        self.tunnels
            .iter()
            .map(|t| t.child_rekey)
            .max()
            .unwrap_or(0)
    }
}

fn role_char(r: Role) -> char {
    match r {
        Role::Start => 'S',
        Role::Respond => 'R',
        Role::OnTraffic => 'T',
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} endpoints={} faults={} loss={} dup={} jitter={} traffic={} mtu={}",
            self.seed,
            self.endpoints,
            self.fault_secs,
            self.loss_pct,
            self.dup_pct,
            self.jitter_ms,
            self.traffic_ms,
            self.mtu
        )?;
        for t in &self.tunnels {
            write!(
                f,
                " tunnel={}-{}:{}{}:{}:{}:{}:{}{}{}",
                t.a,
                t.b,
                role_char(t.role_a),
                role_char(t.role_b),
                t.child_rekey,
                t.ike_rekey,
                t.dpd.map_or("-".to_owned(), |(i, o)| format!("{i}/{o}")),
                if t.pfs { "pfs" } else { "nopfs" },
                if t.cert { ":cert" } else { "" },
                if t.nat { ":nat" } else { "" }
            )?;
        }
        for e in &self.events {
            let k = match e.kind {
                Kind::Crash => "crash",
                Kind::Restart => "restart",
                Kind::Pause => "pause",
                Kind::Rebind => "rebind",
                Kind::Reauth => "reauth",
                Kind::ClockBack => "clockback",
            };
            write!(f, " event={}@{}:{}:{}", k, e.at, e.endpoint, e.down)?;
        }
        Ok(())
    }
}

/// Whether tunnel `i` is the only one between its two endpoints.
fn alone(tunnels: &[TunnelSpec], i: usize) -> bool {
    let pair = |t: &TunnelSpec| (t.a.min(t.b), t.a.max(t.b));
    tunnels
        .iter()
        .enumerate()
        .all(|(j, t)| j == i || pair(t) != pair(&tunnels[i]))
}

fn num<T: FromStr>(s: &str, what: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{what}: not a number: {s:?}"))
}

fn role(c: char) -> Result<Role, String> {
    match c {
        'S' => Ok(Role::Start),
        'R' => Ok(Role::Respond),
        'T' => Ok(Role::OnTraffic),
        _ => Err(format!("role {c:?} is not S, R or T")),
    }
}

impl FromStr for Scenario {
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let mut s = Scenario {
            seed: 0,
            endpoints: 2,
            tunnels: Vec::new(),
            fault_secs: 0,
            loss_pct: 0,
            dup_pct: 0,
            jitter_ms: 0,
            traffic_ms: 1000,
            mtu: 0,
            events: Vec::new(),
        };
        for word in line.split_whitespace() {
            let (k, v) = word
                .split_once('=')
                .ok_or_else(|| format!("{word:?} is not key=value"))?;
            match k {
                "seed" => s.seed = num(v, k)?,
                "endpoints" => s.endpoints = num(v, k)?,
                "faults" => s.fault_secs = num(v, k)?,
                "loss" => s.loss_pct = num(v, k)?,
                "dup" => s.dup_pct = num(v, k)?,
                "jitter" => s.jitter_ms = num(v, k)?,
                "traffic" => s.traffic_ms = num(v, k)?,
                "mtu" => s.mtu = num(v, k)?,
                "tunnel" => {
                    let p: Vec<&str> = v.split(':').collect();
                    let [ends, roles, child, ike, dpd, pfs, ref flags @ ..] = p[..] else {
                        return Err(format!(
                            "tunnel {v:?}: want a-b:RR:child:ike:dpd:pfs[:cert][:nat]"
                        ));
                    };
                    if let Some(f) = flags.iter().find(|f| !matches!(**f, "cert" | "nat")) {
                        return Err(format!("tunnel {v:?}: unknown flag {f:?}"));
                    }
                    let cert = flags.contains(&"cert");
                    let nat = flags.contains(&"nat");
                    let (a, b) = ends.split_once('-').ok_or("tunnel ends: want a-b")?;
                    let mut rc = roles.chars();
                    let (Some(ra), Some(rb)) = (rc.next(), rc.next()) else {
                        return Err(format!("tunnel roles {roles:?}: want two letters"));
                    };
                    s.tunnels.push(TunnelSpec {
                        a: num(a, "tunnel a")?,
                        b: num(b, "tunnel b")?,
                        role_a: role(ra)?,
                        role_b: role(rb)?,
                        child_rekey: num(child, "child rekey")?,
                        ike_rekey: num(ike, "ike rekey")?,
                        dpd: match dpd.split_once('/') {
                            None => None,
                            Some((i, o)) => Some((num(i, "dpd")?, num(o, "dpd")?)),
                        },
                        pfs: pfs == "pfs",
                        cert,
                        nat,
                    });
                }
                "event" => {
                    let (kind, rest) = v.split_once('@').ok_or("event: want kind@at:ep:down")?;
                    let p: Vec<&str> = rest.split(':').collect();
                    let [at, ep, down] = p[..] else {
                        return Err(format!("event {v:?}: want kind@at:endpoint:down"));
                    };
                    s.events.push(ProcessEvent {
                        at: num(at, "event at")?,
                        endpoint: num(ep, "event endpoint")?,
                        kind: match kind {
                            "crash" => Kind::Crash,
                            "restart" => Kind::Restart,
                            "pause" => Kind::Pause,
                            "rebind" => Kind::Rebind,
                            "reauth" => Kind::Reauth,
                            "clockback" => Kind::ClockBack,
                            _ => return Err(format!("event kind {kind:?}")),
                        },
                        down: num(down, "event down")?,
                    });
                }
                _ => return Err(format!("unknown key {k:?}")),
            }
        }
        let bad = s
            .tunnels
            .iter()
            .any(|t| t.a >= s.endpoints || t.b >= s.endpoints || t.a == t.b)
            || s.events.iter().any(|e| e.endpoint >= s.endpoints);
        if bad || s.tunnels.is_empty() {
            return Err("a tunnel or event names an endpoint that is not there".into());
        }
        if s.endpoints != 2 && s.tunnels.iter().any(|t| t.cert) {
            return Err("certificate tunnels only between two endpoints".into());
        }
        if (0..s.tunnels.len()).any(|i| s.tunnels[i].nat && !alone(&s.tunnels, i)) {
            return Err("a NAT tunnel must be alone between its endpoints".into());
        }
        if s.tunnels.iter().any(|t| t.nat && t.role_b != Role::Respond) {
            return Err("behind a NAT's tunnel, the far end only responds".into());
        }
        Ok(s)
    }
}
