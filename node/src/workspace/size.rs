//! Sizes written by people: `200MB`, `1GiB`, `512M`, `4096` (bytes). Units are binary
//! (`MB` = `MiB`), as in Xen's own tools.

/// Parses a size; the error says what was expected.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("`{text}` has an unknown unit; use K, M, G or T (binary)")),
    };
    let value: f64 =
        num.parse().map_err(|_| format!("`{text}` is not a size like `200MB` or `1GiB`"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_units() {
        assert_eq!(parse_size("200MB"), Ok(200 << 20));
        assert_eq!(parse_size("200 MiB"), Ok(200 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert!(parse_size("12 parsecs").expect_err("must fail").contains("unknown unit"));
        assert!(parse_size("MB").expect_err("must fail").contains("not a size"));
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999T").expect_err("must fail").contains("too large"));
    }
}
