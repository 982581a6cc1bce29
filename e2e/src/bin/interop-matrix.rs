//! Renders the interop matrix from a run's records (`$STRAIT_MATRIX_DIR`, see
//! `strait_e2e::matrix`) and puts it into `docs/interop.md`, or checks that the table there is
//! this run's.
//!
//! ```text
//! interop-matrix DIR                    print the table
//! interop-matrix DIR --write FILE       replace the table in FILE (between its markers)
//! interop-matrix DIR --check FILE       exit 1 if FILE's table differs from DIR's
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use strait_e2e::matrix;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("interop-matrix: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (dir, action) = match args.as_slice() {
        [dir] => (dir, None),
        [dir, flag, file] if flag == "--write" || flag == "--check" => {
            (dir, Some((flag.as_str(), PathBuf::from(file))))
        }
        _ => bail!("usage: interop-matrix DIR [--write FILE | --check FILE]"),
    };
    let records = matrix::load(dir.as_ref()).with_context(|| format!("reading {dir}"))?;
    if records.is_empty() {
        bail!("{dir} holds no records: did the interop tests run with STRAIT_MATRIX_DIR set?");
    }
    let table = matrix::render(&records);
    let Some((flag, file)) = action else {
        print!("{table}");
        return Ok(ExitCode::SUCCESS);
    };
    let doc =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let Some(new) = matrix::splice(&doc, &table) else {
        bail!(
            "{} has no {} ... {} markers",
            file.display(),
            matrix::BEGIN,
            matrix::END
        );
    };
    if flag == "--write" {
        std::fs::write(&file, new).with_context(|| format!("writing {}", file.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    if new == doc {
        println!("{}: the interop matrix is this run's", file.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: the interop matrix differs from this run's; regenerate it with\n  cargo run -p strait-e2e --bin interop-matrix -- {dir} --write {}\nfirst differences (doc | run):",
        file.display(),
        file.display()
    );
    let (old, fresh): (Vec<&str>, Vec<&str>) = (doc.lines().collect(), new.lines().collect());
    let mut shown = 0;
    for i in 0..old.len().max(fresh.len()) {
        let (a, b) = (old.get(i).copied(), fresh.get(i).copied());
        if a != b {
            println!("- {}\n+ {}", a.unwrap_or(""), b.unwrap_or(""));
            shown += 1;
            if shown == 10 {
                break;
            }
        }
    }
    Ok(ExitCode::FAILURE)
}
