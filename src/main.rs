//! The `intake-bot` command: parse the command line, load the config, set
//! up logging, and call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use intake_bot::config::{Config, Secrets};
use intake_bot::logging::{self, LogFormat};
use intake_bot::outcome::{
    self,
    stats::{By, Query, Report, Week},
};
use intake_bot::store::{Store, StoreError};

/// End-to-end-encrypted Matrix intake bot for an anonymous helpline.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The TOML configuration file.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Log line format (logs go to stderr; filter with RUST_LOG).
    #[arg(long, value_enum, default_value = "pretty")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the bot until SIGTERM or SIGINT.
    Run,
    /// Validate the config, print every problem, exit 1 on any.
    Check,
    /// Aggregate figures from the outcome store.
    Stats {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// First week to include: an ISO week (2026-W01) or a date in it (2026-01-01).
        #[arg(long, value_name = "WEEK|DATE", value_parser = Week::parse)]
        from: Option<Week>,
        /// Last week to include, same forms as --from.
        #[arg(long, value_name = "WEEK|DATE", value_parser = Week::parse)]
        to: Option<Week>,
        /// Also split the figures by week or by month.
        #[arg(long, value_enum)]
        by: Option<ByArg>,
    },
    /// One outcome record per line.
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ByArg {
    Week,
    Month,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ExportFormat {
    Jsonl,
    Csv,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Check => {
            println!("{}: ok", cli.config.display());
            Ok(())
        }
        Command::Run => {
            logging::init(cli.log_format);
            run(config)
        }
        Command::Stats { json, from, to, by } => {
            let by = match by {
                None => By::Total,
                Some(ByArg::Week) => By::Week,
                Some(ByArg::Month) => By::Month,
            };
            let query = Query { from, to, by, min_count: config.stats.min_count };
            stats(&config, json, &query)
        }
        Command::Export { format } => export(&config, format),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let in_use = matches!(e.downcast_ref::<StoreError>(), Some(StoreError::InUse(_)));
            eprintln!("intake-bot: {e:#}");
            ExitCode::from(if in_use { 2 } else { 1 })
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    limit_malloc_arenas();
    let secrets = Secrets::load(&config.matrix, config.privacy.purge_admin_token_file.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let ran = rt.block_on(async move { intake_bot::matrix::run(config, secrets, shutdown_signal()).await })?;
    // The SDK may hold background tasks; do not wait for them.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    if ran == intake_bot::matrix::Ran::Restart {
        // A new process, the same arguments and environment (secrets from
        // files are read again): the device was replaced and the old
        // store's files are closed with the old process.
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe().context("finding the running executable to restart it")?;
        let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec();
        return Err(err).context("restarting after the device change");
    }
    Ok(())
}

/// Two malloc arenas instead of glibc's default of eight per core.
///
/// The SDK's SQLite stores run on tokio's blocking threads (20-25 of them
/// under load), and glibc gives each thread that meets a locked arena one
/// of its own, each keeping freed memory for itself: at 200 open cases
/// the heap peaked at 55-57 MB with the default and 38-42 MB with two
/// arenas. The bot uses a tenth of a core, so contention for the arenas'
/// locks does not show. Called before any thread starts.
#[allow(unsafe_code)] // the one FFI call of the crate; nothing else needs it
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; no thread other
    // than this one exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn open_read(config: &Config) -> anyhow::Result<Vec<outcome::OutcomeRecord>> {
    match Store::open(&config.storage.data_dir, false) {
        Ok(s) => s.outcomes(),
        Err(e) if matches!(e.downcast_ref::<StoreError>(), Some(StoreError::Missing(_))) => {
            eprintln!("intake-bot: {e}; no records");
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

fn stats(config: &Config, json: bool, query: &Query) -> anyhow::Result<()> {
    if let (Some(f), Some(t)) = (query.from, query.to) {
        anyhow::ensure!(f <= t, "--from {f} is after --to {t}");
    }
    let records = open_read(config)?;
    let r = Report::compute(&records, &config.intake.questions, &config.monitor_figures(), query);
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let lang = config.intake.languages.first().map_or("en", String::as_str);
        print!("{}", r.to_text(&config.intake.questions, lang));
    }
    Ok(())
}

fn export(config: &Config, format: ExportFormat) -> anyhow::Result<()> {
    let records = open_read(config)?;
    match format {
        ExportFormat::Jsonl => {
            for r in &records {
                println!("{}", serde_json::to_string(r)?);
            }
        }
        ExportFormat::Csv => print!("{}", outcome::to_csv(&records, &config.intake.questions)),
    }
    Ok(())
}
