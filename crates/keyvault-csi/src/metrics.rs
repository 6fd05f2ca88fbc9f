//! `/metrics` rendering. The metrics themselves live with what they measure: `driver::metrics` and
//! `keyvault::metrics`.

use prometheus_client::registry::Registry;

/// Renders the registry (OpenMetrics text).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}
