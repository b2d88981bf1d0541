//! Python prometheus_client's text format, byte for byte: how it writes numbers (Python's
//! `repr`, then Go's switch to exponents: `1.796221897876186e+09`), and series with their
//! labels sorted by name, as vLLM 0.32's `/metrics` shows them.

use std::fmt::Write as _;

/// Writes `v` as prometheus_client's `floatToGoString` does: `12.0`, `0.4213`, `NaN`, `+Inf`,
/// and a positive number with more than six digits before the point in Go's exponent form.
pub fn fmt_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
        return;
    }
    let s = python_repr(v);
    match s.find('.') {
        Some(dot) if v > 0.0 && dot > 6 => {
            let digits = format!("{}{}", &s[1..dot], &s[dot + 1..]);
            let mantissa = format!("{}.{digits}", &s[..1]);
            let mantissa = mantissa.trim_end_matches(['0', '.']);
            let _ = write!(out, "{mantissa}e+0{}", dot - 1);
        }
        _ => out.push_str(&s),
    }
}

/// Python's `repr(float)`: the shortest digits that read back the same, positional from 1e-4
/// up to 1e16 (with at least one decimal), in exponent form (`1e-05`, `1.5e+16`) outside.
fn python_repr(v: f64) -> String {
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` gives the same shortest digits: "-1.2345e-7".
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    let (sign, mantissa) = mantissa
        .strip_prefix('-')
        .map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-4..16).contains(&exp) {
        let m = if digits.len() == 1 {
            digits.clone()
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{m}e{esign}{:02}", exp.abs());
    }
    let point = exp + 1; // digits before the decimal point
    if point <= 0 {
        let zeros = "0".repeat((-point) as usize);
        format!("{sign}0.{zeros}{digits}")
    } else if (point as usize) >= digits.len() {
        let zeros = "0".repeat(point as usize - digits.len());
        format!("{sign}{digits}{zeros}.0")
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{sign}{int}.{frac}")
    }
}

/// `# HELP` and `# TYPE` of one family.
pub fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// One series, its labels written in name order as prometheus_client writes them.
pub fn series(out: &mut String, name: &str, labels: &[(&str, &str)], v: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        let mut sorted: Vec<&(&str, &str)> = labels.iter().collect();
        sorted.sort_by_key(|(k, _)| *k);
        out.push('{');
        for (i, (k, val)) in sorted.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{val}\"");
        }
        out.push('}');
    }
    out.push(' ');
    fmt_value(out, v);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(v: f64) -> String {
        let mut s = String::new();
        fmt_value(&mut s, v);
        s
    }

    #[test]
    fn numbers_are_written_as_prometheus_client_writes_them() {
        // Each right-hand side is what vLLM 0.32's /metrics or Python printed for the value.
        for (v, python) in [
            (12.0, "12.0"),
            (0.4213, "0.4213"),
            (0.003907203907203893, "0.003907203907203893"),
            (4.047337055206299, "4.047337055206299"),
            (1.796221897876186e9, "1.796221897876186e+09"),
            (1.7962218978755803e9, "1.7962218978755803e+09"),
            (5.387538432e9, "5.387538432e+09"),
            (9.56841984e8, "9.56841984e+08"),
            (1.79622181697e9, "1.79622181697e+09"),
            (24.259999999999998, "24.259999999999998"),
            (20000.0, "20000.0"),
            (1073741824.0, "1.073741824e+09"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (0.0, "0.0"),
            (-1.0, "-1.0"),
            (1e16, "1e+16"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
        ] {
            assert_eq!(written(v), python, "{v:e}");
        }
    }

    #[test]
    fn labels_are_sorted_by_name() {
        let mut s = String::new();
        series(
            &mut s,
            "vllm:x_bucket",
            &[("model_name", "m"), ("engine", "0"), ("le", "0.5")],
            2.0,
        );
        assert_eq!(
            s,
            "vllm:x_bucket{engine=\"0\",le=\"0.5\",model_name=\"m\"} 2.0\n"
        );
    }
}
