//! The kernels' tests: every inner product against a float64 reference in every format, the portable loops
//! against the SIMD ones, softmax and attention, the four-row and four-input kernels against the one-row kernel,
//! stacking, and the format table against what packing produces.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

use super::*;

fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
    let v = crate::sampling::Rng::values(seed, rows * cols);
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

/// The format table says how many elements of each plane a row holds: true of every format packing makes.
#[test]
fn the_format_table_matches_what_packing_makes() {
    let w = random(4, 512, 2);
    let mut seen = std::collections::BTreeSet::new();
    for dtype in [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ] {
        let q = QTensor::quantize(&w, dtype).unwrap();
        let p = PackedMatrix::from_qtensor(&q).unwrap();
        assert_eq!(p.format.check_shape(p.rows, p.cols), Ok(()), "{dtype:?}");
        assert!(p.is_quantized(), "{dtype:?}");
        assert!(p
            .format
            .planes()
            .iter()
            .any(|pl| matches!(pl, format::Plane::U8(_) | format::Plane::I8(_))));
        seen.insert(p.format_name());
    }
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let p = PackedMatrix::from_dense(&w.to_dtype(dtype).unwrap()).unwrap();
        assert_eq!(p.format.check_shape(p.rows, p.cols), Ok(()), "{dtype:?}");
        assert!(!p.is_quantized());
        seen.insert(p.format_name());
    }
    // `--quantize` keeps float32 scales.
    let dense = PackedMatrix::from_dense(&w).unwrap();
    for kind in [Quantize::Q8_0, Quantize::Q4_1] {
        let p = dense.quantized(kind).unwrap();
        assert_eq!(p.format.check_shape(p.rows, p.cols), Ok(()), "{kind}");
        seen.insert(p.format_name());
    }
    assert_eq!(seen.len(), 11, "every format was checked: {seen:?}");
}

/// Every kernel, for every format and shape class (576-wide rows included), against a float64 reference.
#[test]
fn kernels_match_a_plain_reference() {
    let shapes = [
        (1usize, 64usize, 576usize),
        (3, 40, 576),
        (1, 16, 1536),
        (5, 8, 64),
        (2, 7, 96),
        // Batches of eight and more, odd row counts (the two-row kernels and their remainders).
        (8, 12, 576),
        (13, 9, 96),
        // Prompts: the GEMM on widened panels (GEMM_MIN_INPUTS and more), rows past one panel.
        (40, 100, 576),
        (33, 7, 96),
        // K-quant rows (multiples of 256): one input, a batch, a prompt.
        (1, 20, 512),
        (6, 9, 768),
        (34, 11, 256),
    ];
    for (m, rows, cols) in shapes {
        let w = random(rows, cols, 2);
        let x: Vec<f32> = random(m, cols, 3).flatten_all().unwrap().to_vec1().unwrap();
        let mut mats = vec![
            PackedMatrix::from_dense(&w).unwrap(),
            PackedMatrix::from_dense(&w.to_dtype(DType::BF16).unwrap()).unwrap(),
            PackedMatrix::from_dense(&w.to_dtype(DType::F16).unwrap()).unwrap(),
        ];
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
        ] {
            mats.push(PackedMatrix::from_qtensor(&QTensor::quantize(&w, dtype).unwrap()).unwrap());
        }
        if cols % 256 == 0 {
            for dtype in [
                GgmlDType::Q4K,
                GgmlDType::Q5K,
                GgmlDType::Q6K,
                GgmlDType::Q3K,
                GgmlDType::Q2K,
            ] {
                mats.push(
                    PackedMatrix::from_qtensor(&QTensor::quantize(&w, dtype).unwrap()).unwrap(),
                );
            }
        }
        for p in &mats {
            let wf = p.to_f32();
            let mut out = vec![0f32; m * rows];
            p.matmul(&x, m, &mut out);
            for t in 0..m {
                for r in 0..rows {
                    let terms = (0..cols).map(|c| wf[r * cols + c] as f64 * x[t * cols + c] as f64);
                    let exact: f64 = terms.clone().sum();
                    // Rounding error of a dot product scales with Σ|w·x|; 16-bit activations allow a few 1e-5 of it.
                    let magnitude: f64 = terms.map(f64::abs).sum();
                    let got = out[t * rows + r] as f64;
                    assert!(
                        (got - exact).abs() <= 5e-5 * magnitude + 1e-6,
                        "{} m={m} rows={rows} cols={cols} kernel={}: {got} vs {exact}",
                        p.format_name(),
                        Kernel::detect().name()
                    );
                }
            }
        }
    }
}

