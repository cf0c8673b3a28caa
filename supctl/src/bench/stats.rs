//! Small statistics over benchmark samples: median, percentiles, the
//! coefficient of variation.

/// The median, `None` for no samples. NaNs are ignored.
pub fn median(values: &[f64]) -> Option<f64> {
    percentile(values, 50.0)
}

/// The `p`-th percentile (0-100) by linear interpolation between closest
/// ranks, `None` for no samples. NaNs are ignored.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    #[allow(clippy::cast_precision_loss)] // sample counts are far below 2^52
    let rank = (p.clamp(0.0, 100.0) / 100.0) * (v.len() - 1) as f64;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 0 <= rank < len
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    #[allow(clippy::cast_precision_loss)]
    let frac = rank - lo as f64;
    Some(v[lo] + (v[hi] - v[lo]) * frac)
}

/// The arithmetic mean, `None` for no samples.
pub fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = values.len() as f64;
    Some(values.iter().sum::<f64>() / n)
}

/// Coefficient of variation (sample standard deviation over the mean);
/// 0 for a single sample, `None` for none or a zero mean.
pub fn coefficient_of_variation(values: &[f64]) -> Option<f64> {
    let m = mean(values)?;
    if m == 0.0 {
        return None;
    }
    if values.len() < 2 {
        return Some(0.0);
    }
    #[allow(clippy::cast_precision_loss)]
    let n = values.len() as f64;
    let var = values.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    Some(var.sqrt() / m.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_of_known_samples() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p99 = percentile(&v, 99.0).unwrap();
        assert!((p99 - 99.01).abs() < 1e-9, "{p99}");
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(coefficient_of_variation(&[5.0]), Some(0.0));
        let cv = coefficient_of_variation(&[9.0, 10.0, 11.0]).unwrap();
        assert!((cv - 0.1).abs() < 1e-12, "{cv}");
        assert_eq!(coefficient_of_variation(&[0.0, 0.0]), None);
    }
}
