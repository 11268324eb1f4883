//! Log setup. The bot's own lines never carry message text, visitor ids or
//! room ids; the SDK's lines do at info and below, so its targets stay at
//! warn unless the operator names them on purpose in `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Turns a `RUST_LOG`-style spec into the filter actually used: a bare
/// level ("debug") applies to intake-bot only; `target=level` directives
/// are kept as written; everything else stays at warn.
pub fn filter_spec(rust_log: Option<&str>) -> String {
    let mut own = "info".to_owned();
    let mut extra = Vec::new();
    for d in rust_log.unwrap_or("").split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if d.contains('=') || d.contains("::") || d.contains('[') {
            extra.push(d.to_owned());
        } else {
            own = d.to_owned();
        }
    }
    let mut spec = format!("warn,intake_bot={own}");
    for e in extra {
        spec.push(',');
        spec.push_str(&e);
    }
    spec
}

/// Installs the global subscriber, writing to stderr.
pub fn init(format: LogFormat) {
    let spec = filter_spec(std::env::var("RUST_LOG").ok().as_deref());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("RUST_LOG: {e}; using the default");
        EnvFilter::new(filter_spec(None))
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::filter_spec;

    #[test]
    fn bare_levels_stay_with_the_bot() {
        assert_eq!(filter_spec(None), "warn,intake_bot=info");
        assert_eq!(filter_spec(Some("trace")), "warn,intake_bot=trace");
        assert_eq!(filter_spec(Some("debug,matrix_sdk=info")), "warn,intake_bot=debug,matrix_sdk=info");
    }
}
