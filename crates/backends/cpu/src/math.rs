//! Small f32 building blocks, written so the compiler can vectorise them.

/// Independent accumulator lanes of [`dot`]: enough to hide FMA latency and fill a 256-bit
/// register.
const LANES: usize = 8;

/// Dot product of the common prefix of `a` and `b`, accumulated in f32 over 8 lanes.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut acc = [0f32; LANES];
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7])) + tail
}

/// Sum of squares, accumulated like [`dot`].
#[inline]
pub fn sum_squares(a: &[f32]) -> f32 {
    dot(a, a)
}

/// `y += alpha * x` over the common prefix.
#[inline]
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// The logistic function as torch computes it in f32.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_covers_lanes_and_tail() {
        for n in [0usize, 1, 7, 8, 9, 16, 19, 33] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
            let b: Vec<f32> = (0..n)
                .map(|i| if i % 2 == 0 { 1.0 } else { -0.5 })
                .collect();
            let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert_eq!(dot(&a, &b), want, "n = {n}");
        }
        // 1*4 + 2*5 + 3*6
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
        assert_eq!(sum_squares(&[3.0, 4.0]), 25.0);
    }

    #[test]
    fn axpy_and_sigmoid() {
        let mut y = [1.0, 2.0];
        axpy(&mut y, 0.5, &[4.0, -2.0]);
        assert_eq!(y, [3.0, 1.0]);
        assert_eq!(sigmoid(0.0), 0.5);
        assert!((sigmoid(2.0) - 0.880_797_1).abs() < 1e-6);
    }
}