/// Softmax (the SIMD exponential included) against float64, for lengths around the vector width, scores
/// spread over ±30 and some far below the maximum (their exponential underflows to zero).
#[test]
fn softmax_matches_a_float64_reference() {
    let mut rng = crate::sampling::Rng::new(11);
    for kernel in [Kernel::Portable, Kernel::detect()] {
        for n in [1usize, 7, 8, 29, 300] {
            let mut s: Vec<f32> = (0..n)
                .map(|i| match i % 13 {
                    5 => -200.0,
                    _ => (rng.next_f64() * 60.0 - 30.0) as f32,
                })
                .collect();
            let max = s.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let total: f64 = s.iter().map(|&v| (v as f64 - max).exp()).sum();
            let want: Vec<f64> = s.iter().map(|&v| (v as f64 - max).exp() / total).collect();
            kernel.softmax(&mut s);
            // Float32 rounds `v − max` (up to 60 here) to 2^-24 of itself: a few 1e-6 of each result.
            for (i, (&have, &want)) in s.iter().zip(&want).enumerate() {
                assert!(
                    (have as f64 - want).abs() <= 5e-6 * want + 1e-30,
                    "{} n={n} [{i}]: {have} vs {want}",
                    kernel.name()
                );
            }
        }
        // A NaN score (a broken model) makes every probability NaN, as the scalar exponential does, instead
        // of vanishing from the softmax.
        let mut s = vec![1.0f32, 2.0, 0.5, f32::NAN, -1.0, 3.0, 0.0, 1.5, 2.5];
        kernel.softmax(&mut s);
        assert!(s.iter().all(|v| v.is_nan()), "{}: {s:?}", kernel.name());
    }
}

/// Attention's kernels, portable and detected (AVX2 or NEON), against float64: a query's scores against strided
/// keys and the probability-weighted sum of strided values added to what the output holds, over float32 and
/// float16 caches, head sizes with and without a tail past the vector width, one key to several.
#[test]
fn attention_kernels_match_a_float64_reference() {
    use crate::sampling::Rng;
    for kernel in [Kernel::Portable, Kernel::detect()] {
        for (seed, (hd, n, stride)) in [
            (64usize, 13usize, 64usize),
            (36, 5, 40),
            (128, 9, 192),
            (80, 1, 80),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = seed as u64 * 10;
            let k = Rng::values(seed, n * stride);
            let k16: Vec<u16> = k
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect();
            let k16_wide: Vec<f32> = k16
                .iter()
                .map(|&b| half::f16::from_bits(b).to_f32())
                .collect();
            let q = Rng::values(seed + 1, hd);
            let p: Vec<f32> = Rng::values(seed + 2, n)
                .iter()
                .map(|v| v.abs() / 2.0)
                .collect();
            let base = Rng::values(seed + 3, hd);
            for f16_cache in [false, true] {
                let cache = if f16_cache { &k16_wide } else { &k };
                let what = format!("{} hd={hd} n={n} f16={f16_cache}", kernel.name());
                let mut scores = vec![0f32; n];
                let mut sums = base.clone();
                if f16_cache {
                    kernel.scores_f16(&k16, stride, &q, &mut scores);
                    kernel.weighted_sum_f16(&k16, stride, &p, &mut sums);
                } else {
                    kernel.scores_f32(&k, stride, &q, &mut scores);
                    kernel.weighted_sum_f32(&k, stride, &p, &mut sums);
                }
                // Float32 rounding of sums of up to 128 terms: a few 1e-6 of the terms' magnitude.
                for (j, &have) in scores.iter().enumerate() {
                    let terms = (0..hd).map(|d| cache[j * stride + d] as f64 * q[d] as f64);
                    let (want, magnitude) =
                        terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
                    assert!(
                        (have as f64 - want).abs() <= 1e-5 * magnitude + 1e-6,
                        "{what}: score {j}: {have} vs {want}"
                    );
                }
                for (d, &have) in sums.iter().enumerate() {
                    let terms = (0..n).map(|j| p[j] as f64 * cache[j * stride + d] as f64);
                    let (want, magnitude) = terms
                        .fold((base[d] as f64, base[d].abs() as f64), |(s, m), t| {
                            (s + t, m + t.abs())
                        });
                    assert!(
                        (have as f64 - want).abs() <= 1e-5 * magnitude + 1e-6,
                        "{what}: column {d}: {have} vs {want}"
                    );
                }
            }
        }
    }
}

