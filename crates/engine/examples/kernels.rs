//! Matrix–vector throughput of each kernel format, in GB/s of weights read, at a cache-resident and a
//! memory-resident size, on one thread and on all threads, and each quantized format's prompt product (128
//! inputs) through the integer GEMM beside the float32 GEMM, in GFLOP/s; then a decoding step's sequence of products
//! (SmolLM2's 30 layers of four matrices, memory-resident) beside one large matrix of as many bytes, which shows
//! what each small product's fixed cost takes from the bandwidth:
//! `cargo run --release -p vibecheck-engine --example kernels [FORMAT...|layers]`.
use std::time::Instant;
use vibecheck_engine::kernels::{Format, PackedMatrix, BLOCK};

fn lcg(seed: &mut u64) -> u32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*seed >> 33) as u32
}

fn matrix(kind: &str, rows: usize, cols: usize, seed: &mut u64) -> PackedMatrix {
    let n = rows * cols;
    let f = |s: &mut u64| (lcg(s) % 2000) as f32 / 1000.0 - 1.0;
    let format = match kind {
        "f32" => Format::F32 {
            w: (0..n).map(|_| f(seed)).collect(),
        },
        "bf16" => Format::Bf16 {
            w: (0..n).map(|_| (f(seed).to_bits() >> 16) as u16).collect(),
        },
        "q4" => Format::Q4 {
            qs: (0..n / 2).map(|_| lcg(seed) as u8).collect(),
            dm: (0..n / BLOCK * 2).map(|_| f(seed) * 0.01).collect(),
        },
        "q8" => Format::Q8 {
            qs: (0..n).map(|_| lcg(seed) as i8).collect(),
            dm: (0..n / BLOCK * 2).map(|_| f(seed) * 0.01).collect(),
        },
        "q4h" => Format::Q4H {
            qs: (0..n / 2).map(|_| lcg(seed) as u8).collect(),
            dm: (0..n / BLOCK * 2)
                .map(|_| half::f16::from_f32(f(seed) * 0.01).to_bits())
                .collect(),
        },
        "q8h" => Format::Q8H {
            qs: (0..n).map(|_| lcg(seed) as i8).collect(),
            dm: (0..n / BLOCK * 2)
                .map(|_| half::f16::from_f32(f(seed) * 0.01).to_bits())
                .collect(),
        },
        "q4k" => Format::Q4K {
            qs: (0..n / 2).map(|_| lcg(seed) as u8).collect(),
            sm: (0..n / 256 * 16).map(|_| (lcg(seed) % 64) as u8).collect(),
            d: (0..n / 256 * 2).map(|_| f(seed).abs() * 0.001).collect(),
        },
        "q8x16" => Format::Q8X16 {
            qs: (0..n).map(|_| (lcg(seed) % 64) as i8 - 32).collect(),
            sc: (0..n / 16).map(|_| (lcg(seed) % 128) as i8).collect(),
            d: (0..n / 256).map(|_| f(seed) * 0.001).collect(),
        },
        _ => unreachable!(),
    };
    PackedMatrix { rows, cols, format }
}

