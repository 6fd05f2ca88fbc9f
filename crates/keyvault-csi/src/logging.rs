//! Log setup: klog-style `-v` levels mapped onto `tracing`, text or JSON, on stderr.

use tracing_subscriber::EnvFilter;

/// Our crates log at the level `-v` asks for; dependencies stay at `warn` (their trace output can
/// include request headers, which may carry bearer tokens) unless `-v` is 10 or more.
pub fn filter_for(verbosity: u8) -> String {
    let ours = match verbosity {
        0 | 1 => "info",
        2..=4 => "debug",
        _ => "trace",
    };
    let deps = if verbosity >= 10 { "debug" } else { "warn" };
    format!("{deps},keyvault_csi={ours},driver={ours},keyvault={ours},sync={ours}")
}

/// Installs the global subscriber.
pub fn init(verbosity: u8, json: bool) {
    let filter = EnvFilter::new(filter_for(verbosity));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.with_ansi(false).init();
    }
}