/// The portable loops agree with the SIMD ones (each is also checked against the reference above).
#[test]
fn portable_and_detected_kernels_agree() {
    let w = random(4, 512, 5);
    let x: Vec<f32> = random(1, 512, 6).flatten_all().unwrap().to_vec1().unwrap();
    let xq = crate::kernels::QuantizedInput::new(&x);
    let kernel = Kernel::detect();
    for dtype in [
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
        GgmlDType::Q2K,
    ] {
        let p = PackedMatrix::from_qtensor(&QTensor::quantize(&w, dtype).unwrap()).unwrap();
        let (a, b) = match &p.format {
            Format::Q4 { qs, dm } => (
                scalar::dot_q4(&qs[..256], &dm[..32], &xq),
                kernel.dot_q4(&qs[..256], &dm[..32], &xq),
            ),
            Format::Q8 { qs, dm } => (
                scalar::dot_q8(&qs[..512], &dm[..32], &xq),
                kernel.dot_q8(&qs[..512], &dm[..32], &xq),
            ),
            Format::Q8Sub { qs, dm } => (
                scalar::dot_q8sub(&qs[..512], &dm[..64], &xq),
                kernel.dot_q8sub(&qs[..512], &dm[..64], &xq),
            ),
            Format::Q8X16 { qs, sc, d } => (
                scalar::dot_q8x16(&qs[..512], &sc[..32], &d[..2], &xq),
                kernel.dot_q8x16(&qs[..512], &sc[..32], &d[..2], &xq),
            ),
            Format::Q5K { qs, sm, d } => (
                scalar::dot_q5k(&qs[..512], &sm[..32], &d[..4], &xq),
                kernel.dot_q5k(&qs[..512], &sm[..32], &d[..4], &xq),
            ),
            Format::Q4K { qs, sm, d } => (
                scalar::dot_q4k(&qs[..256], &sm[..32], &d[..4], &xq),
                kernel.dot_q4k(&qs[..256], &sm[..32], &d[..4], &xq),
            ),
            Format::Q4H { qs, dm } => (
                scalar::dot_q4h(&qs[..256], &dm[..32], &xq),
                kernel.dot_q4h(&qs[..256], &dm[..32], &xq),
            ),
            Format::Q8H { qs, dm } => (
                scalar::dot_q8h(&qs[..512], &dm[..32], &xq),
                kernel.dot_q8h(&qs[..512], &dm[..32], &xq),
            ),
            _ => unreachable!(),
        };
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
            "{dtype:?}: {a} vs {b}"
        );
    }
}

