//! Small statistics and formatting helpers shared by the report sections.

/// The median of `v` (the upper one of the two middle values for an even
/// count); NaN when `v` is empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `value / reference` with one decimal, or `-` when either is missing.
pub fn ratio(value: f64, reference: f64) -> String {
    if value.is_finite() && reference.is_finite() && reference > 0.0 {
        format!("{:.1}", value / reference)
    } else {
        "-".into()
    }
}

/// Seconds with `decimals` places, or `failed` for a missing figure.
pub fn secs(value: f64, decimals: usize) -> String {
    if value.is_finite() {
        format!("{value:.decimals$}")
    } else {
        "failed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn ratio_and_secs_handle_missing_figures() {
        assert_eq!(ratio(3.0, 1.5), "2.0");
        assert_eq!(ratio(3.0, f64::NAN), "-");
        assert_eq!(ratio(3.0, 0.0), "-");
        assert_eq!(secs(1.23456, 3), "1.235");
        assert_eq!(secs(f64::NAN, 2), "failed");
    }
}
