//! The Prometheus text exposition format (0.0.4) for every metrics page
//! qsync serves or writes: `qsync serve`'s and the agent's `/metrics`, and
//! the restore `--metrics-file`. One writer, so label escaping and the
//! HELP/TYPE header are the same everywhere.

use std::fmt::Write as _;

/// The `Content-Type` of a metrics page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// `name="value", ...` with values escaped as the format requires.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Appends one metric family to `out`: its HELP and TYPE lines, then one
/// sample per `(labels, value)` (labels as [`labels`] renders them; empty
/// for none).
pub fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, f64)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values_and_writes_headers() {
        let mut out = String::new();
        let l = labels(&[("chain", "eth"), ("store", "C:\\x \"y\"")]);
        family(
            &mut out,
            "qsync_x_total",
            "counter",
            "Things.",
            [(l, 2.0), (String::new(), 1.5)],
        );
        assert_eq!(
            out,
            "# HELP qsync_x_total Things.\n# TYPE qsync_x_total counter\nqsync_x_total{chain=\"eth\",store=\"C:\\\\x \\\"y\\\"\"} 2\nqsync_x_total 1.5\n"
        );
    }
}
