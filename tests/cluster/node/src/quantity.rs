//! Kubernetes resource quantities ("500m", "64Gi", "1e3") as numbers, for the downward API's
//! resourceFieldRef and emptyDir size limits.

/// The value of a quantity in base units (cores, bytes), or `None` if it is not a quantity.
pub fn parse(text: &str) -> Option<f64> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if number.is_empty() || number == "+" || number == "-" {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            10f64.powi(e)
        }
        _ => return None,
    };
    Some(value * scale)
}

/// A quantity rounded up to whole base units (bytes), as tmpfs `size=` wants it.
pub fn bytes(text: &str) -> Option<u64> {
    let v = parse(text)?;
    (v >= 0.0).then(|| v.ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_suffix_families() {
        assert_eq!(parse("500m"), Some(0.5));
        assert_eq!(parse("2"), Some(2.0));
        assert_eq!(parse("64Gi"), Some(64.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse("1k"), Some(1000.0));
        assert_eq!(parse("1e3"), Some(1000.0));
        assert_eq!(parse("1.5Mi"), Some(1.5 * 1024.0 * 1024.0));
        assert_eq!(bytes("1Ki"), Some(1024));
        assert_eq!(bytes("100m"), Some(1));
    }

    #[test]
    fn rejects_what_is_not_a_quantity() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("Gi"), None);
        assert_eq!(parse("12XB"), None);
        assert_eq!(parse("abc"), None);
        assert_eq!(bytes("-1"), None);
    }
}
