//! Installs and removes N SA pairs (out + in) with their policies through strait-xfrm, and
//! the same work through `ip -batch`, in one run, in a private network namespace.
//!
//!   bench_sa_install [--pairs N] [--rounds R] [--policies-only]
//!
//! `--policies-only` skips the SAs (for kernels without ESP, such as the build host). Prints a
//! Markdown table: median wall time of R rounds per step, and the ratio strait-xfrm / ip.

use std::error::Error;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use strait_xfrm::{
    Direction, Key, Mode, Policy, Prefix, Reqid, Sa, SaCrypto, Selector, Template, Xfrm,
};

type Res<T> = Result<T, Box<dyn Error>>;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
const REMOTE: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
const KEY: [u8; 36] = [0x5a; 36];

struct Opts {
    pairs: u32,
    rounds: usize,
    policies_only: bool,
}

fn opts() -> Res<Opts> {
    let mut o = Opts {
        pairs: 1000,
        rounds: 3,
        policies_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pairs" => o.pairs = args.next().ok_or("--pairs N")?.parse()?,
            "--rounds" => o.rounds = args.next().ok_or("--rounds R")?.parse()?,
            "--policies-only" => o.policies_only = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if o.pairs == 0 || o.pairs > 60_000 || o.rounds == 0 {
        return Err("--pairs 1..=60000, --rounds >= 1".into());
    }
    Ok(o)
}

fn remote_subnet(i: u32) -> Res<Prefix> {
    let a = Ipv4Addr::new(10, 100 + (i / 256) as u8, (i % 256) as u8, 0);
    Ok(Prefix::new(IpAddr::V4(a), 24)?)
}

fn local_subnet() -> Res<Prefix> {
    Ok("10.0.0.0/16".parse()?)
}

fn spi_out(i: u32) -> u32 {
    0x1_0000 + i
}

fn spi_in(i: u32) -> u32 {
    0x2_0000 + i
}

struct Objects {
    sas: Vec<Sa>,
    policies: Vec<Policy>,
}

fn objects(o: &Opts) -> Res<Objects> {
    let mut sas = Vec::new();
    let mut policies = Vec::new();
    for i in 0..o.pairs {
        let reqid = Reqid::ours(i)?;
        if !o.policies_only {
            let c = SaCrypto::aes_gcm16(Key::from_slice(&KEY))?;
            sas.push(Sa::new(
                LOCAL,
                REMOTE,
                spi_out(i),
                reqid,
                Mode::Tunnel,
                c.clone(),
            ));
            let mut inb = Sa::new(REMOTE, LOCAL, spi_in(i), reqid, Mode::Tunnel, c);
            inb.replay_window = 32;
            sas.push(inb);
        }
        let sel = Selector::between(local_subnet()?, remote_subnet(i)?);
        policies.push(Policy::protect(
            sel,
            Direction::Out,
            1000,
            Template::esp(LOCAL, REMOTE, Mode::Tunnel, reqid),
        ));
        policies.push(Policy::protect(
            sel.reversed(),
            Direction::In,
            1000,
            Template::esp(REMOTE, LOCAL, Mode::Tunnel, reqid),
        ));
    }
    Ok(Objects { sas, policies })
}

fn ip_batch(o: &Opts, remove: bool) -> Res<String> {
    let key: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
    let mut s = String::new();
    for i in 0..o.pairs {
        let reqid = Reqid::ours(i)?.raw();
        let remote = remote_subnet(i)?;
        let local = local_subnet()?;
        if remove {
            writeln!(s, "xfrm policy delete src {local} dst {remote} dir out")?;
            writeln!(s, "xfrm policy delete src {remote} dst {local} dir in")?;
        } else {
            if !o.policies_only {
                writeln!(
                    s,
                    "xfrm state add src {LOCAL} dst {REMOTE} proto esp spi {:#x} reqid {reqid:#x} \
                     mode tunnel aead rfc4106(gcm(aes)) 0x{key} 128",
                    spi_out(i)
                )?;
                writeln!(
                    s,
                    "xfrm state add src {REMOTE} dst {LOCAL} proto esp spi {:#x} reqid {reqid:#x} \
                     mode tunnel replay-window 32 aead rfc4106(gcm(aes)) 0x{key} 128",
                    spi_in(i)
                )?;
            }
            writeln!(
                s,
                "xfrm policy add src {local} dst {remote} dir out priority 1000 \
                 tmpl src {LOCAL} dst {REMOTE} proto esp reqid {reqid:#x} mode tunnel"
            )?;
            writeln!(
                s,
                "xfrm policy add src {remote} dst {local} dir in priority 1000 \
                 tmpl src {REMOTE} dst {LOCAL} proto esp reqid {reqid:#x} mode tunnel"
            )?;
        }
        if remove && !o.policies_only {
            writeln!(
                s,
                "xfrm state delete dst {REMOTE} proto esp spi {:#x}",
                spi_out(i)
            )?;
            writeln!(
                s,
                "xfrm state delete dst {LOCAL} proto esp spi {:#x}",
                spi_in(i)
            )?;
        }
    }
    Ok(s)
}

fn run_ip_batch(script: &str) -> Res<Duration> {
    let path = std::env::temp_dir().join(format!("strait-bench-{}.batch", std::process::id()));
    std::fs::write(&path, script)?;
    let t = Instant::now();
    let out = Command::new("ip").arg("-batch").arg(&path).output()?;
    let d = t.elapsed();
    let _ = std::fs::remove_file(&path);
    if !out.status.success() {
        return Err(format!("ip -batch failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(d)
}

async fn strait_install(x: &Xfrm, objs: &Objects) -> Res<Duration> {
    let t = Instant::now();
    for sa in &objs.sas {
        x.add_sa(sa).await?;
    }
    for p in &objs.policies {
        x.add_policy(p).await?;
    }
    Ok(t.elapsed())
}

/// Removal one object at a time, each checked for ownership first (what the agent does).
async fn strait_remove(x: &Xfrm, objs: &Objects) -> Res<Duration> {
    let t = Instant::now();
    for p in &objs.policies {
        x.delete_policy(&p.id()).await?;
    }
    for sa in &objs.sas {
        x.delete_sa(&sa.id()).await?;
    }
    Ok(t.elapsed())
}

async fn strait_sweep(x: &Xfrm) -> Res<Duration> {
    let t = Instant::now();
    x.flush_ours().await?;
    Ok(t.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn check_empty(x: &Xfrm) -> Res<()> {
    let (s, p) = (x.list_sas().await?.len(), x.list_policies().await?.len());
    if s + p != 0 {
        return Err(format!("{s} SAs and {p} policies left over").into());
    }
    Ok(())
}

async fn bench(o: &Opts) -> Res<()> {
    let x = Xfrm::open()?;
    let objs = objects(o)?;
    let (add_script, del_script) = (ip_batch(o, false)?, ip_batch(o, true)?);
    let mut t = [const { Vec::new() }; 5];
    for _ in 0..o.rounds {
        check_empty(&x).await?;
        t[0].push(strait_install(&x, &objs).await?);
        t[1].push(strait_remove(&x, &objs).await?);
        check_empty(&x).await?;
        strait_install(&x, &objs).await?;
        t[2].push(strait_sweep(&x).await?);
        check_empty(&x).await?;
        t[3].push(run_ip_batch(&add_script)?);
        t[4].push(run_ip_batch(&del_script)?);
        check_empty(&x).await?;
    }
    let [s_add, s_del, s_sweep, ip_add, ip_del] = t.map(median);
    let what = if o.policies_only {
        format!("{} policy pairs (no SAs)", o.pairs)
    } else {
        format!("{} SA pairs + {} policies", o.pairs, o.pairs * 2)
    };
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    let ratio = |a: Duration, b: Duration| format!("{:.2}", a.as_secs_f64() / b.as_secs_f64());
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "kernel {}, {what}, median of {} rounds\n",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim(),
        o.rounds
    )?;
    writeln!(
        out,
        "| step | strait-xfrm | ip -batch | ratio (strait / ip) |"
    )?;
    writeln!(out, "| --- | ---: | ---: | ---: |")?;
    writeln!(
        out,
        "| install | {} | {} | {} |",
        ms(s_add),
        ms(ip_add),
        ratio(s_add, ip_add)
    )?;
    writeln!(
        out,
        "| remove, one by one (ownership-checked) | {} | {} | {} |",
        ms(s_del),
        ms(ip_del),
        ratio(s_del, ip_del)
    )?;
    writeln!(
        out,
        "| remove, sweep (one dump + deletes) | {} | {} | {} |",
        ms(s_sweep),
        ms(ip_del),
        ratio(s_sweep, ip_del)
    )?;
    Ok(())
}

fn main() -> Res<()> {
    let o = opts()?;
    // A private namespace for the whole process (and the `ip` it starts): the host's XFRM
    // state is never touched. Done before any thread exists.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(bench(&o))
}