fn main() {
    let mut seed = 7u64;
    // Optional arguments name the formats to run (f32, bf16, q8, q8h, q4, q4h, q4k, q8x16); none runs all.
    let filter: Vec<String> = std::env::args().skip(1).collect();
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "kernel: {}",
        vibecheck_engine::kernels::Kernel::detect().name()
    );
    if filter.iter().any(|f| f == "layers") {
        layers(all, &mut seed);
        return;
    }
    for threads in [1, all] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for kind in ["f32", "bf16", "q8", "q8h", "q4", "q4h", "q4k", "q8x16"] {
            if !filter.is_empty() && !filter.iter().any(|f| f == kind) {
                continue;
            }
            for (rows, cols) in [(1536, 576), (49152, 576)] {
                let m = matrix(kind, rows, cols, &mut seed);
                let x: Vec<f32> = (0..cols)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                    .collect();
                let mut out = vec![0f32; rows];
                let reps = (400_000_000 / m.bytes()).clamp(3, 2000);
                pool.install(|| {
                    m.matmul(&x, 1, &mut out);
                    // Best of five trials, the two kernel shapes alternating: the machine is shared, and the best
                    // trial is the kernel's own speed.
                    let mut best = [f64::INFINITY; 2];
                    for _ in 0..5 {
                        for (g, b) in best.iter_mut().enumerate() {
                            vibecheck_engine::kernels::set_row_groups(g == 1);
                            let t = Instant::now();
                            for _ in 0..reps {
                                m.matmul(&x, 1, &mut out);
                            }
                            *b = b.min(t.elapsed().as_secs_f64());
                        }
                    }
                    let gbs = |s: f64| m.bytes() as f64 * reps as f64 / s / 1e9;
                    println!(
                        "{threads} thr {kind:>4} {rows:>6}x{cols}: {:7.1} GB/s  {:8.1} us/product   (row at a time: {:5.1} GB/s, x{:.2})",
                        gbs(best[1]),
                        best[1] / reps as f64 * 1e6,
                        gbs(best[0]),
                        best[0] / best[1],
                    );
                });
            }
            // A decoding batch: each input's cost beside one input's (the weights are read once for the batch).
            for (rows, cols) in [(1536, 576), (49152, 576)] {
                let m = matrix(kind, rows, cols, &mut seed);
                let mut line =
                    format!("{threads} thr {kind:>4} {rows}x{cols} batches, us per input:");
                for inputs in [1usize, 2, 3, 4, 5, 8] {
                    let x: Vec<f32> = (0..cols * inputs)
                        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                        .collect();
                    let mut out = vec![0f32; rows * inputs];
                    let reps = (100_000_000 / m.bytes()).clamp(3, 400);
                    let best = pool.install(|| {
                        let mut best = f64::INFINITY;
                        for _ in 0..5 {
                            let t = Instant::now();
                            for _ in 0..reps {
                                m.matmul(&x, inputs, &mut out);
                            }
                            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
                        }
                        best
                    });
                    line += &format!("  {inputs}: {:5.1}", best / inputs as f64 * 1e6);
                }
                println!("{line}");
            }
            if kind == "f32" || kind == "bf16" {
                continue;
            }
            // A prompt of 128 inputs: the integer GEMM (where the CPU has AVX-512 VNNI) beside the float32 one.
            let (rows, cols, inputs) = (1536, 576, 128);
            let m = matrix(kind, rows, cols, &mut seed);
            let x: Vec<f32> = (0..cols * inputs)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let mut out = vec![0f32; rows * inputs];
            pool.install(|| {
                let mut best = [f64::INFINITY; 2];
                for _ in 0..5 {
                    for (g, b) in best.iter_mut().enumerate() {
                        vibecheck_engine::kernels::set_integer_gemm(g == 1);
                        let t = Instant::now();
                        for _ in 0..10 {
                            m.matmul(&x, inputs, &mut out);
                        }
                        *b = b.min(t.elapsed().as_secs_f64() / 10.0);
                    }
                }
                vibecheck_engine::kernels::set_integer_gemm(true);
                let gflops = |s: f64| 2.0 * (rows * cols * inputs) as f64 / s / 1e9;
                println!(
                    "{threads} thr {kind:>4} {rows}x{cols} x {inputs} inputs: {:6.1} GFLOP/s {} (float32 GEMM: {:6.1} GFLOP/s, x{:.2})",
                    gflops(best[1]),
                    if vibecheck_engine::kernels::integer_gemm() { "integer GEMM" } else { "(no integer GEMM on this CPU)" },
                    gflops(best[0]),
                    best[0] / best[1],
                );
            });
        }
    }
}

/// A decoding step's products as the model runs them: per layer the stacked q/k/v (960 rows), the attention output
/// (576), the stacked gate/up (3072) and the down projection (576 × 1536), for 30 layers (memory-resident: ~210 MB in
/// bf16), one input each, in order; beside one matrix of the same bytes, in GB/s of weights read.
fn layers(threads: usize, seed: &mut u64) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    for kind in ["bf16", "q4h"] {
        let shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)];
        let mats: Vec<PackedMatrix> = (0..30)
            .flat_map(|_| shapes)
            .map(|(r, c)| matrix(kind, r, c, seed))
            .collect();
        let bytes: usize = mats.iter().map(|m| m.bytes()).sum();
        let rows = shapes.iter().map(|(r, c)| r * c).sum::<usize>() * 30 / 576;
        let big = matrix(kind, rows, 576, seed);
        let x: Vec<f32> = (0..1536)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let mut out = vec![0f32; rows.max(3072)];
        pool.install(|| {
            let mut best = [f64::INFINITY; 2];
            for _ in 0..7 {
                let t = Instant::now();
                for m in &mats {
                    m.matmul(&x[..m.cols], 1, &mut out[..m.rows]);
                }
                best[0] = best[0].min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                big.matmul(&x[..576], 1, &mut out[..rows]);
                best[1] = best[1].min(t.elapsed().as_secs_f64());
            }
            println!(
                "{threads} thr {kind:>4} a step's {} products: {:5.1} GB/s, {:6.1} us per product ({:.0} MB: one {rows}x576 matrix {:5.1} GB/s, x{:.2})",
                mats.len(),
                bytes as f64 / best[0] / 1e9,
                best[0] / mats.len() as f64 * 1e6,
                bytes as f64 / 1e6,
                big.bytes() as f64 / best[1] / 1e9,
                best[1] / best[0] * bytes as f64 / big.bytes() as f64,
            );
        });
    }
}
