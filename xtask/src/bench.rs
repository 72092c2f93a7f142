//! `cargo xtask bench [--quick | --instructions]`: every benchmark of the suite, then one
//! table of ratios. `--instructions` runs only row 1 counted in instructions under callgrind
//! (installing valgrind when missing), which does not drift with the machine's load.
//!
//! Each bench binary (see `benches/`) writes its rows to `target/nearcache-bench/<bench>.tsv`
//! — preformatted fields, tab-separated, so this crate needs no JSON parser — and a `.json`
//! with the raw numbers. This task clears old rows, runs the benches (the Redis one starts
//! its own `redis-server`, and a Redis Cluster for row 6's cluster variant, which is why
//! `redis-cli` must be installed too), and prints the rows as one table, also written as Markdown to
//! `target/nearcache-bench/summary.md` for `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::{cmd, redis};

/// The bench binaries, in the order of the table's rows.
const BENCHES: [&str; 6] = [
    "local",
    "stampede",
    "region_expiry",
    "expiry_churn",
    "redis",
    "memory",
];

/// The bench binary of `--instructions`.
const INSTRUCTIONS: [&str; 1] = ["instructions"];

const HEADER: [&str; 7] = [
    "#",
    "measure",
    "nearcache",
    "baseline",
    "ratio",
    "target",
    "",
];

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut quick = false;
    let mut instructions = false;
    for arg in args {
        match arg.as_str() {
            "--quick" => quick = true,
            "--instructions" => instructions = true,
            other => {
                return Err(format!(
                    "`cargo xtask bench` takes only `--quick` or `--instructions` (got `{other}`)"
                ));
            }
        }
    }
    let benches: &[&str] = if instructions {
        let valgrind = ensure_valgrind()?;
        eprintln!("xtask: counting instructions with {}", valgrind.display());
        &INSTRUCTIONS
    } else {
        let redis_server = redis::ensure_installed()?;
        eprintln!("xtask: the Redis benches use {}", redis_server.display());
        &BENCHES
    };

    let out = out_dir();
    for bench in benches {
        for ext in ["tsv", "json"] {
            let _ = std::fs::remove_file(out.join(format!("{bench}.{ext}")));
        }
    }

    let mut command = cmd::cargo();
    command.args(["bench", "--package", "nearcache-bench"]);
    for bench in benches {
        command.args(["--bench", bench]);
    }
    command.env("NEARCACHE_BENCH_OUT", &out);
    if quick {
        command.env("NEARCACHE_BENCH_QUICK", "1");
    }
    let ran = cmd::run(command);

    // Print what was measured even when a bench failed part-way.
    let (rows, missing) = read_rows(&out, benches);
    let mode = match (instructions, quick) {
        (true, _) => "instructions under callgrind (--instructions)",
        (false, true) => "quick run (--quick)",
        (false, false) => "full run",
    };
    let table = render(&rows, mode);
    println!("\n{}", table.text);
    let summary = out.join("summary.md");
    if let Err(error) = std::fs::write(&summary, &table.markdown) {
        eprintln!("xtask: cannot write {}: {error}", summary.display());
    } else {
        eprintln!("xtask: the table in Markdown is in {}", summary.display());
    }
    ran?;
    if !missing.is_empty() {
        return Err(format!("no rows from: {}", missing.join(", ")));
    }
    let missed = rows.iter().filter(|row| row[6] == "✗").count();
    if missed > 0 {
        eprintln!("xtask: {missed} row(s) miss their target (✗)");
    }
    Ok(())
}

const VALGRIND_HINT: &str = "install it with: sudo apt-get update && sudo apt-get install -y \
valgrind (or put a valgrind binary on PATH)";

/// The path of `valgrind`, installing it with apt-get first when it is missing and this
/// process may (root, or password-less sudo), as `redis::ensure_installed` does for
/// redis-server.
fn ensure_valgrind() -> Result<PathBuf, String> {
    if let Some(path) = redis::find_on_path("valgrind") {
        return Ok(path);
    }
    eprintln!("xtask: valgrind is not on PATH; --instructions needs it");
    crate::apt::install("valgrind", &["valgrind"], VALGRIND_HINT)?;
    redis::find_on_path("valgrind")
        .ok_or_else(|| format!("valgrind still not on PATH after installing; {VALGRIND_HINT}"))
}

/// Where the benches write: `$CARGO_TARGET_DIR/nearcache-bench` or `target/nearcache-bench`.
fn out_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmd::project_root().join("target"))
        .join("nearcache-bench")
}

/// Every bench's rows in order, and the benches that wrote none.
fn read_rows(
    out: &std::path::Path,
    benches: &[&'static str],
) -> (Vec<[String; 7]>, Vec<&'static str>) {
    let mut rows = Vec::new();
    let mut missing = Vec::new();
    for &bench in benches {
        let Ok(text) = std::fs::read_to_string(out.join(format!("{bench}.tsv"))) else {
            missing.push(bench);
            continue;
        };
        rows.extend(text.lines().filter(|l| !l.is_empty()).map(parse_line));
    }
    (rows, missing)
}

fn parse_line(line: &str) -> [String; 7] {
    let mut fields = line.split('\t').map(str::to_owned);
    std::array::from_fn(|_| fields.next().unwrap_or_default())
}

struct Table {
    text: String,
    markdown: String,
}

fn render(rows: &[[String; 7]], mode: &str) -> Table {
    let width = |i: usize| {
        rows.iter()
            .map(|row| row[i].chars().count())
            .chain([HEADER[i].chars().count()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..HEADER.len()).map(width).collect();
    let line = |fields: &[&str]| {
        let mut text = String::new();
        for (field, w) in fields.iter().zip(&widths) {
            let pad = w.saturating_sub(field.chars().count());
            let _ = write!(text, "{field}{}  ", " ".repeat(pad));
        }
        text.trim_end().to_owned()
    };

    let conditions = conditions(mode);
    let mut text = format!("nearcache benchmarks — {conditions}\n");
    text.push_str(&line(&HEADER));
    text.push('\n');
    text.push_str(
        &"-".repeat(
            widths
                .iter()
                .map(|w| w + 2)
                .sum::<usize>()
                .saturating_sub(2),
        ),
    );
    text.push('\n');
    let mut markdown = format!("Conditions: {conditions}\n\n| {} |\n|", HEADER.join(" | "));
    markdown.push_str(&"---|".repeat(HEADER.len()));
    markdown.push('\n');
    for row in rows {
        let fields: Vec<&str> = row.iter().map(String::as_str).collect();
        text.push_str(&line(&fields));
        text.push('\n');
        let cells: Vec<String> = fields.iter().map(|f| f.replace('|', "\\|")).collect();
        let _ = writeln!(markdown, "| {} |", cells.join(" | "));
    }
    Table { text, markdown }
}

/// Date, cores, CPU model, load: the conditions a table was measured in.
fn conditions(mode: &str) -> String {
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown date".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{date}, {cores} cores, {cpu}, load average {load} at the end, {mode}")
}
