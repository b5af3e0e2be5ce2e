//! The human-readable summary of a result, written to any `Write` (only the binary prints).

use std::io::{self, Write};

use crate::result::{FortioResult, HistogramData};

/// Writes the summary: achieved against requested rate, both latencies, codes, errors.
pub fn write_summary(w: &mut impl Write, r: &FortioResult) -> io::Result<()> {
    let protocol = match &r.alpn_protocols {
        // TLS: what ALPN chose, by socket.
        Some(alpn) => {
            let chosen: Vec<String> = alpn.iter().map(|(p, n)| format!("{p} on {n}")).collect();
            format!("TLS, {}", chosen.join(", "))
        }
        None if r.h2 => "h2c".to_string(),
        None => "HTTP/1.1".to_string(),
    };
    writeln!(
        w,
        "Target     {} ({} connections, {protocol})",
        r.url, r.num_threads
    )?;
    let rate = if r.requested_qps == "max" {
        "max rate".to_string()
    } else {
        format!("{} req/s", r.requested_qps)
    };
    writeln!(w, "Requested  {rate}, {}", r.requested_duration)?;
    let count: u64 = r.ret_codes.values().sum();
    let errors = r.error_count();
    let secs = r.actual_duration as f64 / 1e9;
    let share = match r.requested_qps.parse::<f64>() {
        Ok(q) if q > 0.0 => format!(" ({:.2}% of requested)", 100.0 * r.actual_qps / q),
        _ => String::new(),
    };
    writeln!(
        w,
        "Achieved   {:.1} req/s{share} over {secs:.3}s: {count} requests, {errors} errors ({:.2}%)",
        r.actual_qps,
        if count > 0 {
            100.0 * errors as f64 / count as f64
        } else {
            0.0
        }
    )?;
    if r.interrupted {
        writeln!(
            w,
            "Interrupted: stopped before its end; figures cover what was measured"
        )?;
    }
    let codes: Vec<String> = r
        .ret_codes
        .iter()
        .map(|(c, n)| format!("{c}: {n}"))
        .collect();
    writeln!(
        w,
        "Codes      {}",
        if codes.is_empty() {
            "(none)".into()
        } else {
            codes.join("  ")
        }
    )?;
    if !r.error_kinds.is_empty() {
        let kinds: Vec<String> = r
            .error_kinds
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        writeln!(w, "Errors -1  {}", kinds.join("  "))?;
    }
    write_latency_table(w, r)
}

fn write_latency_table(w: &mut impl Write, r: &FortioResult) -> io::Result<()> {
    let Some(percentiles) = r.duration_histogram.percentiles.as_ref() else {
        return writeln!(w, "Latency    (no responses)");
    };
    write!(w, "Latency ms")?;
    for p in percentiles {
        write!(w, "{:>10}", format!("p{}", p.percentile))?;
    }
    writeln!(w, "{:>10}", "max")?;
    row(
        w,
        "service",
        &r.duration_histogram,
        "from the actual send (as Fortio reports)",
    )?;
    row(
        w,
        "response",
        &r.response_time_histogram,
        "from the due time (corrected for coordinated omission)",
    )?;
    if let Some(lag) = &r.schedule_lag_histogram {
        row(w, "lag", lag, "how late requests left against the schedule")?;
    }
    // Opening sockets is not a request's latency: shown apart, per socket.
    if r.connection_stats.count > 0 {
        row(
            w,
            "connect",
            &r.connection_stats,
            "TCP connect, per socket (not in the above)",
        )?;
    }
    if let Some(tls) = r.tls_handshake_histogram.as_ref().filter(|h| h.count > 0) {
        row(
            w,
            "tls",
            tls,
            "TLS handshake, per socket (not in the above)",
        )?;
    }
    Ok(())
}

fn row(w: &mut impl Write, name: &str, h: &HistogramData, note: &str) -> io::Result<()> {
    write!(w, "{name:<10}")?;
    for p in h.percentiles.iter().flatten() {
        write!(w, "{:>10.3}", p.value * 1e3)?;
    }
    writeln!(w, "{:>10.3}  {note}", h.max * 1e3)
}
