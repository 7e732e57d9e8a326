//! The weight formats the kernels read, each described once: its planes (the arrays it is stored in, their
//! element types and how many elements each row holds), its name, how a row dequantizes, and the scale and
//! offset of each block. Sizes, stacking, the non-finite check and the kernels' slicing all follow from the
//! table in [`formats!`]; a new format is a line there, its arms in [`PackedMatrix::row_to_f32`] and
//! [`PackedMatrix::row_granules`] below, and its kernels (`scalar`, `x86`, `neon`, dispatched in `matmul.rs`).

use super::{PackedMatrix, BLOCK};

/// One array of a format, by element type. Float planes are checked for NaN and infinities; integer planes
/// (quantized values and 6- or 8-bit sub-scales) always hold finite numbers.
pub(crate) enum Plane<'a> {
    U8(&'a [u8]),
    I8(&'a [i8]),
    F16(&'a [u16]),
    Bf16(&'a [u16]),
    F32(&'a [f32]),
}

/// A plane to grow (stacking matrices).
enum PlaneMut<'a> {
    U8(&'a mut Vec<u8>),
    I8(&'a mut Vec<i8>),
    F16(&'a mut Vec<u16>),
    Bf16(&'a mut Vec<u16>),
    F32(&'a mut Vec<f32>),
}

/// A plane taken out of its format (stacking matrices).
enum PlaneOwned {
    U8(Vec<u8>),
    I8(Vec<i8>),
    F16(Vec<u16>),
    Bf16(Vec<u16>),
    F32(Vec<f32>),
}

/// The Rust element type of a plane kind.
macro_rules! plane_type {
    (U8) => {
        u8
    };
    (I8) => {
        i8
    };
    (F16) => {
        u16
    };
    (Bf16) => {
        u16
    };
    (F32) => {
        f32
    };
}

/// The table of formats: `Variant "name" [plane: Kind / weights_per_element, ...]`, where a row of `cols`
/// weights holds `cols / weights_per_element` elements of that plane (a 4-bit plane holds two weights per byte:
/// `/ 2`; a (d, m) pair per 32 weights: `/ 16`).
macro_rules! formats {
    ($($(#[$doc:meta])* $variant:ident $name:literal [$($plane:ident: $kind:ident / $per:literal),+])*) => {
        /// Weights in one of the kernel formats (see the module doc of `kernels` for what each holds).
        #[derive(Debug, Clone)]
        pub enum Format {
            $($(#[$doc])* $variant { $($plane: Vec<plane_type!($kind)>),+ },)*
        }

        impl Format {
            /// The short name (`bench` and the kernel benchmark print it).
            pub fn name(&self) -> &'static str {
                match self {
                    $(Format::$variant { .. } => $name,)*
                }
            }

            /// Weights per element of each plane, in order.
            pub(crate) fn weights_per_element(&self) -> &'static [usize] {
                match self {
                    $(Format::$variant { .. } => &[$($per),+],)*
                }
            }

            /// Every plane, in order.
            pub(crate) fn planes(&self) -> Vec<Plane<'_>> {
                match self {
                    $(Format::$variant { $($plane),+ } => vec![$(Plane::$kind($plane)),+],)*
                }
            }

            fn planes_mut(&mut self) -> Vec<PlaneMut<'_>> {
                match self {
                    $(Format::$variant { $($plane),+ } => vec![$(PlaneMut::$kind($plane)),+],)*
                }
            }

            fn into_planes(self) -> Vec<PlaneOwned> {
                match self {
                    $(Format::$variant { $($plane),+ } => vec![$(PlaneOwned::$kind($plane)),+],)*
                }
            }
        }
    };
}

formats! {
    F32 "f32" [w: F32 / 1]
    Bf16 "bf16" [w: Bf16 / 1]
    F16 "f16" [w: F16 / 1]
    /// `qs`: 16 bytes per block of 32 (low nibbles hold weights 0–15, high nibbles 16–31); `dm`: (d, m) pairs.
    Q4 "q4" [qs: U8 / 2, dm: F32 / 16]
    /// `qs`: 32 signed bytes per block of 32; `dm`: (d, m) pairs.
    Q8 "q8" [qs: I8 / 1, dm: F32 / 16]
    /// `Q4` with (d, m) as float16 bits.
    Q4H "q4h" [qs: U8 / 2, dm: F16 / 16]
    /// `Q8` with (d, m) as float16 bits.
    Q8H "q8h" [qs: I8 / 1, dm: F16 / 16]
    /// Q4_K superblocks of 256: `qs` as in `Q4`; `sm`: per superblock the eight blocks' 6-bit scales, then their
    /// eight 6-bit minimums; `d`: (d, dmin) per superblock (`w = d·sc·q − dmin·mn`).
    Q4K "q4k" [qs: U8 / 2, sm: U8 / 16, d: F32 / 128]
    /// Q5_K superblocks of 256: `qs` as in `Q8` (values 0–31); `sm` and `d` as in `Q4K`.
    Q5K "q5k" [qs: I8 / 1, sm: U8 / 16, d: F32 / 128]
    /// Superblocks of 256: `qs` as in `Q8`; `sc`: an 8-bit scale per 16 weights; `d`: a float32 scale per
    /// superblock (`w = d·sc·q`).
    Q8X16 "q8x16" [qs: I8 / 1, sc: I8 / 16, d: F32 / 256]
    /// `qs`: 32 signed bytes per block of 32; `dm`: (d, m) of weights 0–15, then (d, m) of weights 16–31.
    Q8Sub "q8/16" [qs: I8 / 1, dm: F32 / 8]
}

impl Format {
    /// Whether the format stores integers (then products round the inputs to 16-bit integers).
    pub fn is_quantized(&self) -> bool {
        // Every other format stores integers (the format-table test checks it); no planes listed, as every matrix
        // product asks.
        !matches!(
            self,
            Format::F32 { .. } | Format::Bf16 { .. } | Format::F16 { .. }
        )
    }

    /// Bytes of weight data.
    pub fn bytes(&self) -> usize {
        self.planes()
            .iter()
            .map(|p| match p {
                Plane::U8(v) => v.len(),
                Plane::I8(v) => v.len(),
                Plane::F16(v) | Plane::Bf16(v) => v.len() * 2,
                Plane::F32(v) => v.len() * 4,
            })
            .sum()
    }

    /// Whether any float (a dense weight, or a quantized format's scale) is NaN or infinite.
    pub fn has_non_finite(&self) -> bool {
        // Exponent bits all ones: infinity or NaN. Folded without short-circuiting, so the loops vectorize.
        fn halves(v: &[u16], exponent: u16) -> bool {
            v.iter()
                .fold(false, |bad, w| bad | (w & exponent == exponent))
        }
        self.planes().iter().any(|p| match p {
            Plane::F32(v) => v.iter().fold(false, |bad, x| {
                bad | (x.to_bits() & 0x7f80_0000 == 0x7f80_0000)
            }),
            Plane::F16(v) => halves(v, 0x7c00),
            Plane::Bf16(v) => halves(v, 0x7f80),
            Plane::U8(_) | Plane::I8(_) => false,
        })
    }

    #[cfg(test)]
    /// Every plane's length checked against a `rows × cols` matrix: the first plane whose length is wrong, with
    /// what it holds and what it should.
    pub(crate) fn check_shape(
        &self,
        rows: usize,
        cols: usize,
    ) -> Result<(), (usize, usize, usize)> {
        for (i, (p, per)) in self
            .planes()
            .iter()
            .zip(self.weights_per_element())
            .enumerate()
        {
            let len = match p {
                Plane::U8(v) => v.len(),
                Plane::I8(v) => v.len(),
                Plane::F16(v) | Plane::Bf16(v) => v.len(),
                Plane::F32(v) => v.len(),
            };
            if len != rows * cols / per {
                return Err((i, len, rows * cols / per));
            }
        }
        Ok(())
    }

    /// The formats' rows one after another, when they are all of one format (`extra_weights`: the weights of
    /// every part but the first, reserved in one allocation).
    pub(crate) fn stack(parts: Vec<Format>, extra_weights: usize) -> Option<Format> {
        // Checked before anything is copied (a mixed-quant file has many such groups).
        let kind = std::mem::discriminant(parts.first()?);
        if parts.iter().any(|p| std::mem::discriminant(p) != kind) {
            return None;
        }
        let mut it = parts.into_iter();
        let mut first = it.next()?;
        let per = first.weights_per_element();
        // One allocation for the whole stack (exact: `reserve` may double the first part's capacity).
        for (p, per) in first.planes_mut().into_iter().zip(per) {
            let n = extra_weights / per;
            match p {
                PlaneMut::U8(v) => v.reserve_exact(n),
                PlaneMut::I8(v) => v.reserve_exact(n),
                PlaneMut::F16(v) | PlaneMut::Bf16(v) => v.reserve_exact(n),
                PlaneMut::F32(v) => v.reserve_exact(n),
            }
        }
        for next in it {
            for (a, b) in first.planes_mut().into_iter().zip(next.into_planes()) {
                match (a, b) {
                    (PlaneMut::U8(a), PlaneOwned::U8(b)) => a.extend(b),
                    (PlaneMut::I8(a), PlaneOwned::I8(b)) => a.extend(b),
                    (PlaneMut::F16(a), PlaneOwned::F16(b)) => a.extend(b),
                    (PlaneMut::Bf16(a), PlaneOwned::Bf16(b)) => a.extend(b),
                    (PlaneMut::F32(a), PlaneOwned::F32(b)) => a.extend(b),
                    _ => return None,
                }
            }
        }
        Some(first)
    }
}

impl PackedMatrix {
    /// Row `r` as float32 (embedding lookups, and the GEMM's widened panels).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let c = self.cols;
        let nb = c / BLOCK;
        match &self.format {
            Format::F32 { w } => out.copy_from_slice(&w[r * c..(r + 1) * c]),
            Format::Bf16 { w } => out
                .iter_mut()
                .zip(&w[r * c..(r + 1) * c])
                .for_each(|(o, &v)| *o = f32::from_bits(u32::from(v) << 16)),
            Format::F16 { w } => out
                .iter_mut()
                .zip(&w[r * c..(r + 1) * c])
                .for_each(|(o, &v)| *o = half::f16::from_bits(v).to_f32()),
            Format::Q4 { qs, dm } => unpack_q4(qs, r, nb, out, |b| (dm[2 * b], dm[2 * b + 1])),
            Format::Q4H { qs, dm } => unpack_q4(qs, r, nb, out, |b| half_pair(dm, b)),
            Format::Q4K { qs, sm, d } => unpack_q4(qs, r, nb, out, |b| kquant_dm(sm, d, b)),
            Format::Q5K { qs, sm, d } => unpack_q8(qs, r, nb, out, |b| kquant_dm(sm, d, b)),
            Format::Q8 { qs, dm } => unpack_q8(qs, r, nb, out, |b| (dm[2 * b], dm[2 * b + 1])),
            Format::Q8H { qs, dm } => unpack_q8(qs, r, nb, out, |b| half_pair(dm, b)),
            Format::Q8X16 { qs, sc, d } => {
                for b in 0..nb {
                    for h in 0..2 {
                        let at = (r * nb + b) * BLOCK + 16 * h;
                        // ggml's order: d·sc first, then times the value.
                        let scale = d[at / 256] * sc[at / 16] as f32;
                        for (o, &q) in out[b * BLOCK + 16 * h..][..16].iter_mut().zip(&qs[at..]) {
                            *o = scale * q as f32;
                        }
                    }
                }
            }
            Format::Q8Sub { qs, dm } => {
                for b in 0..nb {
                    for h in 0..2 {
                        let at = (r * nb + b) * BLOCK + 16 * h;
                        let (d, m) = (dm[at / 8], dm[at / 8 + 1]);
                        for (o, &q) in out[b * BLOCK + 16 * h..][..16].iter_mut().zip(&qs[at..]) {
                            *o = d * q as f32 + m;
                        }
                    }
                }
            }
        }
    }

    /// Row `r`'s scale and offset `(a, o)` per granule of a quantized format, so that `w = a·q + o` for its
    /// values `q` as stored, handed to `put(j, a, o)` for granule `j` of the row: granules are the blocks of 32, or
    /// with `per16` (`Q8X16`, `Q8Sub`) their halves. Dense formats give `(1, 0)`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn row_granules(&self, r: usize, per16: bool, mut put: impl FnMut(usize, f32, f32)) {
        let n = self.cols / BLOCK * if per16 { 2 } else { 1 };
        let g0 = r * n;
        let mut each = |f: &dyn Fn(usize) -> (f32, f32)| {
            for j in 0..n {
                let (a, o) = f(g0 + j);
                put(j, a, o);
            }
        };
        match &self.format {
            Format::Q4 { dm, .. } | Format::Q8 { dm, .. } => each(&|g| (dm[2 * g], dm[2 * g + 1])),
            Format::Q4H { dm, .. } | Format::Q8H { dm, .. } => each(&|g| half_pair(dm, g)),
            Format::Q4K { sm, d, .. } | Format::Q5K { sm, d, .. } => each(&|g| kquant_dm(sm, d, g)),
            // ggml's order: d·sc, then times the value.
            Format::Q8X16 { sc, d, .. } if per16 => each(&|g| (d[g / 16] * sc[g] as f32, 0.0)),
            Format::Q8Sub { dm, .. } if per16 => each(&|g| (dm[2 * g], dm[2 * g + 1])),
            Format::Q8X16 { .. } | Format::Q8Sub { .. } => {
                unreachable!("16-weight formats have two granules per block")
            }
            Format::F32 { .. } | Format::Bf16 { .. } | Format::F16 { .. } => each(&|_| (1.0, 0.0)),
        }
    }
}

/// (d·sc, −dmin·mn) of block `b` of a K-quant with 6-bit scales and minimums per 32 weights (`Q4K`, `Q5K`),
/// formed in ggml's order.
pub(crate) fn kquant_dm(sm: &[u8], d: &[f32], b: usize) -> (f32, f32) {
    let (sb, j) = (b / 8, b % 8);
    (
        d[2 * sb] * sm[16 * sb + j] as f32,
        -(d[2 * sb + 1] * sm[16 * sb + 8 + j] as f32),
    )
}

pub(crate) fn f16_to_f32(v: u16) -> f32 {
    half::f16::from_bits(v).to_f32()
}

/// Block `b`'s (d, m) from float16 pairs (`Q4H`, `Q8H`).
pub(crate) fn half_pair(dm: &[u16], b: usize) -> (f32, f32) {
    (f16_to_f32(dm[2 * b]), f16_to_f32(dm[2 * b + 1]))
}

/// Row `r` of a 4-bit format as float32; `dm(b)` is block `b`'s (d, m), `b` counted over the whole matrix.
fn unpack_q4(qs: &[u8], r: usize, nb: usize, out: &mut [f32], dm: impl Fn(usize) -> (f32, f32)) {
    for b in 0..nb {
        let (d, m) = dm(r * nb + b);
        let q = &qs[(r * nb + b) * 16..(r * nb + b + 1) * 16];
        for j in 0..16 {
            out[b * BLOCK + j] = d * (q[j] & 0x0F) as f32 + m;
            out[b * BLOCK + j + 16] = d * (q[j] >> 4) as f32 + m;
        }
    }
}

/// Row `r` of an 8-bit format with one (d, m) per block as float32.
fn unpack_q8(qs: &[i8], r: usize, nb: usize, out: &mut [f32], dm: impl Fn(usize) -> (f32, f32)) {
    for b in 0..nb {
        let (d, m) = dm(r * nb + b);
        let q = &qs[(r * nb + b) * BLOCK..(r * nb + b + 1) * BLOCK];
        for j in 0..BLOCK {
            out[b * BLOCK + j] = d * q[j] as f32 + m;
        }
    }
}
