//! Numbers as an operator reads them at a glance: short, fixed width, units included.

/// Seconds as `850us`, `12ms`, `1.25s`, `2m05s`; `-` when unknown.
pub fn latency(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".into(),
        Some(s) if s < 0.001 => format!("{:.0}us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.0}ms", s * 1e3),
        Some(s) if s < 60.0 => format!("{s:.2}s"),
        Some(s) => {
            let s = s.round() as u64;
            format!("{}m{:02}s", s / 60, s % 60)
        }
    }
}

/// A duration since something happened, coarse: `4s`, `3m`, `2h`, `5d`.
pub fn age(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s < 10.0 {
        format!("{s:.1}s")
    } else if s < 60.0 {
        format!("{s:.0}s")
    } else if s < 3600.0 {
        format!("{:.0}m", (s / 60.0).floor())
    } else if s < 86400.0 {
        format!("{:.0}h", (s / 3600.0).floor())
    } else {
        format!("{:.0}d", (s / 86400.0).floor())
    }
}

/// Uptime as `45s`, `12m30s`, `3h05m`, `2d04h`.
pub fn uptime(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// A rate with three significant figures: `0.3`, `12.5`, `840`, `12.3k`.
pub fn rate(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.1}")
    } else if x < 1000.0 {
        format!("{x:.0}")
    } else if x < 100_000.0 {
        format!("{:.1}k", x / 1000.0)
    } else {
        format!("{:.0}k", x / 1000.0)
    }
}

/// A count that may be fractional when summed over engines: `12`, `-` when unknown.
pub fn count(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{x:.0}"))
}

pub fn percent(x: Option<f64>) -> String {
    x.map_or("-".into(), |x| format!("{:.0}%", x * 100.0))
}

/// A memory size in KiB, MiB or GiB.
pub fn bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let n = n as f64;
    if n < KIB * KIB {
        format!("{:.0} KiB", n / KIB)
    } else if n < KIB * KIB * KIB {
        format!("{:.1} MiB", n / (KIB * KIB))
    } else {
        format!("{:.1} GiB", n / (KIB * KIB * KIB))
    }
}

/// A bar of `width` cells for a share in 0..=1 (more than 1 fills it), in eighths.
pub fn bar(share: f64, width: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = (share.clamp(0.0, 1.0) * width as f64 * 8.0).round() as usize;
    let full = eighths / 8;
    let mut s = "█".repeat(full);
    if full < width {
        s.push(PARTS[eighths % 8]);
        s.push_str(&"·".repeat(width - full - 1));
    }
    s
}

/// A URL without its scheme, shortened in the middle to `width` characters.
pub fn short_url(url: &str, width: usize) -> String {
    let s = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= width || width < 5 {
        return s.to_string();
    }
    let tail = (width - 1) / 2;
    let head = width - 1 - tail;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// The gist of why a server is unhealthy, in a few words.
pub fn short_reason(reason: Option<&str>) -> &str {
    let Some(r) = reason else {
        return "unhealthy";
    };
    let lower = r.to_ascii_lowercase();
    if lower.contains("refused") {
        "refused"
    } else if lower.contains("time") {
        "time-out"
    } else if lower.contains("http 5") {
        "5xx"
    } else if lower.contains("draining") {
        "draining"
    } else {
        "failing"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_at_a_glance() {
        assert_eq!(latency(Some(0.000_85)), "850us");
        assert_eq!(latency(Some(0.0123)), "12ms");
        assert_eq!(latency(Some(1.254)), "1.25s");
        assert_eq!(latency(Some(125.0)), "2m05s");
        assert_eq!(latency(None), "-");
        assert_eq!(rate(0.25), "0.2");
        assert_eq!(rate(840.2), "840");
        assert_eq!(rate(12_345.0), "12.3k");
        assert_eq!(uptime(3725.0), "1h02m");
        assert_eq!(age(0.42), "0.4s");
        assert_eq!(age(200.0), "3m");
        assert_eq!(percent(Some(0.456)), "46%");
    }

    #[test]
    fn bars_have_a_fixed_width() {
        for share in [0.0, 0.1, 0.5, 0.99, 1.0, 3.0] {
            assert_eq!(bar(share, 6).chars().count(), 6, "{share}");
        }
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.5, 4), "██ ·");
    }

    #[test]
    fn urls_shorten_in_the_middle() {
        assert_eq!(short_url("http://gpu-1:8000", 20), "gpu-1:8000");
        let s = short_url("http://a-very-long-hostname.internal.example:8000", 15);
        assert_eq!(s.chars().count(), 15);
        assert!(s.starts_with("a-very") && s.ends_with(":8000"), "{s}");
        assert_eq!(short_reason(Some("connection refused")), "refused");
        assert_eq!(short_reason(Some("HTTP 500")), "5xx");
    }
}
