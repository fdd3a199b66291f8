//! Zipf-shaped sizes and a Zipf sampler.

use super::rng::Rng;

/// Splits `total` into `n` Zipf-shaped parts: part `i` (0-based) is
/// proportional to `1 / (i + 1)^s`, no part is below `min`, and the parts
/// sum to exactly `total` (when `total >= n * min`). Parts are
/// non-increasing.
pub fn zipf_sizes(total: usize, n: usize, s: f64, min: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let min = min.min(total / n);
    let spare = total - min * n;
    let weights: Vec<f64> = (0..n).map(|i| 1.0 / ((i + 1) as f64).powf(s)).collect();
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| spare as f64 * w / sum).collect();
    let mut sizes: Vec<usize> = exact.iter().map(|x| x.floor() as usize).collect();
    let mut left = spare - sizes.iter().sum::<usize>();
    // Hand out what flooring lost, largest fraction first (ties: lower index).
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        let fa = exact[a] - exact[a].floor();
        let fb = exact[b] - exact[b].floor();
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    for i in order {
        if left == 0 {
            break;
        }
        sizes[i] += 1;
        left -= 1;
    }
    let mut out: Vec<usize> = sizes.into_iter().map(|x| x + min).collect();
    // Rounding may break monotonicity by one between equal-weight
    // neighbours; restore it without changing the sum.
    out.sort_unstable_by(|a, b| b.cmp(a));
    out
}

/// Samples ranks `0..n` with probability proportional to `1 / (rank + 1)^s`.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    /// A sampler over `n` ranks with exponent `s`.
    pub fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let mut cdf = Vec::with_capacity(n);
        for i in 0..n {
            acc += 1.0 / ((i + 1) as f64).powf(s);
            cdf.push(acc);
        }
        if acc > 0.0 {
            for c in &mut cdf {
                *c /= acc;
            }
        }
        Zipf { cdf }
    }

    /// A rank in `0..n` (0 when `n` is 0).
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        let i = self.cdf.partition_point(|c| *c <= u);
        i.min(self.cdf.len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_sum_and_shape() {
        let sizes = zipf_sizes(10_000, 20, 1.0, 1);
        assert_eq!(sizes.len(), 20);
        assert_eq!(sizes.iter().sum::<usize>(), 10_000);
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        // Zipf with s = 1: the first is about twice the second, three times the third.
        let r2 = sizes[0] as f64 / sizes[1] as f64;
        let r3 = sizes[0] as f64 / sizes[2] as f64;
        assert!((1.9..2.1).contains(&r2), "{sizes:?}");
        assert!((2.8..3.2).contains(&r3), "{sizes:?}");
        // Heavy head: the top quarter of tenants holds well over half the docs.
        let head: usize = sizes[..5].iter().sum();
        assert!(head * 100 / 10_000 > 55, "{sizes:?}");
        assert_eq!(zipf_sizes(5, 0, 1.0, 1), Vec::<usize>::new());
        let small = zipf_sizes(10, 4, 1.0, 2);
        assert_eq!(small.iter().sum::<usize>(), 10);
        assert!(small.iter().all(|s| *s >= 2), "{small:?}");
    }

    #[test]
    fn sampler_prefers_low_ranks() {
        let z = Zipf::new(10, 1.0);
        let mut rng = Rng::new(3);
        let mut counts = [0usize; 10];
        for _ in 0..20_000 {
            counts[z.sample(&mut rng)] += 1;
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[4] && counts[4] > counts[9]);
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((1.7..2.3).contains(&ratio), "{counts:?}");
    }
}