/// The four-row kernels of a lone input and the four-input kernels of a batch do each row's arithmetic
/// exactly as the one-row kernel does, so an answer does not depend on which of them computed it.
#[test]
fn row_groups_and_batches_compute_each_row_as_one_row_alone() {
    let kernel = Kernel::detect();
    // 72 and 40 columns (dense only): the columns past the last 16 are summed one by one.
    for (rows, cols) in [
        (13usize, 576usize),
        (9, 1536),
        (8, 64),
        (11, 512),
        (7, 72),
        (5, 40),
    ] {
        let w = random(rows, cols, 11);
        let xs: Vec<f32> = random(5, cols, 12)
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let x = &xs[..cols];
        let k_quants: &[GgmlDType] = if cols % 256 == 0 {
            &[
                GgmlDType::Q4K,
                GgmlDType::Q5K,
                GgmlDType::Q6K,
                GgmlDType::Q3K,
                GgmlDType::Q2K,
            ]
        } else {
            &[]
        };
        let simple: &[GgmlDType] = if cols % 32 == 0 {
            &[
                GgmlDType::Q4_0,
                GgmlDType::Q4_1,
                GgmlDType::Q5_1,
                GgmlDType::Q8_0,
            ]
        } else {
            &[]
        };
        let mut mats: Vec<(String, PackedMatrix)> = simple
            .iter()
            .chain(k_quants)
            .map(|&dtype| {
                let q = QTensor::quantize(&w, dtype).unwrap();
                (
                    format!("{dtype:?}"),
                    PackedMatrix::from_qtensor(&q).unwrap(),
                )
            })
            .collect();
        // Quantized on load: the float32-scaled `Q8` and `Q4`.
        for kind in [
            crate::kernels::Quantize::Q8_0,
            crate::kernels::Quantize::Q4_1,
        ]
        .into_iter()
        .filter(|_| cols % 32 == 0)
        {
            let dense = PackedMatrix::from_dense(&w).unwrap();
            mats.push((kind.to_string(), dense.quantized(kind).unwrap()));
        }
        // Dense weights: float32 and bfloat16.
        mats.push(("f32".into(), PackedMatrix::from_dense(&w).unwrap()));
        mats.push((
            "bf16".into(),
            PackedMatrix::from_dense(&w.to_dtype(DType::BF16).unwrap()).unwrap(),
        ));
        for (dtype, p) in &mats {
            let xq = crate::kernels::QuantizedInput::new(x);
            let alone: Vec<f32> = (0..rows)
                .map(|r| p.row_dot(kernel, r, x, Some(&xq)))
                .collect();
            for r in (0..rows - 3).step_by(4) {
                if let Some(group) = p.rows4_dot(kernel, r, Some(&xq)) {
                    assert_eq!(group[..], alone[r..r + 4], "{dtype:?} rows {r}..{}", r + 4);
                }
            }
            let mut single = vec![0f32; rows];
            p.matmul(x, 1, &mut single);
            assert_eq!(
                single, alone,
                "{dtype:?} {rows}x{cols}: matmul of one input"
            );
            let mut batch = vec![0f32; 5 * rows];
            p.matmul(&xs, 5, &mut batch);
            for t in 0..5 {
                let xt = &xs[t * cols..(t + 1) * cols];
                let xq = crate::kernels::QuantizedInput::new(xt);
                let lone: Vec<f32> = (0..rows)
                    .map(|r| p.row_dot(kernel, r, xt, Some(&xq)))
                    .collect();
                assert_eq!(
                    batch[t * rows..(t + 1) * rows],
                    lone[..],
                    "{dtype:?} {rows}x{cols}: input {t} of a batch"
                );
            }
        }
    }
}

/// Stacked projections (q, k, v as one matrix) compute exactly what their parts compute, in every format;
/// parts in different formats are not stacked.
#[test]
fn stacked_matrices_compute_what_their_parts_compute() {
    let x: Vec<f32> = random(5, 96, 3).flatten_all().unwrap().to_vec1().unwrap();
    let builders: [fn(&Tensor) -> PackedMatrix; 4] = [
        |w| PackedMatrix::from_dense(w).unwrap(),
        |w| PackedMatrix::from_dense(&w.to_dtype(DType::BF16).unwrap()).unwrap(),
        |w| PackedMatrix::from_qtensor(&QTensor::quantize(w, GgmlDType::Q4_1).unwrap()).unwrap(),
        |w| PackedMatrix::from_qtensor(&QTensor::quantize(w, GgmlDType::Q8_0).unwrap()).unwrap(),
    ];
    for build in builders {
        let parts: Vec<PackedMatrix> = [(12, 1), (4, 2), (4, 3)]
            .iter()
            .map(|&(rows, seed)| build(&random(rows, 96, seed)))
            .collect();
        let mut separate = Vec::new();
        for p in &parts {
            let mut out = vec![0f32; 5 * p.rows];
            p.matmul(&x, 5, &mut out);
            separate.push(out);
        }
        let stacked = PackedMatrix::stack_rows(parts).unwrap();
        assert_eq!((stacked.rows, stacked.cols), (20, 96));
        let mut out = vec![0f32; 5 * 20];
        stacked.matmul(&x, 5, &mut out);
        for t in 0..5 {
            let mut expect = Vec::new();
            for (p, rows) in separate.iter().zip([12, 4, 4]) {
                expect.extend_from_slice(&p[t * rows..(t + 1) * rows]);
            }
            assert_eq!(
                &out[t * 20..(t + 1) * 20],
                &expect[..],
                "{}",
                stacked.format_name()
            );
        }
    }
    let mixed = vec![
        PackedMatrix::from_dense(&random(4, 96, 1)).unwrap(),
        PackedMatrix::from_dense(&random(4, 96, 2).to_dtype(DType::BF16).unwrap()).unwrap(),
    ];
    assert!(PackedMatrix::stack_rows(mixed).is_none());
}
